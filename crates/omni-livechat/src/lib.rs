//! Website live chat: WebSocket server and the embeddable widget. Built in the live chat issue.
//!
//! This crate is a placeholder so the workspace has its final shape; it has no code yet.
