//! Time for the engines (ticks for due timers), gauges, and liveness: claims renewed on the
//! owners registry, and a rejoin when a partition has had no live owner for too long.

use super::*;

/// How often the API history of conversations the engines forgot is dropped.
const HISTORY_PRUNE: Duration = Duration::from_secs(60);

/// How often an owner renews its claims on the owners registry.
const CLAIM_RENEWAL: Duration = Duration::from_secs(1);

impl Router {
    /// Publishes a tick for every owned tenant whose next timer is due, refreshes gauges, and
    /// now and then drops the API history of conversations the engines forgot.
    pub(super) async fn ticker(self: Arc<Self>) {
        let mut interval = tokio::time::interval(self.settings.tick_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pruned = Instant::now();
        let started = Instant::now();
        let mut renewed = Instant::now();
        let mut rejoined: Option<Instant> = None;
        let patience = self.session_timeout() + Duration::from_secs(5);
        loop {
            interval.tick().await;
            if renewed.elapsed() >= CLAIM_RENEWAL {
                renewed = Instant::now();
                self.renew_claims().await;
            }
            let calm = rejoined.is_none_or(|t| t.elapsed() > patience);
            if calm && started.elapsed() > patience && self.orphans_seen(patience) {
                rejoined = Some(Instant::now());
                self.metrics
                    .ownership
                    .with_label_values(&["rejoined"])
                    .inc();
                self.rejoin.notify_one();
            }
            let now = Timestamp(wall_clock_ms());
            // Every configured queue, owned here or not: the targets come from the config.
            let configs = self.tenants.borrow().clone();
            self.metrics.targets.set(&configs, now);
            let prune = pruned.elapsed() >= HISTORY_PRUNE;
            if prune {
                pruned = Instant::now();
            }
            let due: Vec<TenantId> = {
                let mut s = self.lock();
                let mut due = Vec::new();
                for slot in s.tenants.values_mut() {
                    if prune {
                        let engine = &slot.engine;
                        slot.history
                            .retain(|c, _| engine.conversation(*c).is_some());
                    }
                }
                for (tenant, slot) in &s.tenants {
                    self.metrics.set_gauges(
                        tenant.as_str(),
                        now,
                        &slot.engine.queue_views(),
                        &slot.engine.agent_views(),
                    );
                    if slot.engine.next_timer().is_some_and(|t| t <= now)
                        && !s.pending_ticks.contains(tenant)
                    {
                        due.push(tenant.clone());
                    }
                }
                s.pending_ticks.extend(due.iter().cloned());
                due
            };
            for tenant in due {
                let env = Envelope::with_source(
                    EventId::new_random(),
                    EventType::RouterTick,
                    tenant.clone(),
                    format!("/omnirouter/{tenant}/router"),
                    None,
                    time_of(now.0),
                    serde_json::json!({}),
                );
                let payload = match omni_core::to_json("router tick", &env) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(tenant = %tenant, error = %e, "cannot encode router tick");
                        self.lock().pending_ticks.remove(&tenant);
                        continue;
                    }
                };
                if let Err(e) = self
                    .producer
                    .send(
                        &self.bus.topics.commands,
                        tenant.as_str().as_bytes(),
                        &payload,
                    )
                    .await
                {
                    tracing::warn!(tenant = %tenant, error = %e, "cannot publish router tick");
                    self.lock().pending_ticks.remove(&tenant);
                }
            }
        }
    }

    /// Re-publishes this instance's claims with the current time, so other instances know
    /// their owner is alive.
    async fn renew_claims(&self) {
        let claims: Vec<OwnerRecord> = {
            let s = self.lock();
            s.owned
                .iter()
                .map(|(p, o)| OwnerRecord {
                    partition: *p,
                    epoch: o.epoch,
                    member: s.member.clone(),
                    url: s.url.clone(),
                    at: wall_clock_ms(),
                })
                .collect()
        };
        if claims.is_empty() {
            return;
        }
        let values: Vec<(String, Vec<u8>)> = match claims
            .iter()
            .map(|c| {
                Ok((
                    ownership::registry_key(c.partition),
                    omni_core::to_json("owner claim", c)?,
                ))
            })
            .collect::<Result<_, omni_core::EncodeError>>()
        {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode owner claims: not renewed");
                return;
            }
        };
        let records: Vec<OutRecord<'_>> = values
            .iter()
            .map(|(key, value)| OutRecord {
                topic: &self.bus.topics.router_owners,
                partition: None,
                key: key.as_bytes(),
                payload: Some(value),
                headers: &[],
            })
            .collect();
        match self.producer.send_batch(&records).await {
            Ok(()) => {
                let s = self.lock();
                for c in claims {
                    s.owners.record(c);
                }
            }
            Err(e) => tracing::debug!(error = %e, "renewing router claims failed"),
        }
    }

    /// Whether some partition has had no live owner for `patience` (its claim not renewed,
    /// or never made), as far as a freshly read registry tells. Apache Kafka rebalances a
    /// dead member's partitions after its session timeout; tansu 0.6 may not (it re-forms
    /// the group without a new generation, and only the member whose heartbeat noticed the
    /// expiry rejoins), which leaves them with nobody.
    fn orphans_seen(&self, patience: Duration) -> bool {
        let s = self.lock();
        if s.partitions == 0 || !s.owners.fresh(Duration::from_secs(5)) {
            return false;
        }
        let stale_before =
            wall_clock_ms().saturating_sub(u64::try_from(patience.as_millis()).unwrap_or(0));
        let orphans: Vec<i32> = s
            .owners
            .unrenewed(s.partitions, stale_before)
            .into_iter()
            .filter(|p| !s.owned.contains_key(p))
            .collect();
        if orphans.is_empty() {
            return false;
        }
        tracing::warn!(partitions = ?orphans, patience_secs = patience.as_secs(),
            "partitions without a live owner: rejoining the router group so they are assigned again");
        true
    }
}
