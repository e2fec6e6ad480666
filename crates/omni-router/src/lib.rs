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
//! A new owner of a partition first reads its state partition in log order, claims it with
//! the next owner epoch (a `~owner/<epoch>/<member>` record; the first claim of an epoch wins,
//! and the winner is published on the owners topic) and restores each tenant's engine from the
//! state up to its claim, publishing whatever the restore itself decided; an input at or below
//! the recorded progress is not applied again — the last step's events are re-published from
//! the progress record instead. State records carry their writer's epoch and member, and
//! a restore ignores writes of anyone but the claim in force ([`ownership`]). Delivery is at
//! least once and state never diverges.
//!
//! Ownership follows the consumer group, which uses the eager `range` assignor: a member gets
//! the same partition numbers of all three input topics, and a rebalance revokes everything
//! before it assigns again. A revoked partition is dropped from memory before the loop looks
//! at another record (rebalance callbacks run inside `recv`, on the loop's task), records of
//! it already fetched are neither applied nor committed, and what was applied is committed
//! synchronously in the revocation callback.
//!
//! The partitioning contract is murmur2 of the tenant key (the Java client's default, see
//! [`omni_bus::partitioner`]); a record found on another partition is forwarded to the right
//! one with the same bytes and never applied where it landed. A record for a tenant this
//! instance has no config for is held (its partition paused, nothing committed) until a
//! reloaded config knows the tenant.
//!
//! Timers (offer timeouts, overflow, SLA) need time to pass: a ticker publishes `tick`
//! commands for tenants whose next timer is due, which come back through the log like any
//! other input, so even time is replayable.
//!
//! # Layout
//! - [`wire`]: commands and routing events as omni-core CloudEvents, and input decoding.
//! - [`metrics`]: the customer-care metrics (response times, backlog, SLA, FCR, CSAT).
//! - [`runner`]: the consume–decide–write–commit loop over omni-bus's batch consumer; beside
//!   it the batch step, takeover (claim and restore), rebalance callbacks, config reloads, the
//!   batched writes and the ticker (timers, claim renewal).
//! - [`ownership`]: owner epochs, zombie fencing, and the owners registry for forwarded reads.
//! - [`api`]: the agent/operator HTTP API (reads answered by the owner, from any instance).

pub mod api;
pub mod metrics;
pub mod ownership;
pub mod runner;
pub mod targets;
pub mod wire;

pub use metrics::RouterMetrics;
pub use runner::{Router, RouterSettings, SharedState};
