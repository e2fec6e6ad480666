//! Taking a partition: a claim with the next owner epoch, checked against the claims that
//! came before it, the state read in log order without zombie writes up to the claim, each
//! tenant restored, and what the restore decided written before anything is routed.

use super::*;

impl Router {
    /// Takes partition `partition`: claims it with the next owner epoch, backs off if another
    /// instance claimed that epoch first (`Ok(false)`: two members were given the partition at
    /// once), then restores each tenant's engine from the state written up to the claim
    /// (without zombie writes) and writes whatever the restore itself decided (requeues of an
    /// agent found offline, capacity given back) and the owners registry entry before
    /// anything is routed.
    pub(super) async fn claim(&self, partition: i32) -> Result<bool, RouterError> {
        let Some((claim, claim_bytes, fenced)) = self.stake_claim(partition).await? else {
            return Ok(false);
        };
        let epoch = claim.epoch;
        let partitions = self.lock().partitions;
        let (by_tenant, progress, latest) = state_of(partition, fenced.table);
        let now = Timestamp(latest);
        let mut writes = Writes::default();
        let restored =
            self.restore_tenants(partition, epoch, partitions, by_tenant, now, &mut writes)?;
        writes.epochs.insert(partition, epoch);
        let registry_key = ownership::registry_key(partition);
        self.producer
            .send_batch(&[OutRecord {
                topic: &self.bus.topics.router_owners,
                partition: None,
                key: registry_key.as_bytes(),
                payload: Some(&claim_bytes),
                headers: &[],
            }])
            .await?;
        self.lock().owners.record(claim);
        // Nothing is owned until the restore's own decisions are written too: on an error the
        // next record claims the partition again, with a newer epoch.
        let encoded = self.write(&writes).await?;
        let count = restored.len();
        self.take_ownership(partition, epoch, latest, restored, progress);
        self.observe(&writes, encoded);
        self.metrics.ownership.with_label_values(&["claimed"]).inc();
        tracing::info!(
            partition,
            epoch,
            tenants = count,
            "router partition claimed and state restored"
        );
        Ok(true)
    }

    /// Writes a claim of `partition` with the next owner epoch and reads the partition back up
    /// to it: `None` if another instance claimed that epoch first, else the claim, its JSON and
    /// the state written up to it without zombie writes.
    async fn stake_claim(
        &self,
        partition: i32,
    ) -> Result<Option<(OwnerRecord, Vec<u8>, ownership::Fenced)>, RouterError> {
        let mut log = self.read_state(partition, 0).await?;
        let epoch = ownership::fence(log.iter().cloned()).epoch() + 1;
        let (member, url) = {
            let s = self.lock();
            (s.member.clone(), s.url.clone())
        };
        let claim = OwnerRecord {
            partition,
            epoch,
            member: member.clone(),
            url,
            at: wall_clock_ms(),
        };
        let claim_bytes = omni_core::to_json("owner claim", &claim)?;
        let claim_key = claim.state_key();
        let epoch_text = epoch.to_string();
        let headers = [
            (EPOCH_HEADER, epoch_text.as_bytes()),
            (MEMBER_HEADER, member.as_bytes()),
        ];
        // The claim first, in its own write: state written under the new epoch must never
        // be in the log without the claim before it.
        self.producer
            .send_batch(&[OutRecord {
                topic: &self.bus.topics.router_state,
                partition: Some(partition),
                key: claim_key.as_bytes(),
                payload: Some(&claim_bytes),
                headers: &headers,
            }])
            .await?;
        // What was written since the read: another claim of this epoch before ours means we
        // lost; the previous owner's last writes before ours are part of what we restore.
        let from = log.last().map_or(0, |r| r.offset + 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let after = self.read_state(partition, from).await?;
            match ownership::first_claim_wins(&claim, &after) {
                Some(true) => {
                    log.extend(after);
                    break;
                }
                Some(false) => {
                    tracing::warn!(
                        partition,
                        epoch,
                        "another instance claimed this partition first: leaving it to that one"
                    );
                    self.metrics.ownership.with_label_values(&["lost"]).inc();
                    return Ok(None);
                }
                None if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None => {
                    return Err(RouterError::Bus(BusError::NotReady(format!(
                        "own claim of partition {partition} not readable back"
                    ))));
                }
            }
        }
        let fenced = ownership::fence(log);
        if fenced.owner.as_ref() != Some(&claim) {
            return Ok(None);
        }
        if fenced.ignored > 0 {
            tracing::warn!(
                partition,
                ignored = fenced.ignored,
                "ignored state written by a previous owner after it lost the partition"
            );
        }
        Ok(Some((claim, claim_bytes, fenced)))
    }

    /// Each tenant's engine restored from its state (what the restore decided added to
    /// `writes`), and an empty engine for configured tenants of the partition without state.
    fn restore_tenants(
        &self,
        partition: i32,
        epoch: u64,
        partitions: usize,
        by_tenant: BTreeMap<TenantId, Vec<StateEntry>>,
        now: Timestamp,
        writes: &mut Writes,
    ) -> Result<BTreeMap<TenantId, (Engine, RoutingConfig)>, RouterError> {
        let mut restored = BTreeMap::new();
        for (tenant, entries) in by_tenant {
            if partitions > 0 && partition_for(tenant.as_str().as_bytes(), partitions) != partition
            {
                tracing::warn!(tenant = %tenant, partition,
                    "state of a tenant found on a partition the partitioning contract (murmur2) does not give it, written by an older version: not restored here");
                continue;
            }
            let Some(config) = self.config_of(&tenant) else {
                continue;
            };
            let (mut engine, outputs) = Engine::restore(config.clone(), entries, now)?;
            writes.changes(&tenant, partition, epoch, engine.take_changes());
            let (p, e) = (partition.to_string(), epoch.to_string());
            writes.outputs(&tenant, now, &outputs, |i| {
                ["restore".to_owned(), p.clone(), e.clone(), i.to_string()]
            })?;
            restored.insert(tenant, (engine, config));
        }
        // Configured tenants of this partition without state yet get an empty engine, so the
        // owner answers their reads (and nobody else claims to).
        for (tenant, config) in self.tenants.borrow().iter() {
            if partitions > 0
                && partition_for(tenant.as_str().as_bytes(), partitions) == partition
                && !restored.contains_key(tenant)
            {
                restored.insert(
                    tenant.clone(),
                    (Engine::new(config.clone())?, config.clone()),
                );
            }
        }
        Ok(restored)
    }

    /// Owns `partition` from now on: its restored tenants, their progress, the gauges.
    fn take_ownership(
        &self,
        partition: i32,
        epoch: u64,
        latest: u64,
        restored: BTreeMap<TenantId, (Engine, RoutingConfig)>,
        progress: HashMap<(String, i32), Progress>,
    ) {
        {
            let mut s = self.lock();
            s.owned.insert(
                partition,
                Owned {
                    epoch,
                    as_of: latest,
                },
            );
            for (tenant, (engine, config)) in restored {
                s.tenants.insert(
                    tenant,
                    TenantSlot {
                        engine,
                        config,
                        partition,
                        history: HashMap::new(),
                    },
                );
            }
            s.progress.extend(progress);
            self.publish_ownership(&s);
            self.metrics
                .partitions_owned
                .with_label_values(&[self.settings.group_id.as_str()])
                .set(s.owned.len() as i64);
        }
    }

    /// The records of state partition `partition` from offset `from` on, in log order.
    async fn read_state(
        &self,
        partition: i32,
        from: i64,
    ) -> Result<Vec<omni_bus::table::LogRecord>, RouterError> {
        let bus = self.bus.clone();
        let topic = self.bus.topics.router_state.clone();
        tokio::task::spawn_blocking(move || {
            omni_bus::table::read_partition_log_from(&bus, &topic, partition, from)
        })
        .await
        .map_err(|e| RouterError::Bus(BusError::NotReady(format!("state load task: {e}"))))?
        .map_err(RouterError::Bus)
    }
}

/// A fenced state partition split into each tenant's entries and the progress per input
/// topic, with the time of the latest input applied.
type State = (
    BTreeMap<TenantId, Vec<StateEntry>>,
    HashMap<(String, i32), Progress>,
    u64,
);

/// Splits the fenced table of state partition `partition` (see [`State`]).
fn state_of(partition: i32, table: BTreeMap<String, Vec<u8>>) -> State {
    let mut by_tenant: BTreeMap<TenantId, Vec<StateEntry>> = BTreeMap::new();
    let mut progress = HashMap::new();
    let mut latest = 0u64;
    for (key, value) in table {
        if let Some(input_topic) = key.strip_prefix("~progress/") {
            if let Ok(p) = serde_json::from_slice::<Progress>(&value) {
                latest = latest.max(p.time);
                progress.insert((input_topic.to_owned(), partition), p);
            }
            continue;
        }
        let Some((tenant, _)) = key.split_once('/') else {
            continue;
        };
        let (Ok(tenant), Ok(entry)) = (
            TenantId::new(tenant),
            serde_json::from_slice::<StateEntry>(&value),
        ) else {
            tracing::warn!(key = %key, "ignoring unreadable router state record");
            continue;
        };
        by_tenant.entry(tenant).or_default().push(entry);
    }
    (by_tenant, progress, latest)
}
