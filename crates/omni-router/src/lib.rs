//! The router's Kafka runner, state recovery, metrics and agent API. Built in the routing issue.
//!
//! This crate is a placeholder so the workspace has its final shape; it has no code yet.
