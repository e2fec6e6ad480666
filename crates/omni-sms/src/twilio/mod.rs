//! Twilio Programmable Messaging: signed inbound SMS/MMS and status callbacks in, the
//! Messages API out.
//!
//! - `signature`: `X-Twilio-Signature` over the public URL and the form (or `bodySHA256` for
//!   JSON bodies), with the default-port variants Twilio is inconsistent about.
//! - `parse`: the inbound message form and the status callback form, typed.
//! - `webhook`: the message and status endpoints [`crate::webhook::SmsWebhook`] serves.
//! - `send`: replies through the Messages API, and Twilio's error codes sorted into reasons.

pub mod config;
mod parse;
mod send;
mod signature;
pub(crate) mod webhook;

#[cfg(test)]
mod tests;

pub use parse::{parse_inbound, parse_status, status_from_params, TwilioInbound, TwilioMedia};
pub use send::classify_twilio;
pub(crate) use send::send_message;
pub use signature::{compute_signature, verify_request, verify_signature, SIGNATURE_HEADER};
pub use webhook::{public_url, twiml, EMPTY_TWIML};

use omni_core::Secret;
use thiserror::Error;

/// Why a Twilio request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TwilioError {
    /// No `X-Twilio-Signature` header.
    #[error("missing x-twilio-signature header")]
    MissingSignature,
    /// The signature does not match the URL and body under the auth token.
    #[error("twilio signature does not match")]
    SignatureMismatch,
    /// The URL's `bodySHA256` is not the SHA-256 of the body received.
    #[error("bodySHA256 does not match the body")]
    BodyHashMismatch,
    /// A field Twilio always sends is absent or empty.
    #[error("missing field `{field}`")]
    MissingField {
        /// The form key.
        field: String,
    },
    /// A field is present but not what Twilio documents.
    #[error("invalid field `{field}`: {value:?}")]
    InvalidField {
        /// The form key.
        field: String,
        /// The value received (shortened).
        value: String,
    },
    /// A `MessageStatus` this crate does not know (Twilio adds statuses over time).
    #[error("unknown message status {status:?}")]
    UnknownStatus {
        /// The status received (shortened).
        status: String,
    },
}

/// A Twilio account.
#[derive(Debug, Clone)]
pub struct TwilioAccount {
    /// `AC…`: basic-auth user, and checked against every inbound `AccountSid`.
    pub account_sid: String,
    /// The auth token: basic-auth password and the key of `X-Twilio-Signature`.
    pub auth_token: Secret,
}
