//! Vonage (Nexmo) SMS API webhooks: signed requests, inbound messages and delivery receipts.
//!
//! Vonage calls with GET (query string), POST form or POST JSON depending on the account
//! setting; collect everything with [`crate::params::Params::from_request`] and hand the
//! [`crate::params::Params`] to the functions here.
//!
//! When a key repeats, the first value is the one used, for fields and signature alike.
//!
//! - `signature`: the `sig` check (md5hash and the HMAC modes) with its replay window.
//! - `parse`: inbound messages (parts of multipart ones included) and delivery receipts.
//! - `webhook`: the message and receipt endpoints [`crate::webhook::SmsWebhook`] serves.
//! - [`concat_store`]: the message endpoint as the daemon serves it, parts of multipart
//!   messages stored durably and reassembled by the tenant's owner.
//! - `send`: replies through the SMS API, and Vonage's statuses sorted into reasons.

pub mod concat_store;
pub mod config;
mod parse;
mod send;
mod signature;
pub(crate) mod webhook;

#[cfg(test)]
mod tests;

pub use parse::{parse_delivery_receipt, ConcatInfo, MessageType, VonageInbound};
pub use send::classify_vonage;
pub(crate) use send::send_message;
pub use signature::{sign, signing_string, verify_signature, SignatureMethod, SignatureSettings};

use omni_core::Secret;
use thiserror::Error;

/// Why a Vonage request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VonageError {
    /// Signed webhooks are configured but the request has no `sig`.
    #[error("missing sig parameter")]
    MissingSignature,
    /// `sig` does not match the parameters under the signature secret.
    #[error("vonage signature does not match")]
    SignatureMismatch,
    /// The signed `timestamp` is further from `now` than the configured maximum age.
    #[error("signed timestamp: {0}")]
    StaleTimestamp(omni_channel::replay::Stale),
    /// A required field is absent or empty.
    #[error("missing field `{field}`")]
    MissingField {
        /// The parameter name.
        field: &'static str,
    },
    /// A field is present but not what Vonage documents.
    #[error("invalid field `{field}`: {value:?}")]
    InvalidField {
        /// The parameter name.
        field: &'static str,
        /// The value received (shortened).
        value: String,
    },
    /// A delivery receipt `status` this crate does not know.
    #[error("unknown delivery status {status:?}")]
    UnknownStatus {
        /// The status received (shortened).
        status: String,
    },
}

/// A Vonage account.
#[derive(Debug, Clone)]
pub struct VonageAccount {
    /// `api_key`.
    pub api_key: String,
    /// `api_secret`.
    pub api_secret: Secret,
    /// Signed webhooks (inbound messages and delivery receipts): the dashboard's method, the
    /// signature secret and the replay window. Without it, webhooks need the tenant's
    /// `callback_token` in their URL.
    pub signature: Option<(SignatureSettings, Secret)>,
}
