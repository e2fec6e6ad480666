//! Kafka for omnirouter, over rdkafka (librdkafka).
//!
//! The guarantees the rest of the daemon builds on:
//! - [`Producer::send`] returns `Ok` only after the broker acknowledged the record with
//!   `acks=all` on an idempotent producer, so a caller may then acknowledge its provider.
//! - [`Consumer::run`] commits an offset only after the handler finished with the record
//!   (at least once); a handler asks for a retry or a skip explicitly.
//! - [`ensure_topics`] creates the configured topics at start-up (the router-state topic
//!   compacted) and tolerates ones that exist.
//! - Broker reachability, producer queue depth and consumer lag are exported as Prometheus
//!   metrics from librdkafka's statistics (see [`BusMetrics`]).
//!
//! # Layout
//! - [`config`]: the `[kafka]` settings and the librdkafka properties derived from them.
//! - [`producer`]: the acknowledged producer and readiness checks.
//! - [`consumer`]: the consumer-group loops with commit-after-processing, one record at a time
//!   or concurrently with per-key order (`lanes`: the pure bookkeeping behind the latter).
//! - [`batch`]: the router's consumer: records taken in batches, rebalances told to the owner
//!   ([`batch::Rebalanced`]), commits of what the owner applied.
//! - [`reader`]: a whole topic read from its beginning and followed (the router's owners).
//! - [`gate`]: the partitions a group member holds, and revocations that wait for running
//!   work, so a partition's old and new owner never work on it at once.
//! - [`resume`]: a new owner starts exactly at the committed offset, even where the broker
//!   answers a fetch from inside a record batch with the next batch (tansu).
//! - [`liveness`]: a live member on every partition of a group, where the broker leaves a
//!   dead member's partitions with nobody (tansu).
//! - [`partitioner`]: the partitioning contract (murmur2, as the Java client).
//! - [`ownership`]: which per-tenant state an instance keeps, following the router group's
//!   assignment, and one task per owned key.
//! - [`admin`]: topic creation.
//! - [`table`]: a compacted topic read as a table (latest value per key), for start-up state;
//!   a topic followed from its beginning with a "caught up" signal (`table::tail`), and a
//!   metadata probe for partition counts and end offsets.
//! - [`tail`]: a group-less reader of topics from their beginning or from a time, polled by
//!   the caller (the live chat feed and presence).
//! - [`trace`]: the W3C `traceparent` carried on records, and spans around the work.
//! - [`metrics`]: metric families and the librdkafka client context that feeds them.
//! - [`error`]: the crate's error type.

pub mod admin;
pub mod batch;
pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod error;
pub mod gate;
mod lanes;
pub mod liveness;
pub mod metrics;
pub mod ownership;
pub mod partitioner;
pub mod producer;
pub mod reader;
pub mod resume;
pub mod table;
pub mod tail;
pub mod trace;

pub use admin::ensure_topics;
pub use config::BusConfig;
pub use consumer::{Consumer, HandlerOutcome, Record, Unfinished};
pub use dead_letter::DeadLetters;
pub use error::BusError;
pub use gate::{PartitionGate, Permit};
pub use liveness::Liveness;
pub use metrics::BusMetrics;
pub use ownership::{Owned, Ownership};
pub use partitioner::partition_for;
pub use producer::{OutRecord, Producer};
pub use resume::{ResumeGuard, Resumed};
