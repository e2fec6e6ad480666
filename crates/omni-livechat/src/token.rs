//! Visitor tokens: `base64url(JSON {t, w, v, exp, iat_ms, l}) "." hex(HMAC-SHA256(widget secret,
//! payload))`.
//!
//! The token is the visitor's only credential (as in Rocket.Chat): whoever holds it reads and
//! writes that visitor's conversation, so it is signed with the widget's secret, carries an
//! expiry and its issue time (what a revocation compares, see [`crate::revocation`]), and is
//! checked in constant time. The payload is base64url and the MAC hex, so the whole token is
//! made of HTTP token characters: it travels as a WebSocket subprotocol
//! (`omni.token.<token>`, never in a URL) and the MAC covers the exact encoded bytes.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use omni_channel::signature::{hmac_sha256_hex, verify_hmac_sha256_hex};
use serde::{Deserialize, Serialize};

/// What a visitor token asserts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitorClaims {
    /// The tenant.
    #[serde(rename = "t")]
    pub tenant: String,
    /// The widget (the live chat channel account).
    #[serde(rename = "w")]
    pub widget: String,
    /// The contact id: a random visitor id, or `user:<id>` for a verified logged-in customer.
    #[serde(rename = "v")]
    pub visitor: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// When it was issued, Unix milliseconds (0 in tokens minted before it existed: every
    /// revocation of the visitor voids those).
    #[serde(default)]
    pub iat_ms: i64,
    /// The visitor's language (BCP 47), for routing rules.
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not two dot-separated parts, bad base64 or bad JSON.
    #[error("malformed token")]
    Malformed,
    /// The MAC does not match (forged, or signed with another widget's secret).
    #[error("bad token signature")]
    BadSignature,
    /// Valid, but past its expiry.
    #[error("token expired")]
    Expired,
}

impl TokenError {
    /// A bounded label for metrics and error frames.
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::BadSignature => "token_forged",
            TokenError::Expired => "token_expired",
        }
    }
}

/// Signs `claims` with `secret`.
pub fn sign(claims: &VisitorClaims, secret: &[u8]) -> String {
    let json = serde_json::to_vec(claims).unwrap_or_default();
    let payload = URL_SAFE_NO_PAD.encode(json);
    let mac = hmac_sha256_hex(secret, payload.as_bytes());
    format!("{payload}.{mac}")
}

/// Checks the signature first (constant time), then the expiry against `now` (Unix seconds).
/// `grace` extends the expiry (0 for connecting; a renewal window for refreshing a session).
pub fn verify(
    token: &str,
    secret: &[u8],
    now: i64,
    grace: i64,
) -> Result<VisitorClaims, TokenError> {
    let (payload, mac) = token.split_once('.').ok_or(TokenError::Malformed)?;
    if payload.is_empty() || mac.len() != 64 {
        return Err(TokenError::Malformed);
    }
    if !verify_hmac_sha256_hex(secret, payload.as_bytes(), mac) {
        return Err(TokenError::BadSignature);
    }
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let claims: VisitorClaims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    if claims.exp.saturating_add(grace) <= now {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// The identity hash a site computes server-side for a logged-in customer:
/// `hex(HMAC-SHA256(identity secret, user_id))` (Chatwoot's scheme), checked in constant time.
pub fn identity_matches(identity_secret: &[u8], user_id: &str, user_hash: &str) -> bool {
    verify_hmac_sha256_hex(identity_secret, user_id.as_bytes(), user_hash)
}

/// The identity hash of `user_id` under `identity_secret`, as a site computes it (what
/// `omnirouter user-hash` prints, for checking an integration).
pub fn identity_hash(identity_secret: &[u8], user_id: &str) -> String {
    omni_channel::signature::hmac_sha256_hex(identity_secret, user_id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> VisitorClaims {
        VisitorClaims {
            tenant: "demo".into(),
            widget: "web".into(),
            visitor: "v_0192".into(),
            exp,
            iat_ms: 1_000,
            language: Some("vi".into()),
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let token = sign(&claims(1_000), b"widget-secret");
        assert_eq!(verify(&token, b"widget-secret", 999, 0), Ok(claims(1_000)));
        assert_eq!(
            verify(&token, b"widget-secret", 1_000, 0),
            Err(TokenError::Expired)
        );
        // A renewal window accepts a recently expired token.
        assert!(verify(&token, b"widget-secret", 1_500, 3_600).is_ok());
    }

    #[test]
    fn forged_or_foreign_tokens_are_refused() {
        let token = sign(&claims(i64::MAX), b"widget-secret");
        assert_eq!(
            verify(&token, b"other-widget-secret", 0, 0),
            Err(TokenError::BadSignature)
        );
        // Changing the visitor in the payload without the secret breaks the MAC.
        let (_, mac) = token.split_once('.').unwrap();
        let mut forged = claims(i64::MAX);
        forged.visitor = "someone-else".into();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            verify(&format!("{payload}.{mac}"), b"widget-secret", 0, 0),
            Err(TokenError::BadSignature)
        );
        for garbage in [
            "",
            ".",
            "abc",
            "a.b",
            &format!("{}.{}", "x", "0".repeat(64)),
        ] {
            assert!(
                verify(garbage, b"widget-secret", 0, 0).is_err(),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn tokens_without_an_issue_time_read_as_issued_at_zero() {
        let json = br#"{"t":"demo","w":"web","v":"v_1","exp":9}"#;
        let payload = URL_SAFE_NO_PAD.encode(json);
        let token = format!("{payload}.{}", hmac_sha256_hex(b"k", payload.as_bytes()));
        assert_eq!(verify(&token, b"k", 0, 0).unwrap().iat_ms, 0);
        // Every character is an HTTP token character: the token is a valid subprotocol.
        let t = sign(&claims(i64::MAX), b"k");
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    }

    #[test]
    fn identity_hash_is_hmac_of_the_user_id() {
        let hash = hmac_sha256_hex(b"identity", b"customer-42");
        assert!(identity_matches(b"identity", "customer-42", &hash));
        assert!(!identity_matches(b"identity", "customer-43", &hash));
        assert!(!identity_matches(b"other", "customer-42", &hash));
        assert!(!identity_matches(b"identity", "customer-42", "nothex"));
    }
}
