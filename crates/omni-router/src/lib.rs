//! The router's Kafka runner around the pure routing engine ([`omni_routing::Engine`]).
//!
//! Router instances form one consumer group over `omni.inbound.v1`, `omni.outbound.v1` and
//! `omni.commands.v1` (all keyed by tenant, all with the same partition count, so a tenant
//! lives on the same partition number everywhere). An instance owns the tenants of the
//! partitions Kafka gives it. For each input record it:
//! 1. turns the record into an engine input (time = the record's timestamp, so a replay is
//!    exact), and lets the tenant's engine decide;
//! 2. writes the engine's changed entities to the compacted `omni.router-state.v1`, on the same
//!    partition number, with a progress record holding the input offset and the step's events;
//! 3. publishes the routing events with ids derived from (input topic, partition, offset,
//!    index), so a replay repeats identical ids;
//! 4. commits the input offset.
//!
//! A new owner of a partition first reads its state partition and restores each tenant's
//! engine; an input at or below the recorded progress is not applied again — the last step's
//! events are re-published from the progress record instead. Delivery is at least once and
//! state never diverges.
//!
//! Timers (offer timeouts, overflow, SLA) need time to pass: a ticker publishes `tick`
//! commands for tenants whose next timer is due, which come back through the log like any
//! other input, so even time is replayable.
//!
//! # Layout
//! - [`wire`]: the envelopes of commands and routing events, and input decoding.
//! - [`metrics`]: the customer-care metrics (response times, backlog, SLA, FCR, CSAT).
//! - [`runner`]: the consume–decide–write–commit loop, recovery and the ticker.
//! - [`api`]: the agent/operator HTTP API.

pub mod api;
pub mod metrics;
pub mod runner;
pub mod wire;

pub use metrics::RouterMetrics;
pub use runner::{Router, RouterSettings, SharedState};
