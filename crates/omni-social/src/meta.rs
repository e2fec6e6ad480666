//! What Meta's webhooks share, whichever product sends them (Messenger and Instagram Direct on
//! one route, WhatsApp on its own): the `GET` subscription handshake, the
//! `X-Hub-Signature-256` check on the exact bytes received, and the shape of Graph API errors.

use axum::extract::{Path, Query};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::MethodRouter;
use omni_channel::signature::{secrets_match, verify_hmac_sha1_hex, verify_hmac_sha256_hex};
use omni_channel::{Ingress, IngressError, Swappable, WebhookAdapter};
use omni_core::Secret;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Meta's signature headers.
const SIGNATURE_256: &str = "x-hub-signature-256";
const SIGNATURE_SHA1: &str = "x-hub-signature";

/// A Meta app's webhook credentials, as one tenant configured them.
pub(crate) struct MetaApp<'a> {
    /// The app secret: the HMAC key of every webhook signature.
    pub app_secret: &'a Secret,
    /// The token typed into the app's webhook settings, echoed in the handshake.
    pub verify_token: &'a Secret,
    /// Accept the legacy `X-Hub-Signature: sha1=…` when the SHA-256 header is absent.
    pub accept_sha1: bool,
}

impl MetaApp<'_> {
    /// Checks `X-Hub-Signature-256: sha256=<hex>` (HMAC-SHA256 of the raw body under the app
    /// secret); the SHA-1 header only where the tenant accepts it.
    pub fn verify(&self, request: &Parts, body: &[u8]) -> Result<(), IngressError> {
        let headers = &request.headers;
        let key = self.app_secret.expose().as_bytes();
        if let Some(sig) = headers.get(SIGNATURE_256) {
            let hex = sig
                .to_str()
                .ok()
                .and_then(|s| s.strip_prefix("sha256="))
                .ok_or(IngressError::BadCredentials(
                    "X-Hub-Signature-256 must be sha256=<hex>",
                ))?;
            return if verify_hmac_sha256_hex(key, body, hex) {
                Ok(())
            } else {
                Err(IngressError::BadCredentials(
                    "X-Hub-Signature-256 does not match the body",
                ))
            };
        }
        match headers.get(SIGNATURE_SHA1) {
            Some(sig) if self.accept_sha1 => {
                let hex = sig
                    .to_str()
                    .ok()
                    .and_then(|s| s.strip_prefix("sha1="))
                    .ok_or(IngressError::BadCredentials(
                        "X-Hub-Signature must be sha1=<hex>",
                    ))?;
                if verify_hmac_sha1_hex(key, body, hex) {
                    Ok(())
                } else {
                    Err(IngressError::BadCredentials(
                        "X-Hub-Signature does not match the body",
                    ))
                }
            }
            Some(_) => Err(IngressError::BadCredentials(
                "only X-Hub-Signature-256 is accepted for this tenant",
            )),
            None => Err(IngressError::MissingCredentials(
                "X-Hub-Signature-256 header is required",
            )),
        }
    }

    /// Meta's subscription handshake (`GET ?hub.mode=subscribe&hub.verify_token=T&hub.challenge=C`):
    /// the challenge to echo when the mode and token are right.
    pub fn handshake(&self, query: &HashMap<String, String>) -> Result<String, IngressError> {
        if query.get("hub.mode").map(String::as_str) != Some("subscribe") {
            return Err(IngressError::VerificationFailed(
                "hub.mode must be subscribe",
            ));
        }
        let token = query.get("hub.verify_token").map_or("", String::as_str);
        if !secrets_match(token.as_bytes(), self.verify_token.expose().as_bytes()) {
            return Err(IngressError::VerificationFailed(
                "hub.verify_token does not match",
            ));
        }
        query
            .get("hub.challenge")
            .filter(|c| !c.is_empty() && c.len() <= 256)
            .cloned()
            .ok_or(IngressError::MissingField("hub.challenge".into()))
    }
}

/// A webhook adapter for a Meta product: it knows each tenant's app.
pub(crate) trait MetaWebhook: WebhookAdapter {
    /// The tenant's app credentials, if the tenant has this product.
    fn app(&self, tenant: &str) -> Option<MetaApp<'_>>;

    /// The challenge to echo in `tenant`'s subscription handshake, or why not.
    fn handshake(
        &self,
        tenant: &str,
        query: &HashMap<String, String>,
    ) -> Result<String, IngressError> {
        self.app(tenant)
            .ok_or(IngressError::UnknownTenant)
            .and_then(|app| app.handshake(query))
    }
}

/// The `GET` handshake route of a Meta webhook: the challenge echoed for the right verify
/// token, any other answer refused through `ingress` (counted like any refused request).
pub(crate) fn handshake_route<A: MetaWebhook>(
    ingress: Arc<Ingress>,
    adapter: Arc<Swappable<A>>,
) -> MethodRouter {
    axum::routing::get(
        move |Path(tenant): Path<String>, Query(query): Query<HashMap<String, String>>| async move {
            match adapter.current().handshake(&tenant, &query) {
                Ok(challenge) => (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    challenge,
                )
                    .into_response(),
                Err(e) => ingress.refuse(A::CHANNEL, e),
            }
        },
    )
}

/// A Graph API error answer: `{"error": {...}}`.
#[derive(Debug, Deserialize)]
pub(crate) struct GraphErrorBody {
    /// The error.
    pub error: GraphError,
}

/// A Graph API error object (Messenger's, Instagram's and WhatsApp's alike).
#[derive(Debug, Deserialize)]
pub(crate) struct GraphError {
    /// What Meta says went wrong.
    #[serde(default)]
    pub message: String,
    /// The error code, which the classifiers key on.
    #[serde(default)]
    pub code: i64,
    /// A finer code for some errors.
    #[serde(default)]
    pub error_subcode: Option<i64>,
    /// WhatsApp's detail (`error_data.details`).
    #[serde(default)]
    pub error_data: Option<ErrorData>,
}

/// WhatsApp's `error_data`.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorData {
    /// A human-readable detail.
    #[serde(default)]
    pub details: String,
}

impl ErrorData {
    /// ` (<details>)`, or nothing when Meta gave none.
    pub fn in_parens(data: Option<&ErrorData>) -> String {
        data.filter(|d| !d.details.is_empty())
            .map(|d| format!(" ({})", d.details))
            .unwrap_or_default()
    }
}

impl GraphError {
    /// `Graph error <code>[/<subcode>]: <message>[ (<details>)]`, for delivery details.
    pub fn describe(&self) -> String {
        let subcode = self
            .error_subcode
            .map(|s| format!("/{s}"))
            .unwrap_or_default();
        let details = ErrorData::in_parens(self.error_data.as_ref());
        format!(
            "Graph error {}{subcode}: {}{details}",
            self.code, self.message
        )
    }
}
