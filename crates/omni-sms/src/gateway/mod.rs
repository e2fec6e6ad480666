//! A generic inbound SMS mapping, so an operator can wire any gateway (the Vietnamese ones in
//! particular, whose MO webhooks are not documented reliably) from config, without code.
//!
//! Lifecycle: deserialize a [`GatewayMapping`] from config (unknown keys are refused), build a
//! [`Gateway`] with [`GatewayMapping::build`] (which runs [`GatewayMapping::validate`], no I/O),
//! then per request call [`Gateway::verify`] on the raw body and [`Gateway::extract`].
//!
//! Field addresses are form keys for `format = "form"` and JSON pointers (RFC 6901, `/data/from`)
//! for `format = "json"`. A JSON value may be a string or a number (gateways often send phone
//! numbers and ids as numbers); `null` counts as absent.
//!
//! The signature, when configured, is HMAC-SHA256 of the exact body bytes under the account's
//! secret, in a header, hex (any case) or standard base64, optionally after a prefix such as
//! `sha256=`; it is compared in constant time.
//!
//! Example (TOML):
//! ```toml
//! format = "json"
//! from = "/data/from"
//! to = "/data/to"
//! text = "/data/text"
//! message_id = "/data/id"
//! timestamp = { field = "/data/sent_at", format = { pattern = "%Y-%m-%d %H:%M:%S" }, utc_offset_minutes = 420 }
//! signature = { header = "X-Signature", encoding = "hex", prefix = "sha256=" }
//! ```
//!
//! - `mapping`: the mapping as written in config, and its validation.
//! - `verify`: the signature header check.
//! - `parse`: reading the message out of a body.
//! - `webhook`: the endpoint [`crate::webhook::SmsWebhook`] serves for every gateway.

pub mod config;
mod mapping;
mod parse;
mod verify;
pub(crate) mod webhook;

#[cfg(test)]
mod tests;

pub use mapping::{
    BodyFormat, GatewayMapping, SignatureEncoding, SignatureMapping, TimestampFormat,
    TimestampMapping,
};
pub use parse::GatewayMessage;
pub use verify::Verification;

use omni_core::Secret;
use thiserror::Error;

/// Why a mapping is invalid or a request was refused.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// The mapping itself is wrong (found by [`GatewayMapping::validate`]).
    #[error("invalid gateway mapping: `{setting}` {reason}")]
    InvalidMapping {
        /// The setting at fault (`from`, `signature.header`…).
        setting: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The configured signature secret is empty.
    #[error("gateway signature secret is empty")]
    EmptySecret,
    /// The signature header is absent or empty.
    #[error("missing signature header `{header}`")]
    MissingSignature {
        /// The configured header name.
        header: String,
    },
    /// The header is not prefix + hex/base64.
    #[error("malformed signature in header `{header}`")]
    MalformedSignature {
        /// The configured header name.
        header: String,
    },
    /// The signature does not match the body.
    #[error("gateway signature does not match")]
    SignatureMismatch,
    /// A `format = "json"` body is not JSON.
    #[error("body is not valid json")]
    InvalidJson(#[source] serde_json::Error),
    /// A mapped field is absent, `null` or empty.
    #[error("missing {role} at `{field}`")]
    MissingField {
        /// Which message field (`from`, `to`, `text`, `message_id`).
        role: &'static str,
        /// The configured form key or JSON pointer.
        field: String,
    },
    /// A mapped JSON field is an object, array or boolean.
    #[error("{role} at `{field}` is not a string or number")]
    WrongType {
        /// Which message field.
        role: &'static str,
        /// The configured JSON pointer.
        field: String,
    },
    /// The timestamp does not match its configured format.
    #[error("invalid timestamp at `{field}`: {value:?}")]
    InvalidTimestamp {
        /// The configured form key or JSON pointer.
        field: String,
        /// The value received (shortened).
        value: String,
    },
}

/// A validated mapping, ready for requests.
#[derive(Debug, Clone)]
pub struct Gateway {
    mapping: GatewayMapping,
}

impl Gateway {
    /// The mapping it was built from.
    pub fn mapping(&self) -> &GatewayMapping {
        &self.mapping
    }

    /// The header to pass to [`Gateway::verify`], if the mapping has a signature.
    pub fn signature_header(&self) -> Option<&str> {
        self.mapping.signature.as_ref().map(|s| s.header.as_str())
    }
}

/// A generic inbound gateway.
#[derive(Debug, Clone)]
pub struct GatewayAccount {
    /// The validated field mapping.
    pub gateway: Gateway,
    /// The HMAC-SHA256 key of the mapping's signature header (required when the mapping has
    /// a signature; otherwise the webhook needs the tenant's `callback_token`).
    pub secret: Option<Secret>,
}
