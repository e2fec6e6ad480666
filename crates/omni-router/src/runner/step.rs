//! One batch applied: the partitions' claims checked (a newer owner fences us out), each record
//! given to its tenant's engine (or forwarded, replayed, skipped), and what they decided
//! written at once.

use super::*;

impl Router {
    /// Whether another instance claimed `partition` with a newer epoch than ours (seen on the
    /// owners topic): then we are a zombie for it and must stop.
    pub(super) fn superseded(&self, partition: i32) -> bool {
        let s = self.lock();
        let Some(mine) = s.owned.get(&partition) else {
            return false;
        };
        s.owners
            .get(partition)
            .is_some_and(|c| c.epoch > mine.epoch && c.member != s.member)
    }

    /// Applies a batch of records and writes their state, progress and events in one batch;
    /// returns each record's outcome. On error nothing of the batch may be assumed written:
    /// the caller reloads the partitions and retries the whole batch.
    pub(super) async fn step_batch(&self, batch: &[Rec]) -> Result<Vec<Outcome>, RouterError> {
        let partitions: BTreeSet<i32> = batch.iter().map(|r| r.partition).collect();
        let mut fenced = BTreeSet::new();
        for p in partitions {
            if !self.lock().owned.contains_key(&p) && !self.claim(p).await? {
                fenced.insert(p);
                continue;
            }
            if self.superseded(p) {
                tracing::warn!(
                    partition = p,
                    "another instance claimed this partition with a newer epoch: giving it up"
                );
                self.metrics.ownership.with_label_values(&["fenced"]).inc();
                self.unload(p);
                fenced.insert(p);
            }
        }
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut writes = Writes::default();
        let partition_count = self.lock().partitions;
        for rec in batch {
            if fenced.contains(&rec.partition) {
                outcomes.push(Outcome::Fenced);
                continue;
            }
            outcomes.push(self.step_one(rec, partition_count, &mut writes)?);
        }
        let encoded = self.write(&writes).await?;
        {
            let mut s = self.lock();
            for (key, prog) in std::mem::take(&mut writes.progress) {
                if let Some(owned) = s.owned.get_mut(&key.1) {
                    owned.as_of = owned.as_of.max(prog.time);
                }
                s.progress.insert(key, prog);
            }
        }
        self.observe(&writes, encoded);
        Ok(outcomes)
    }

    fn step_one(
        &self,
        rec: &Rec,
        partition_count: usize,
        writes: &mut Writes,
    ) -> Result<Outcome, RouterError> {
        let Some(payload) = rec.payload.as_deref() else {
            return Ok(Outcome::Ignored);
        };
        // The partitioning contract: a record is applied only on its key's partition.
        let home = partition_for(&rec.key, partition_count);
        if partition_count > 0 && home != rec.partition {
            tracing::debug!(topic = %rec.topic, partition = rec.partition, home,
                "record on the wrong partition for its key: forwarding it");
            self.metrics
                .misrouted
                .with_label_values(&[rec.topic.as_str()])
                .inc();
            writes.forwards.push((rec.clone(), home));
            return Ok(Outcome::Forwarded);
        }
        let progress_key = (rec.topic.clone(), rec.partition);
        let replay = self
            .lock()
            .progress
            .get(&progress_key)
            .filter(|p| rec.offset <= p.offset)
            .map(|p| {
                p.events
                    .iter()
                    .find(|(o, _)| *o == rec.offset)
                    .map(|(_, e)| e.clone())
            });
        if let Some(stored) = replay {
            // Applied and recorded, but its events may not have been written: write them
            // again with their deterministic ids.
            for e in stored.unwrap_or_default() {
                writes.replayed.push((rec.key.clone(), e));
            }
            return Ok(Outcome::Replayed);
        }
        let (tenant, input) = match decode_input(&rec.key, payload) {
            Ok(Some(x)) => x,
            Ok(None) => return Ok(Outcome::Ignored),
            Err(e) => {
                self.refuse(rec, &e, writes)?;
                return Ok(Outcome::Skipped);
            }
        };
        let Some(config) = self.config_of(&tenant) else {
            // Held before this point unless the config changed in between: not applied.
            return Ok(Outcome::Ignored);
        };
        // A span for the decision, in the input's trace; the events it causes carry it. Ticks
        // (many a second) are not traced.
        let span = (!matches!(input, Input::Tick)).then(|| {
            let what = match &input {
                Input::Inbound(_) => "route a customer message",
                _ => "route a command",
            };
            omni_bus::trace::start(
                what,
                omni_bus::trace::Kind::Consumer,
                omni_bus::trace::header_of(&rec.headers),
                vec![
                    omni_bus::trace::KeyValue::new("omni.tenant", tenant.to_string()),
                    omni_bus::trace::KeyValue::new("messaging.destination.name", rec.topic.clone()),
                ],
            )
        });

        let now = Timestamp(
            rec.timestamp
                .and_then(|t| u64::try_from(t).ok())
                .unwrap_or_else(wall_clock_ms),
        );
        let (outputs, changes, epoch) = {
            let mut s = self.lock();
            if matches!(input, Input::Tick) {
                s.pending_ticks.remove(&tenant);
            }
            let epoch = s.owned.get(&rec.partition).map_or(0, |o| o.epoch);
            let slot = match s.tenants.entry(tenant.clone()) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => v.insert(TenantSlot {
                    engine: Engine::new(config.clone())?,
                    config,
                    partition: rec.partition,
                    history: HashMap::new(),
                }),
            };
            let outputs = slot.engine.handle(now, &input);
            (outputs, slot.engine.take_changes(), epoch)
        };
        writes.changes(&tenant, rec.partition, epoch, changes);
        let partition = rec.partition.to_string();
        let offset = rec.offset.to_string();
        writes.trace = span.as_ref().and_then(omni_bus::trace::traceparent_of);
        let step_events = writes.outputs(&tenant, now, &outputs, |i| {
            [
                rec.topic.clone(),
                partition.clone(),
                offset.clone(),
                i.to_string(),
            ]
        });
        writes.trace = None;
        let step_events = step_events?;
        let p = writes.progress.entry(progress_key).or_default();
        p.offset = rec.offset;
        p.time = now.0;
        p.events.push((rec.offset, step_events));
        writes.epochs.insert(rec.partition, epoch);
        Ok(Outcome::Applied)
    }

    /// An input the router cannot use. Nothing is dropped silently: the record goes to the
    /// dead-letter topic with the reason (the outbound dispatcher does that for replies, which
    /// it reads too), and a command of a known tenant is answered with `omni.routing.rejected`,
    /// so the CRM that sent it learns why, as it would of a command the engine refused.
    fn refuse(
        &self,
        rec: &Rec,
        error: &crate::wire::DecodeError,
        writes: &mut Writes,
    ) -> Result<(), RouterError> {
        let reason = format!("undecodable {} record: {error}", rec.topic);
        tracing::warn!(topic = %rec.topic, partition = rec.partition, offset = rec.offset,
            %reason, "router input refused");
        if rec.topic != self.bus.topics.outbound {
            writes.dead_letters.push((rec.clone(), reason.clone()));
        }
        if rec.topic != self.bus.topics.commands {
            return Ok(());
        }
        let Some(tenant) = std::str::from_utf8(&rec.key)
            .ok()
            .and_then(|k| TenantId::new(k).ok())
            .filter(|t| self.config_of(t).is_some())
        else {
            return Ok(());
        };
        let now = Timestamp(
            rec.timestamp
                .and_then(|t| u64::try_from(t).ok())
                .unwrap_or_else(wall_clock_ms),
        );
        let rejected = [Output::Event(omni_routing::RoutingEvent::Rejected {
            conversation: None,
            reason,
        })];
        let (partition, offset) = (rec.partition.to_string(), rec.offset.to_string());
        let step_events = writes.outputs(&tenant, now, &rejected, |i| {
            [
                rec.topic.clone(),
                partition.clone(),
                offset.clone(),
                i.to_string(),
            ]
        })?;
        // Recorded like an applied input's events, so a replay writes the rejection again.
        let p = writes
            .progress
            .entry((rec.topic.clone(), rec.partition))
            .or_default();
        p.offset = rec.offset;
        p.time = now.0;
        p.events.push((rec.offset, step_events));
        Ok(())
    }
}
