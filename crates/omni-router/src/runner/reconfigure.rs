//! A reloaded config applied between two batches: engines rebuilt, removed tenants dropped, and
//! the records held for tenants this instance did not know retried.

use super::*;

impl Router {
    /// Applies a new set of tenant configs: rebuilds owned engines whose config changed (their
    /// restore's decisions written and published), drops removed tenants, and retries the
    /// records held for tenants that were unknown.
    pub(super) async fn reconfigure(
        &self,
        consumer: &InputConsumer,
        assignment: &Mutex<Assignment>,
        applied: &Mutex<BTreeMap<(String, i32), i64>>,
        held: &mut Held,
    ) -> Result<(), RouterError> {
        let tenants = self.tenants.borrow().clone();
        let now = Timestamp(wall_clock_ms());
        let mut writes = Writes::default();
        {
            let mut s = self.lock();
            let owned = s.owned.clone();
            let names: Vec<TenantId> = s.tenants.keys().cloned().collect();
            for tenant in names {
                let Some(new) = tenants.get(&tenant) else {
                    if let Some(slot) = s.tenants.remove(&tenant) {
                        self.metrics
                            .forget_tenant(tenant.as_str(), &slot.engine.queue_views());
                        tracing::info!(tenant = %tenant, "tenant removed from the config: no longer routed here");
                    }
                    continue;
                };
                let Some(slot) = s.tenants.get_mut(&tenant) else {
                    continue;
                };
                if slot.config == *new {
                    continue;
                }
                let p = slot.partition;
                let epoch = owned.get(&p).map_or(0, |o| o.epoch);
                let (mut engine, outputs) =
                    Engine::restore(new.clone(), slot.engine.snapshot(), now)?;
                let changes = engine.take_changes();
                self.metrics
                    .forget_tenant(tenant.as_str(), &slot.engine.queue_views());
                slot.engine = engine;
                slot.config = new.clone();
                writes.changes(&tenant, p, epoch, changes);
                let stamp = now.0.to_string();
                writes.outputs(&tenant, now, &outputs, |i| {
                    [
                        "reconfigure",
                        &p.to_string(),
                        &epoch.to_string(),
                        &stamp,
                        &i.to_string(),
                    ]
                    .map(str::to_owned)
                })?;
                tracing::info!(tenant = %tenant, "routing config changed: engine rebuilt from its state");
            }
        }
        {
            let mut s = self.lock();
            let partitions = s.partitions;
            for (tenant, config) in tenants.iter() {
                if s.tenants.contains_key(tenant) || partitions == 0 {
                    continue;
                }
                let p = partition_for(tenant.as_str().as_bytes(), partitions);
                if s.owned.contains_key(&p) {
                    s.tenants.insert(
                        tenant.clone(),
                        TenantSlot {
                            engine: Engine::new(config.clone())?,
                            config: config.clone(),
                            partition: p,
                            history: HashMap::new(),
                        },
                    );
                    tracing::info!(tenant = %tenant, partition = p, "tenant added to the config: routed here");
                }
            }
        }
        let encoded = self.write(&writes).await?;
        self.observe(&writes, encoded);
        // Held records: try them again in their order; a tenant still unknown holds again.
        let partitions: BTreeSet<i32> = held.keys().copied().collect();
        if partitions.is_empty() {
            return Ok(());
        }
        let retry: Vec<Rec> = std::mem::take(held).into_values().flatten().collect();
        if let Err(e) = consumer.resume(&partitions) {
            tracing::warn!(error = %e, "cannot resume held partitions");
        }
        let mut never = std::future::pending::<()>();
        let mut never = std::pin::Pin::new(&mut never);
        let _ = self
            .process(consumer, assignment, applied, held, retry, &mut never)
            .await;
        Ok(())
    }
}
