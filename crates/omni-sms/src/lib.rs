//! SMS channel: Twilio, Vonage and gateway webhooks in, provider APIs out.
//!
//! This crate is the pure core of the SMS channel: no I/O, no async, no clock reads (the
//! current time is passed in). It verifies and parses what providers send, measures and builds
//! what we send, and reassembles multipart messages; the HTTP handlers, Kafka publishing and
//! config loading live elsewhere and call in here with what an axum handler has: the raw body
//! bytes, the headers and the full public URL.
//!
//! # Layout
//! - [`params`]: a request's parameters (query string, form body or flat JSON) as one list,
//!   read the same way by every provider.
//! - [`phone`]: E.164 phone numbers, short codes and alphanumeric sender ids.
//! - [`encoding`]: GSM-7 or UCS-2, units and segments of a text (after NFC).
//! - [`status`]: the delivery states every provider's callbacks map onto.
//! - [`twilio`]: `X-Twilio-Signature`, inbound messages and status callbacks.
//! - [`vonage`]: signed webhooks (md5hash and HMAC modes, replay window), inbound messages
//!   and delivery receipts.
//! - [`concat`](mod@concat): a bounded reassembler for multipart SMS, with expiry.
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
//!    Vonage parts ([`vonage::VonageInbound::to_part`]) to a [`concat::Reassembler`].
//!
//! Every parser returns an error rather than panicking, whatever the input; error enums are
//! per module, with messages in lowercase and an `error_type()` label for metrics.

pub mod concat;
mod crypto;
pub mod encoding;
pub mod esms;
pub mod gateway;
pub mod params;
pub mod phone;
pub mod status;
pub mod twilio;
pub mod vonage;

pub use encoding::{layout, SmsEncoding, SmsLayout};
pub use params::Params;
pub use phone::{Address, PhoneError, PhoneNumber};
pub use status::{DeliveryState, StatusReport};
