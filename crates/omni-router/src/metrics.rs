//! The metrics customer care is judged by, registered into the daemon's registry.
//!
//! Labels are bounded by configuration: tenant, queue, channel kind, SLA kind, presence.
//!
//! PromQL (see docs/routing.md for more):
//! - ART: `sum(rate(omni_response_seconds_sum[1h])) / sum(rate(omni_response_seconds_count[1h]))`
//! - FCR: `1 - sum(increase(omni_conversations_reopened_total[1d])) / sum(increase(omni_conversations_resolved_total[1d]))`
//! - service level (first response within 60 s, a bucket bound):
//!   `sum(rate(omni_first_response_seconds_bucket{le="60"}[1h])) / sum(rate(omni_first_response_seconds_count[1h]))`

use omni_core::ChannelKind;
use omni_routing::{AgentView, Observation, ObservationKind, Presence, QueueView, Timestamp};
use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Default histogram buckets (seconds): common SLA targets are bounds, so "% within target" is
/// exact: 10 s, 30 s, 1 min, 2 min, 5 min, 10 min, 30 min, 1 h, 2 h, 4 h, 8 h, 24 h.
pub const DEFAULT_BUCKETS: [f64; 12] = [
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
];

/// The router's metric families.
#[derive(Clone)]
pub struct RouterMetrics {
    first_response: HistogramVec,
    response: HistogramVec,
    queue_wait: HistogramVec,
    resolution: HistogramVec,
    csat: HistogramVec,
    handling: HistogramVec,
    wrap_up: HistogramVec,
    sla_breaches: IntCounterVec,
    sla_at_risk: IntCounterVec,
    abandoned: IntCounterVec,
    agents_set_away: IntCounterVec,
    offers_declined: IntCounterVec,
    created: IntCounterVec,
    resolved: IntCounterVec,
    reopened: IntCounterVec,
    backlog: IntGaugeVec,
    oldest_wait: GaugeVec,
    agents: IntGaugeVec,
    working: IntGaugeVec,
    utilization: GaugeVec,
    /// Input records by topic and outcome (applied, replayed, skipped, ignored).
    pub inputs: IntCounterVec,
    /// Partitions whose state this instance holds.
    pub partitions_owned: IntGaugeVec,
    /// Records that arrived on another partition than the contract puts their key on, by
    /// topic; forwarded to the right partition, never applied where they landed.
    pub misrouted: IntCounterVec,
    /// Records held back (not applied, not committed) because their tenant is not in this
    /// instance's config yet.
    pub held: IntGauge,
    /// Partitions taken over (owner claims written), and partitions given up because another
    /// instance claimed them with a newer epoch.
    pub ownership: IntCounterVec,
    /// API reads by how they were answered (local, forwarded, unowned).
    pub reads: IntCounterVec,
    /// Every configured queue's targets and opening state.
    pub targets: std::sync::Arc<crate::targets::QueueTargets>,
}

impl RouterMetrics {
    /// Registers every family; `buckets` are the response-time histogram bounds in seconds.
    pub fn register(registry: &Registry, buckets: &[f64]) -> prometheus::Result<Self> {
        let labels = &["tenant", "queue", "channel"];
        let hist = |name: &str, help: &str, b: Vec<f64>| -> prometheus::Result<HistogramVec> {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(b), labels)?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let counter = |name: &str, help: &str, l: &[&str]| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), l)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let b = buckets.to_vec();
        let m = Self {
            first_response: hist("omni_first_response_seconds", "Time from a customer's first message to the first agent reply.", b.clone())?,
            response: hist("omni_response_seconds", "Time from each unanswered customer message to the agent reply that answered it (ART is its mean).", b.clone())?,
            queue_wait: hist("omni_queue_wait_seconds", "Time from arrival in a queue to assignment to an agent.", b.clone())?,
            resolution: hist("omni_resolution_seconds", "Time from a customer's first message to resolution.", b.clone())?,
            handling: hist("omni_handling_seconds", "Time from assignment to resolution (average handling time is its mean; wrap-up is counted apart).", b.clone())?,
            wrap_up: hist("omni_wrap_up_seconds", "Time agents spent in after-conversation work (wrap-up) after a resolution.", b)?,
            csat: hist("omni_csat_score", "Customer satisfaction scores (1-5).", vec![1.0, 2.0, 3.0, 4.0, 5.0])?,
            sla_breaches: counter("omni_sla_breaches_total", "Service-level targets missed.", &["tenant", "queue", "channel", "sla"])?,
            sla_at_risk: counter("omni_sla_at_risk_total", "Service-level targets that came within the queue's at-risk share of being missed.", &["tenant", "queue", "channel", "sla"])?,
            abandoned: counter("omni_conversations_abandoned_total", "Customers who stopped waiting before an agent was assigned (abandon rate = abandoned / created).", labels)?,
            agents_set_away: counter("omni_agents_set_away_total", "Agents set away for letting offers time out in a row, by the queue of the last missed offer.", labels)?,
            offers_declined: counter("omni_offers_declined_total", "Offers declined or timed out.", &["tenant", "queue", "channel", "reason"])?,
            created: counter("omni_conversations_created_total", "New contacts: conversations, and customers writing again after the reopen window (resolution rate = resolved / created).", labels)?,
            resolved: counter("omni_conversations_resolved_total", "Conversations resolved.", labels)?,
            reopened: counter("omni_conversations_reopened_total", "Resolved conversations reopened (first-contact resolution = 1 - reopened/resolved).", labels)?,
            backlog: {
                let g = IntGaugeVec::new(Opts::new("omni_backlog_conversations", "Open conversations by queue and state (waiting, offered, assigned)."), &["tenant", "queue", "state"])?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            oldest_wait: {
                let g = GaugeVec::new(Opts::new("omni_queue_oldest_wait_seconds", "How long the oldest waiting conversation of a queue has waited."), &["tenant", "queue"])?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            agents: {
                let g = IntGaugeVec::new(Opts::new("omni_agents", "Agents by presence."), &["tenant", "presence"])?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            working: {
                let g = IntGaugeVec::new(Opts::new("omni_agents_working", "Agents online or away by what they are doing: handling (holding a conversation), wrap_up (only after-conversation work) or idle. Occupancy is the share not idle."), &["tenant", "activity"])?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            utilization: {
                let g = GaugeVec::new(Opts::new("omni_agent_utilization_ratio", "Open conversations and wrap-ups over capacity of agents online or away."), &["tenant"])?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            inputs: counter("omni_router_inputs_total", "Router input records by topic and outcome.", &["topic", "outcome"])?,
            partitions_owned: {
                let g = IntGaugeVec::new(Opts::new("omni_router_partitions_owned", "Partitions whose routing state this instance holds."), &["group"])?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            misrouted: counter("omni_router_misrouted_total", "Input records found on another partition than murmur2 of their key gives, forwarded to the right one.", &["topic"])?,
            held: {
                let g = IntGauge::with_opts(Opts::new("omni_router_held_records", "Input records held back, neither applied nor committed, because their tenant is not in this instance's config yet."))?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            ownership: counter("omni_router_ownership_changes_total", "Partitions claimed (claimed) and partitions given up to a newer owner (fenced).", &["change"])?,
            reads: counter("omni_router_api_reads_total", "Agent API reads by how they were answered: local, forwarded to the owner, or unowned (503).", &["answer"])?,
            targets: std::sync::Arc::new(crate::targets::QueueTargets::register(registry)?),
        };
        Ok(m)
    }

    /// Records one engine observation for `tenant`.
    pub fn observe(&self, tenant: &str, o: &Observation) {
        let l = [tenant, o.queue.0.as_str(), channel(o.channel)];
        match o.kind {
            ObservationKind::FirstResponse => {
                self.first_response.with_label_values(&l).observe(o.value)
            }
            ObservationKind::Response => self.response.with_label_values(&l).observe(o.value),
            ObservationKind::QueueWait => self.queue_wait.with_label_values(&l).observe(o.value),
            ObservationKind::Resolution => self.resolution.with_label_values(&l).observe(o.value),
            ObservationKind::Csat => self.csat.with_label_values(&l).observe(o.value),
            ObservationKind::SlaBreach(kind) => self
                .sla_breaches
                .with_label_values(&[l[0], l[1], l[2], kind.as_str()])
                .inc(),
            ObservationKind::OfferDeclined => self
                .offers_declined
                .with_label_values(&[l[0], l[1], l[2], "declined"])
                .inc(),
            ObservationKind::OfferTimedOut => self
                .offers_declined
                .with_label_values(&[l[0], l[1], l[2], "timed_out"])
                .inc(),
            ObservationKind::Created => self.created.with_label_values(&l).inc(),
            ObservationKind::Resolved => self.resolved.with_label_values(&l).inc(),
            ObservationKind::Reopened => self.reopened.with_label_values(&l).inc(),
            ObservationKind::Handling => self.handling.with_label_values(&l).observe(o.value),
            ObservationKind::WrapUp => self.wrap_up.with_label_values(&l).observe(o.value),
            ObservationKind::Abandoned => self.abandoned.with_label_values(&l).inc(),
            ObservationKind::AgentAway => self.agents_set_away.with_label_values(&l).inc(),
            ObservationKind::SlaAtRisk(kind) => self
                .sla_at_risk
                .with_label_values(&[l[0], l[1], l[2], kind.as_str()])
                .inc(),
        }
    }

    /// Removes a tenant's gauges when this instance stops holding it (another instance reports
    /// them now; stale values here would be summed twice).
    pub fn forget_tenant(&self, tenant: &str, queues: &[QueueView]) {
        for q in queues {
            let id = q.id.0.as_str();
            for state in ["waiting", "offered", "assigned"] {
                let _ = self.backlog.remove_label_values(&[tenant, id, state]);
            }
            let _ = self.oldest_wait.remove_label_values(&[tenant, id]);
        }
        for p in [Presence::Online, Presence::Away, Presence::Offline] {
            let _ = self.agents.remove_label_values(&[tenant, p.as_str()]);
        }
        for activity in ACTIVITIES {
            let _ = self.working.remove_label_values(&[tenant, activity]);
        }
        let _ = self.utilization.remove_label_values(&[tenant]);
    }

    /// Sets the backlog, agent and utilization gauges of a tenant from the engine's views.
    pub fn set_gauges(
        &self,
        tenant: &str,
        now: Timestamp,
        queues: &[QueueView],
        agents: &[AgentView],
    ) {
        for q in queues {
            let id = q.id.0.as_str();
            self.backlog
                .with_label_values(&[tenant, id, "waiting"])
                .set(q.waiting as i64);
            self.backlog
                .with_label_values(&[tenant, id, "offered"])
                .set(q.offered as i64);
            self.backlog
                .with_label_values(&[tenant, id, "assigned"])
                .set(q.assigned as i64);
            let oldest = q.oldest_arrival.map_or(0.0, |a| now.secs_since(a));
            self.oldest_wait
                .with_label_values(&[tenant, id])
                .set(oldest);
        }
        for p in [Presence::Online, Presence::Away, Presence::Offline] {
            let n = agents.iter().filter(|a| a.presence == p).count();
            self.agents
                .with_label_values(&[tenant, p.as_str()])
                .set(n as i64);
        }
        let mut working = [0i64; 3];
        for a in agents.iter().filter(|a| a.presence != Presence::Offline) {
            let activity = match (a.open, a.wrap_up) {
                (0, 0) => 2,
                (0, _) => 1,
                _ => 0,
            };
            working[activity] += 1;
        }
        for (activity, n) in ACTIVITIES.iter().zip(working) {
            self.working.with_label_values(&[tenant, activity]).set(n);
        }
        let (open, cap) = agents
            .iter()
            .filter(|a| a.presence != Presence::Offline)
            .fold((0u64, 0u64), |(o, c), a| {
                (o + (a.open + a.wrap_up) as u64, c + u64::from(a.capacity))
            });
        let ratio = if cap == 0 {
            0.0
        } else {
            open as f64 / cap as f64
        };
        self.utilization.with_label_values(&[tenant]).set(ratio);
    }
}

/// The `activity` values of `omni_agents_working`, in the order `set_gauges` counts them.
const ACTIVITIES: [&str; 3] = ["handling", "wrap_up", "idle"];

fn channel(kind: ChannelKind) -> &'static str {
    kind.as_str()
}
