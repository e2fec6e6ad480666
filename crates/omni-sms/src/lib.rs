//! SMS channel: Twilio, Vonage and gateway webhooks in, provider APIs out. Built in the SMS issue.
//!
//! This crate is a placeholder so the workspace has its final shape; it has no code yet.
