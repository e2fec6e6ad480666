//! eSMS.vn (Vietnamese brandname SMS): the send request body, its reply and the delivery
//! callback. Pure: the caller POSTs [`SendBody`] as JSON to [`SEND_URL`] and hands the answer
//! to [`parse_send_reply`].
//!
//! Decisions:
//! - Phone numbers go in the national form with trunk `0` (`0901234567`), the form eSMS's
//!   documentation and callbacks use; eSMS is a domestic gateway, so a number outside +84 is
//!   refused with [`EsmsError::NotVietnamese`] rather than sent to be rejected.
//! - `Content` is the NFC text measured by [`crate::encoding::layout`], and `IsUnicode` is `1`
//!   exactly when that text needs UCS-2; [`SendBody::layout`] gives the segment count.
//! - `RequestId` is the caller's outbound event id: eSMS refuses a second request with the same
//!   id, so a retried send cannot reach the customer twice. eSMS echoes it in callbacks, where
//!   it comes back as [`crate::status::StatusReport::client_ref`].
//! - A reply `CodeResult` of `100` means accepted, even without `SMSID` (a missing id only
//!   means callbacks cannot be matched by it; reporting a failure would invite a resend).
//!   Anything else is [`EsmsError::Rejected`] with the code.
//! - The delivery callback (HTTP GET, per eSMS's "Callback Url" documentation page) carries
//!   `SMSID`, `SendStatus`, `SendSuccess`, `SendFailed`, `RequestId`. Those fields and the
//!   meaning of the numbers are not confirmed against real traffic, so keys are matched
//!   case-insensitively (`status` is accepted for `SendStatus`) and the mapping is:
//!   `1` (awaiting approval), `2` (waiting to send), `3` (sending, older docs) → pending;
//!   `7` (handed to the telco, awaiting its report) → sent; `4` (rejected), `6` (deleted,
//!   older docs) → failed with that code; `5` (processed) → delivered when `SendSuccess > 0`,
//!   failed when only `SendFailed > 0`, otherwise sent. Other numbers are
//!   [`EsmsError::UnknownStatus`]. With one phone per request the counts are 0 or 1.
//!
//! - `body`: the send request body and the reply to it.
//! - `parse`: the delivery callback.
//! - `webhook`: the callback endpoint [`crate::webhook::SmsWebhook`] serves.
//! - `send`: the API call, when its outcome may be repeated, and `CodeResult`s sorted into
//!   reasons.

mod body;
pub mod config;
mod parse;
mod send;
pub(crate) mod webhook;

#[cfg(test)]
mod tests;

pub use body::{
    build_send_body, parse_send_reply, SendAccepted, SendBody, SendRequest, ACCEPTED_CODE, SEND_URL,
};
pub use parse::parse_delivery_callback;
pub use send::classify_esms;
pub(crate) use send::{classify_outcome, send_message};

use omni_core::Secret;
use serde::Deserialize;
use thiserror::Error;

/// Why a send could not be built, or eSMS refused it, or a callback is unreadable.
#[derive(Debug, Error)]
pub enum EsmsError {
    /// The recipient is not a +84 number.
    #[error("esms only sends to +84 numbers")]
    NotVietnamese,
    /// Nothing to send.
    #[error("message content is empty")]
    EmptyContent,
    /// A brandname message without a brandname.
    #[error("brandname messages need a brandname")]
    MissingBrandname,
    /// No request id: the send would lose its server-side dedupe.
    #[error("request id is empty")]
    MissingRequestId,
    /// The reply is not JSON.
    #[error("esms reply is not valid json")]
    InvalidJson(#[source] serde_json::Error),
    /// eSMS refused the request.
    #[error("esms refused the request with code {code}")]
    Rejected {
        /// `CodeResult` (e.g. `101` bad credentials, `103` balance, `104` brandname).
        code: String,
        /// `ErrorMessage`, when given (shortened).
        message: Option<String>,
    },
    /// A required field of a reply or callback is absent.
    #[error("missing field `{field}`")]
    MissingField {
        /// The field name.
        field: &'static str,
    },
    /// A callback status this crate does not know.
    #[error("unknown esms send status {status:?}")]
    UnknownStatus {
        /// The status received (shortened).
        status: String,
    },
}

/// An eSMS account's API credentials.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsmsCredentials {
    /// `ApiKey`.
    pub api_key: Secret,
    /// `SecretKey`.
    pub secret_key: Secret,
}

/// `SmsType`: which eSMS product carries the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmsType {
    /// `2`: customer-care message from a registered brandname.
    BrandnameCare,
    /// `8`: message from an eSMS fixed number (no brandname).
    FixedNumber,
}

impl SmsType {
    /// The `SmsType` value.
    pub fn code(self) -> &'static str {
        match self {
            Self::BrandnameCare => "2",
            Self::FixedNumber => "8",
        }
    }
}

/// An eSMS.vn account.
#[derive(Debug, Clone)]
pub struct EsmsAccount {
    /// `ApiKey` and `SecretKey`.
    pub credentials: EsmsCredentials,
    /// `Sandbox=1`: eSMS checks requests but delivers nothing.
    pub sandbox: bool,
}
