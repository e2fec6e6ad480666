//! Ingress metric families, registered once into the registry the daemon passes in.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// Counters and latency of every inbound endpoint. Labels are bounded: channel kind, configured
/// tenant, rejection reason. An unknown tenant is never a label value.
#[derive(Clone)]
pub struct IngressMetrics {
    /// Customer messages and signals accepted and acknowledged by Kafka.
    pub received: IntCounterVec,
    /// Requests refused, by reason.
    pub rejected: IntCounterVec,
    /// Repeats answered from the dedupe cache without publishing.
    pub duplicates: IntCounterVec,
    /// Items accepted but knowingly not published (unknown event kinds, our own echoes).
    pub ignored: IntCounterVec,
    /// Signed items refused for the tenant whose URL they came to (an account it does not
    /// have), by reason: the request is still answered 200.
    pub refused_items: IntCounterVec,
    /// Time from request start to answer, for accepted requests.
    pub duration: HistogramVec,
    /// Inbound requests being handled now (admitted, not yet answered): what the
    /// `ingress.max_in_flight` limit bounds.
    pub in_flight: IntGauge,
}

impl IngressMetrics {
    /// Creates the families and registers them into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let received = IntCounterVec::new(
            Opts::new(
                "omni_messages_received_total",
                "Inbound events (customer messages and channel signals) acknowledged by Kafka.",
            ),
            &["channel", "tenant"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "omni_ingress_rejected_total",
                "Inbound requests refused, by reason; nothing was published for them.",
            ),
            &["channel", "reason"],
        )?;
        let duplicates = IntCounterVec::new(
            Opts::new(
                "omni_ingress_duplicates_total",
                "Inbound repeats answered from the dedupe cache without publishing again.",
            ),
            &["channel"],
        )?;
        let ignored = IntCounterVec::new(
            Opts::new(
                "omni_ingress_ignored_total",
                "Inbound items accepted but not published (unknown event kinds, own echoes), by kind.",
            ),
            &["channel", "kind"],
        )?;
        let refused_items = IntCounterVec::new(
            Opts::new(
                "omni_ingress_refused_items_total",
                "Correctly signed inbound items refused for the tenant (an account it does not have), by reason; not published.",
            ),
            &["channel", "tenant", "reason"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "omni_ingress_request_duration_seconds",
                "Time to answer an accepted inbound request, including Kafka's acknowledgement.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["channel"],
        )?;
        registry.register(Box::new(received.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(duplicates.clone()))?;
        registry.register(Box::new(ignored.clone()))?;
        registry.register(Box::new(refused_items.clone()))?;
        let in_flight = IntGauge::with_opts(Opts::new(
            "omni_ingress_in_flight",
            "Inbound webhook and API requests being handled now; at ingress.max_in_flight new ones are answered 503 (reason overloaded).",
        ))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        Ok(Self {
            received,
            rejected,
            duplicates,
            ignored,
            refused_items,
            duration,
            in_flight,
        })
    }
}
