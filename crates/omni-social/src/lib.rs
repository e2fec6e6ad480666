//! Facebook Messenger and Zalo OA: webhooks in, send APIs out. Built in the social channels issue.
//!
//! This crate is a placeholder so the workspace has its final shape; it has no code yet.
