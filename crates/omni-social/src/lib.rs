//! Facebook Messenger, Instagram Direct, WhatsApp Business and Zalo Official Account, the
//! social channels Vietnamese customers write on.
//!
//! Each provider is a folder with the same shape: its settings, the webhook adapter (verify the
//! signature on the raw bytes, parse every event kind into normalized events) that
//! `omni_channel::Ingress` drives, and the [`omni_channel::ChannelSender`] that the outbound
//! dispatcher calls. Nothing here talks to Kafka or decides retries: `omni-channel` does.
//!
//! # Layout
//! - [`messenger`]: Meta's messaging webhook (handshake, `X-Hub-Signature-256`, entries and
//!   messaging items of Messenger pages and Instagram accounts, echoes, watermarks, tenant
//!   isolation) and the Graph Send API for both (window handling with the `HUMAN_AGENT` tag,
//!   per-account rate limit).
//! - [`whatsapp`]: the WhatsApp Business Account webhook (messages of every type, statuses
//!   of our replies as delivery events, tenant isolation by phone number id) and the Cloud
//!   API (text, media by link, templates, read marks and typing, per-number rate limit).
//! - `meta`: what Meta's webhooks share (handshake, `X-Hub-Signature-256`, Graph errors).
//! - [`zalo`]: Zalo OA's webhook (`X-ZEvent-Signature`, every `user_send_*`, OA echoes,
//!   follow/unfollow, buttons) and the OA v3 CS message API (text, images, files, quotes),
//!   with access tokens refreshed ahead of expiry ([`zalo::token`]).
//! - [`wire`]: provider wire-format helpers (ids as numbers or strings, millisecond times,
//!   text split at a provider's length limit).

pub mod messenger;
mod meta;
pub mod whatsapp;
pub mod wire;
pub mod zalo;
