//! Why an inbound request was refused. Each variant has one status code and one bounded
//! `reason` label, and becomes a JSON body `{"error":{"code","message"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// A refused inbound request. Nothing was published for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngressError {
    /// The tenant in the path is not configured (or not enabled for this channel).
    #[error("unknown tenant")]
    UnknownTenant,
    /// No credentials were presented.
    #[error("missing credentials: {0}")]
    MissingCredentials(&'static str),
    /// Credentials or signature did not match.
    #[error("invalid credentials: {0}")]
    BadCredentials(&'static str),
    /// The request's signed time is outside the replay window (a captured request replayed,
    /// or a sender's clock far off).
    #[error("the signed time is {age_secs}s away from now, more than the {max_age_secs}s allowed")]
    Stale {
        /// Distance between the signed time and now, in seconds.
        age_secs: u64,
        /// The window, in seconds.
        max_age_secs: u64,
    },
    /// A subscription handshake (Meta's `hub.verify_token`) did not match.
    #[error("subscription verification failed: {0}")]
    VerificationFailed(&'static str),
    /// The body is larger than the configured limit.
    #[error("body larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body is not valid JSON / form data of the expected shape.
    #[error("malformed body: {0}")]
    Malformed(String),
    /// A required field is missing or empty.
    #[error("missing field: {0}")]
    MissingField(String),
    /// A field has a value we cannot accept.
    #[error("invalid field {field}: {reason}")]
    InvalidField {
        /// The field's path in the body.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The content type is not one the endpoint takes.
    #[error("unsupported content type, expected {0}")]
    UnsupportedMediaType(&'static str),
    /// Reading the request body failed (client went away mid-body).
    #[error("could not read the request body")]
    BodyRead,
    /// Kafka did not acknowledge in time: the provider should retry.
    #[error("event store unavailable, retry later")]
    Unavailable,
    /// This instance is handling as many requests as it may (`ingress.max_in_flight`): the
    /// request is shed before its body is read, and the provider retries later.
    #[error("overloaded, retry later")]
    Overloaded,
}

impl IngressError {
    /// The HTTP status for this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            IngressError::UnknownTenant => StatusCode::NOT_FOUND,
            IngressError::MissingCredentials(_) => StatusCode::UNAUTHORIZED,
            IngressError::BadCredentials(_) => StatusCode::UNAUTHORIZED,
            IngressError::Stale { .. } => StatusCode::UNAUTHORIZED,
            IngressError::VerificationFailed(_) => StatusCode::FORBIDDEN,
            IngressError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngressError::Malformed(_)
            | IngressError::MissingField(_)
            | IngressError::InvalidField { .. }
            | IngressError::BodyRead => StatusCode::BAD_REQUEST,
            IngressError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngressError::Unavailable | IngressError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A bounded label for `omni_ingress_rejected_total{reason}` and the JSON `code`.
    pub fn reason(&self) -> &'static str {
        match self {
            IngressError::UnknownTenant => "unknown_tenant",
            IngressError::MissingCredentials(_) => "missing_credentials",
            IngressError::BadCredentials(_) => "bad_credentials",
            IngressError::Stale { .. } => "stale_timestamp",
            IngressError::VerificationFailed(_) => "verification_failed",
            IngressError::PayloadTooLarge { .. } => "payload_too_large",
            IngressError::Malformed(_) => "malformed",
            IngressError::MissingField(_) => "missing_field",
            IngressError::InvalidField { .. } => "invalid_field",
            IngressError::UnsupportedMediaType(_) => "unsupported_media_type",
            IngressError::BodyRead => "body_read",
            IngressError::Unavailable => "kafka_unavailable",
            IngressError::Overloaded => "overloaded",
        }
    }
}

impl IntoResponse for IngressError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "code": self.reason(), "message": self.to_string() }
        });
        let mut response = (self.status(), axum::Json(body)).into_response();
        if matches!(self, IngressError::Unavailable | IngressError::Overloaded) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}
