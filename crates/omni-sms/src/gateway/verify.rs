//! The gateway's HMAC-SHA256 of the body, read from its header and checked in constant time.

use base64::Engine as _;
use omni_channel::signature::secrets_match;

use super::{Gateway, GatewayError, SignatureEncoding};
use crate::crypto;

/// Whether a request was authenticated by its signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// The signature matched.
    Signed,
    /// The mapping configures no signature: nothing was checked.
    Unsigned,
}

impl Gateway {
    /// Checks `header_value` (the value of [`Gateway::signature_header`]) against the raw
    /// `body` under `secret`.
    pub fn verify(
        &self,
        secret: &[u8],
        header_value: Option<&str>,
        body: &[u8],
    ) -> Result<Verification, GatewayError> {
        let Some(sig) = &self.mapping.signature else {
            return Ok(Verification::Unsigned);
        };
        if secret.is_empty() {
            return Err(GatewayError::EmptySecret);
        }
        let value = header_value
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| GatewayError::MissingSignature {
                header: sig.header.clone(),
            })?;
        let malformed = || GatewayError::MalformedSignature {
            header: sig.header.clone(),
        };
        let encoded = match &sig.prefix {
            Some(prefix) => value
                .get(..prefix.len())
                .filter(|head| head.eq_ignore_ascii_case(prefix))
                .and_then(|_| value.get(prefix.len()..))
                .ok_or_else(malformed)?,
            None => value,
        };
        let presented = match sig.encoding {
            SignatureEncoding::Hex => hex::decode(encoded.trim()).ok(),
            SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok(),
        }
        .ok_or_else(malformed)?;
        let expected = crypto::hmac_sha256(secret, &[body]);
        if secrets_match(&presented, &expected) {
            Ok(Verification::Signed)
        } else {
            Err(GatewayError::SignatureMismatch)
        }
    }
}
