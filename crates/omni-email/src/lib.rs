//! E-mail channel: IMAP IDLE in (async-imap), SMTP replies out (lettre). Built in the e-mail issue.
//!
//! This crate is a placeholder so the workspace has its final shape; it has no code yet.
