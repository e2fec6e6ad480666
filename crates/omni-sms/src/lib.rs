//! SMS channel: Twilio, Vonage, eSMS.vn and generic gateway webhooks in, provider APIs out.
//!
//! One folder per provider, the way `omni-social` has one per channel: each owns its account
//! settings, its signature check and parsers (pure: no I/O, no clock reads, the current time
//! is passed in), its webhook endpoints (what `omni_channel::Ingress` asks of an adapter:
//! which tenants it serves, how a request is authenticated, what it becomes) and its sender.
//! What the providers share sits beside the folders. Nothing here decides retries or talks to
//! Kafka directly: `omni-channel` does.
//!
//! # Layout
//! The providers:
//! - [`twilio`]: `X-Twilio-Signature`, inbound SMS/MMS, status callbacks, the Messages API.
//! - [`vonage`]: signed webhooks (md5hash and HMAC modes, replay window), inbound messages,
//!   delivery receipts, the SMS API, and [`vonage::concat_store`]: the message endpoint with
//!   multipart parts stored on a compacted topic before they are acknowledged.
//! - [`esms`]: eSMS.vn's send body and reply, its delivery callback, its send API.
//! - [`gateway`]: a config-driven inbound mapping (form or JSON, HMAC-SHA256 header) for any
//!   other gateway.
//!
//! What they share, at the edge:
//! - [`component`]: the channel's entry point (routes, multipart upkeep, sender) and what a
//!   reload gives new tenants.
//! - [`webhook`]: [`webhook::SmsWebhook`], every endpoint over the same tenants, each handed
//!   to its provider; the `?token=` check of unsigned callbacks.
//! - [`send`]: [`send::SmsSender`], a reply routed to its number's provider.
//! - [`settings`]: a tenant's providers, numbers and public URL, as validated config.
//! - [`callback`]: how a status callback finds its outbound event (references sent out with
//!   the message and read back), and the delivery event it becomes.
//! - `inbound`: the `omni.message.received` of an inbound SMS, addresses normalized.
//!
//! And in the pure core:
//! - [`params`]: a request's parameters (query string, form body or flat JSON) as one list,
//!   read the same way by every provider.
//! - [`phone`]: E.164 phone numbers, short codes and alphanumeric sender ids.
//! - [`encoding`]: GSM-7 or UCS-2, units and segments of a text (after NFC).
//! - [`status`]: the delivery states every provider's callbacks map onto.
//! - [`reassembly`]: a bounded reassembler for multipart SMS, with expiry.
//! - `crypto`: the digests and MACs the providers sign with.
//!
//! Every parser returns an error rather than panicking, whatever the input; error enums are
//! per provider, with messages in lowercase, and each provider's webhook turns them into
//! [`omni_channel::IngressError`]s (the status code and the ingress metrics' reason).

pub mod callback;
pub mod component;
mod crypto;
pub mod encoding;
pub mod esms;
pub mod gateway;
mod inbound;
pub mod params;
pub mod phone;
pub mod reassembly;
pub mod send;
pub mod settings;
pub mod status;
pub mod twilio;
pub mod vonage;
pub mod webhook;

#[cfg(test)]
mod testing;

pub use encoding::{layout, SmsEncoding, SmsLayout};
pub use params::Params;
pub use phone::{Address, PhoneError, PhoneNumber};
pub use status::{DeliveryState, StatusReport};
