//! SMS channel: Twilio, Vonage, eSMS.vn and generic gateway webhooks in, provider APIs out.
//!
//! Two layers. The pure core (no I/O, no async, no clock reads: the current time is passed
//! in) verifies and parses what providers send, measures and builds what we send, and
//! reassembles multipart messages. The I/O edge on top of it is what the daemon wires: the
//! webhook adapters `omni_channel::Ingress` drives, the durable multipart handler, and the
//! [`omni_channel::ChannelSender`] the outbound dispatcher calls. Nothing here decides
//! retries or talks to Kafka directly: `omni-channel` does.
//!
//! # Layout
//! The I/O edge:
//! - [`settings`]: a tenant's providers, numbers and public URL, as validated config.
//! - [`webhook`]: the adapters of every SMS endpoint (inbound messages to `omni.inbound.v1`,
//!   status callbacks to `omni.delivery.v1`).
//! - [`vonage::concat_store`]: Vonage inbound with parts stored on a compacted topic before they are
//!   acknowledged, and reassembled before they are published.
//! - [`callback`]: how a status callback finds its outbound event (references sent out with
//!   the message and read back).
//! - [`send`]: [`send::SmsSender`], replies through Twilio, Vonage or eSMS.vn per number.
//!
//! The pure core:
//! - [`params`]: a request's parameters (query string, form body or flat JSON) as one list,
//!   read the same way by every provider.
//! - [`phone`]: E.164 phone numbers, short codes and alphanumeric sender ids.
//! - [`encoding`]: GSM-7 or UCS-2, units and segments of a text (after NFC).
//! - [`status`]: the delivery states every provider's callbacks map onto.
//! - [`twilio`]: `X-Twilio-Signature`, inbound messages and status callbacks.
//! - [`vonage`]: signed webhooks (md5hash and HMAC modes, replay window), inbound messages
//!   and delivery receipts.
//! - [`reassembly`]: a bounded reassembler for multipart SMS, with expiry.
//! - [`gateway`]: a config-driven inbound mapping (form or JSON, HMAC-SHA256 header) for any
//!   other gateway.
//! - [`esms`]: eSMS.vn send body, reply and delivery callback.
//!
//! # Using it from a webhook handler
//! 1. Verify on the raw bytes first: [`twilio::verify_request`] (URL + body + header),
//!    [`vonage::verify_signature`] (on [`Params::from_request`]), or [`gateway::Gateway::verify`].
//! 2. Parse: [`twilio::parse_inbound`], [`vonage::VonageInbound::from_params`],
//!    [`gateway::Gateway::extract`]; status callbacks give a [`StatusReport`].
//! 3. Normalize addresses with [`phone::Address::parse`] for contact ids, and feed multipart
//!    Vonage parts ([`vonage::VonageInbound::to_part`]) to a [`reassembly::Reassembler`].
//!
//! Every parser returns an error rather than panicking, whatever the input; error enums are
//! per module, with messages in lowercase, and the webhook adapters turn them into
//! [`omni_channel::IngressError`]s (the status code and the ingress metrics' reason).

pub mod callback;
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

/// The reassembler under the path the daemon's settings name it by.
pub use reassembly as concat;
/// The durable Vonage multipart handler under the path the daemon wires it by.
pub use vonage::concat_store as multipart;

pub use encoding::{layout, SmsEncoding, SmsLayout};
pub use params::Params;
pub use phone::{Address, PhoneError, PhoneNumber};
pub use status::{DeliveryState, StatusReport};
