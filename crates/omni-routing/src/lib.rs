//! Routing core: a pure, deterministic state machine (no I/O, no clock). Built in the routing issue.
//!
//! This crate is a placeholder so the workspace has its final shape; it has no code yet.
