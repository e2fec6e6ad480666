//! Facebook Messenger and Zalo Official Account, the two social channels Vietnamese customers
//! write on.
//!
//! Each provider is a folder with the same shape: its settings, the webhook adapter (verify the
//! signature on the raw bytes, parse every event kind into normalized events) that
//! `omni_channel::Ingress` drives, and the [`omni_channel::ChannelSender`] that the outbound
//! dispatcher calls. Nothing here talks to Kafka or decides retries: `omni-channel` does.
//!
//! # Layout
//! - [`messenger`]: Meta's webhook (handshake, `X-Hub-Signature-256`, entries and messaging
//!   items, echoes, watermarks) and the Graph Send API (window handling with the
//!   `HUMAN_AGENT` tag, per-page rate limit).
//! - [`zalo`]: Zalo OA's webhook (`X-ZEvent-Signature`, every `user_send_*`, OA echoes,
//!   follow/unfollow, buttons) and the OA v3 CS message API (text, images, files, quotes),
//!   with access tokens refreshed ahead of expiry ([`zalo::token`]).
//! - [`wire`]: provider wire-format helpers (ids as numbers or strings, millisecond times,
//!   text split at a provider's length limit).

pub mod messenger;
pub mod wire;
pub mod zalo;
