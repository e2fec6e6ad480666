//! The dispatch metric families, registered once into the daemon's registry.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Dispatch metric families.
#[derive(Clone)]
pub struct DispatchMetrics {
    /// Replies by final status (`sent`, `failed`), per channel.
    pub deliveries: IntCounterVec,
    /// Failed replies by reason, per channel.
    pub failures: IntCounterVec,
    /// Retries by the reason of the failed attempt, per channel.
    pub retries: IntCounterVec,
    /// Time from taking a reply to its final status, per channel.
    pub duration: HistogramVec,
    /// Outbound records not sent where they landed: forwarded to their tenant's partition
    /// (`reason`: `key` keyed otherwise, `partition` on another partition) or left to the
    /// router, which forwards them (`left_to_router`).
    pub misrouted: IntCounterVec,
    /// Replies taken again (redelivered, or a duplicate record) and not sent again because
    /// their progress says they were finished or a part is of unknown fate (`state`).
    pub resumed: IntCounterVec,
}

impl DispatchMetrics {
    /// Creates the families and registers them into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let deliveries = IntCounterVec::new(
            Opts::new(
                "omni_deliveries_total",
                "Outbound replies by final status (sent or failed).",
            ),
            &["channel", "status"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "omni_delivery_failures_total",
                "Outbound replies that could not be delivered, by reason.",
            ),
            &["channel", "reason"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "omni_delivery_retries_total",
                "Provider calls retried after a retryable failure, by reason.",
            ),
            &["channel", "reason"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "omni_delivery_duration_seconds",
                "Time from taking an outbound reply to its final status, retries included.",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ]),
            &["channel"],
        )?;
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        let misrouted = IntCounterVec::new(
            Opts::new(
                "omni_outbound_misrouted_total",
                "Outbound records not on their tenant's partition: forwarded there, never sent where they landed.",
            ),
            &["reason"],
        )?;
        let resumed = IntCounterVec::new(
            Opts::new(
                "omni_outbound_resumed_total",
                "Outbound replies taken again with stored progress (finished: skipped; partial: resumed after the parts sent; at_provider: a part of unknown fate).",
            ),
            &["state"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(misrouted.clone()))?;
        registry.register(Box::new(resumed.clone()))?;
        Ok(Self {
            deliveries,
            failures,
            retries,
            duration,
            misrouted,
            resumed,
        })
    }
}
