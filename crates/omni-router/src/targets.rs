//! Each queue's own service-level targets and opening state as metrics, so alerts, recording
//! rules and the dashboard judge every queue by its own SLA (`sla.first_response_secs` …) and
//! hours instead of one bound written into the rules.
//!
//! - `omni_sla_target_seconds{tenant, queue, sla, bound}`: a configured target in seconds;
//!   `bound` is the target written the way the response-time histograms write their `le`
//!   (`60`, `120`), so a rule can pick the bucket of each queue's own target.
//! - `omni_queue_open{tenant, queue}`: 1 while the queue's opening hours say open (always, for
//!   a queue without hours), 0 while it is closed.
//!
//! Every instance exports every configured tenant's targets (they come from the config, not
//! from the routing state), so rules take `max by (tenant, queue, …)`.

use omni_core::TenantId;
use omni_routing::{RoutingConfig, SlaKind, Timestamp};
use prometheus::{GaugeVec, IntGaugeVec, Opts, Registry};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

/// The target and opening-state gauges, and the label sets they show now.
pub struct QueueTargets {
    target: GaugeVec,
    open: IntGaugeVec,
    /// What is exported now: a series of a queue or target no longer configured is removed
    /// (not reset and refilled: a scrape in between would see the targets vanish).
    shown: Mutex<Shown>,
}

#[derive(Default)]
struct Shown {
    targets: BTreeSet<[String; 4]>,
    queues: BTreeSet<[String; 2]>,
}

impl QueueTargets {
    /// Registers both families into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let target = GaugeVec::new(
            Opts::new(
                "omni_sla_target_seconds",
                "A queue's configured service-level target; bound is the target as the response-time histograms write their le.",
            ),
            &["tenant", "queue", "sla", "bound"],
        )?;
        let open = IntGaugeVec::new(
            Opts::new(
                "omni_queue_open",
                "1 while a queue's opening hours say open (always without hours), 0 while it is closed.",
            ),
            &["tenant", "queue"],
        )?;
        registry.register(Box::new(target.clone()))?;
        registry.register(Box::new(open.clone()))?;
        Ok(Self {
            target,
            open,
            shown: Mutex::new(Shown::default()),
        })
    }

    /// Shows the targets of every queue of `tenants` and whether each is open at `now`.
    pub fn set(&self, tenants: &BTreeMap<TenantId, RoutingConfig>, now: Timestamp) {
        let mut next = Shown::default();
        for (tenant, config) in tenants {
            for (queue, q) in &config.queues {
                let labels = [tenant.as_str().to_owned(), queue.0.clone()];
                let open = q.hours.as_ref().is_none_or(|h| h.is_open(now));
                self.open
                    .with_label_values(&[&labels[0], &labels[1]])
                    .set(i64::from(open));
                let sla = [
                    (SlaKind::FirstResponse, q.sla.first_response_secs),
                    (SlaKind::NextResponse, q.sla.next_response_secs),
                    (SlaKind::Resolution, q.sla.resolution_secs),
                ];
                for (kind, secs) in sla {
                    let Some(secs) = secs else { continue };
                    let secs = secs as f64;
                    let key = [
                        labels[0].clone(),
                        labels[1].clone(),
                        kind.as_str().to_owned(),
                        secs.to_string(),
                    ];
                    self.target
                        .with_label_values(&[&key[0], &key[1], &key[2], &key[3]])
                        .set(secs);
                    next.targets.insert(key);
                }
                next.queues.insert(labels);
            }
        }
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        for gone in shown.targets.difference(&next.targets) {
            let _ = self
                .target
                .remove_label_values(&[&gone[0], &gone[1], &gone[2], &gone[3]]);
        }
        for gone in shown.queues.difference(&next.queues) {
            let _ = self.open.remove_label_values(&[&gone[0], &gone[1]]);
        }
        *shown = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_queues: &str) -> RoutingConfig {
        let json = serde_json::json!({
            "default_queue": "general",
            "queues": serde_json::from_str::<serde_json::Value>(toml_queues).unwrap(),
        });
        serde_json::from_value(json).unwrap()
    }

    fn text(registry: &Registry) -> String {
        let mut buf = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut buf,
        )
        .unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn each_queue_shows_its_own_targets_and_whether_it_is_open() {
        let registry = Registry::new();
        let targets = QueueTargets::register(&registry).unwrap();
        let demo = config(
            r#"{"general": {"sla": {"first_response_secs": 60, "resolution_secs": 86400}},
                "english": {"sla": {"first_response_secs": 120},
                            "hours": {"timezone": "Asia/Ho_Chi_Minh",
                                      "open": [{"days": ["mon"], "from": "08:00", "to": "17:30"}]}}}"#,
        );
        let tenants = BTreeMap::from([(TenantId::new("demo").unwrap(), demo)]);
        // Monday 2027-02-15 10:00 in Ho Chi Minh City (03:00 UTC): English is open.
        let monday_ten = Timestamp(1_802_660_400_000);
        targets.set(&tenants, monday_ten);
        let out = text(&registry);
        for line in [
            r#"omni_sla_target_seconds{bound="60",queue="general",sla="first_response",tenant="demo"} 60"#,
            r#"omni_sla_target_seconds{bound="86400",queue="general",sla="resolution",tenant="demo"} 86400"#,
            r#"omni_sla_target_seconds{bound="120",queue="english",sla="first_response",tenant="demo"} 120"#,
            r#"omni_queue_open{queue="english",tenant="demo"} 1"#,
            r#"omni_queue_open{queue="general",tenant="demo"} 1"#,
        ] {
            assert!(out.contains(line), "{line} missing from\n{out}");
        }
        // Sunday: English is closed; a reload drops general's resolution target.
        let sunday = Timestamp(monday_ten.0 - 24 * 3_600_000);
        let mut tenants = tenants;
        let demo = tenants.values_mut().next().unwrap();
        demo.queues
            .values_mut()
            .for_each(|q| q.sla.resolution_secs = None);
        targets.set(&tenants, sunday);
        let out = text(&registry);
        assert!(
            out.contains(r#"omni_queue_open{queue="english",tenant="demo"} 0"#),
            "{out}"
        );
        assert!(!out.contains(r#"sla="resolution""#), "{out}");
        assert!(out.contains(r#"sla="first_response""#), "{out}");
        // The tenant removed: nothing of it is left.
        targets.set(&BTreeMap::new(), sunday);
        let out = text(&registry);
        assert!(!out.contains("demo"), "{out}");
    }
}
