//! Signed Vonage webhooks.
//!
//! Signature (when the account has signed webhooks): drop `sig`, sort the parameters by key,
//! replace `&` and `=` inside values with `_`, join as `&k=v&k2=v2…`; `md5hash` is
//! `hex(md5(string + secret))`, the HMAC modes `hex(HMAC(secret, string))`. Vonage writes hex
//! in either case, so the comparison decodes both sides and compares bytes in constant time.
//! The signed `timestamp` (Unix seconds) allows an optional maximum age: a captured request
//! cannot be replayed later.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use omni_channel::replay::ReplayWindow;
use omni_channel::signature::secrets_match;
use serde::Deserialize;

use super::parse::required;
use super::VonageError;
use crate::crypto;
use crate::params::{clip, Params};

/// The signature method set in the Vonage dashboard; config names follow Vonage's SDKs
/// (`md5hash`, `md5`, `sha1`, `sha256`, `sha512`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum SignatureMethod {
    /// `md5(string + secret)`: Vonage's legacy scheme.
    #[serde(rename = "md5hash")]
    Md5Hash,
    /// HMAC-MD5.
    #[serde(rename = "md5", alias = "hmac_md5")]
    HmacMd5,
    /// HMAC-SHA1.
    #[serde(rename = "sha1", alias = "hmac_sha1")]
    HmacSha1,
    /// HMAC-SHA256.
    #[serde(rename = "sha256", alias = "hmac_sha256")]
    HmacSha256,
    /// HMAC-SHA512.
    #[serde(rename = "sha512", alias = "hmac_sha512")]
    HmacSha512,
}

/// How an account's webhooks are signed: the method and, for replay protection, how far the
/// signed `timestamp` may be from now (`None` accepts any timestamp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureSettings {
    /// The dashboard's signature method.
    pub method: SignatureMethod,
    /// Maximum distance between `timestamp` and now, either way (clocks drift).
    pub max_age: Option<Duration>,
}

/// The string Vonage signs: `&k=v&k2=v2…` over the parameters sorted by key, without `sig`,
/// with `&` and `=` inside values replaced by `_`.
pub fn signing_string(params: &Params) -> String {
    let mut first_values: BTreeMap<&str, &str> = BTreeMap::new();
    for (key, value) in params.iter().filter(|(key, _)| *key != "sig") {
        first_values.entry(key).or_insert(value);
    }
    let mut out = String::new();
    for (key, value) in first_values {
        out.push('&');
        out.push_str(key);
        out.push('=');
        out.extend(
            value
                .chars()
                .map(|c| if c == '&' || c == '=' { '_' } else { c }),
        );
    }
    out
}

/// The signature Vonage sends for `params`, as lowercase hex.
pub fn sign(method: SignatureMethod, secret: &[u8], params: &Params) -> String {
    hex::encode(raw_signature(method, secret, params))
}

fn raw_signature(method: SignatureMethod, secret: &[u8], params: &Params) -> Vec<u8> {
    let data = signing_string(params);
    let data = data.as_bytes();
    match method {
        SignatureMethod::Md5Hash => crypto::md5(&[data, secret]),
        SignatureMethod::HmacMd5 => crypto::hmac_md5(secret, &[data]),
        SignatureMethod::HmacSha1 => crypto::hmac_sha1(secret, &[data]),
        SignatureMethod::HmacSha256 => crypto::hmac_sha256(secret, &[data]),
        SignatureMethod::HmacSha512 => crypto::hmac_sha512(secret, &[data]),
    }
}

/// Checks the request's `sig` (hex, any case) in constant time, then, when
/// `settings.max_age` is set, that the signed `timestamp` is within it of `now`.
pub fn verify_signature(
    settings: &SignatureSettings,
    secret: &[u8],
    params: &Params,
    now: DateTime<Utc>,
) -> Result<(), VonageError> {
    let presented = params
        .get("sig")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(VonageError::MissingSignature)?;
    let expected = raw_signature(settings.method, secret, params);
    let matches = hex::decode(presented).is_ok_and(|sig| secrets_match(&sig, &expected));
    if !matches {
        return Err(VonageError::SignatureMismatch);
    }
    if let Some(max_age) = settings.max_age {
        let raw = required(params, "timestamp")?;
        let signed_at = raw
            .parse::<i64>()
            .ok()
            .and_then(|secs| DateTime::from_timestamp(secs, 0))
            .ok_or_else(|| VonageError::InvalidField {
                field: "timestamp",
                value: clip(&raw),
            })?;
        ReplayWindow::new(max_age)
            .check(signed_at, now)
            .map_err(VonageError::StaleTimestamp)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vonage::{parse_delivery_receipt, VonageInbound};
    use omni_channel::replay::Stale;
    use proptest::prelude::*;

    fn vector_params() -> Params {
        [("a", "1"), ("b", "2"), ("timestamp", "1461605396")]
            .into_iter()
            .collect()
    }

    fn settings(method: SignatureMethod) -> SignatureSettings {
        SignatureSettings {
            method,
            max_age: None,
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn signed(method: SignatureMethod, mut params: Params) -> Params {
        let sig = sign(method, b"secret", &params);
        params.push("sig", sig);
        params
    }

    #[test]
    fn published_md5hash_vector_matches() {
        assert_eq!(
            sign(SignatureMethod::Md5Hash, b"secret", &vector_params()),
            "6af838ef94998832dbfc29020b564830"
        );
    }

    #[test]
    fn hmac_modes_match_independently_computed_vectors() {
        // Computed with Python 3: hmac.new(b"secret", b"&a=1&b=2&timestamp=1461605396",
        // "<md5|sha1|sha256|sha512>").hexdigest()
        let cases = [
            (SignatureMethod::HmacMd5, "c15c21ced558c93a226c305f58f902f2"),
            (
                SignatureMethod::HmacSha1,
                "3e19a4e6880fdc2c1426bfd0587c98b9532f0210",
            ),
            (
                SignatureMethod::HmacSha256,
                "a321e824b9b816be7c3f28859a31749a098713d39f613c80d455bbaffae1cd24",
            ),
            (
                SignatureMethod::HmacSha512,
                "812a18f76680fa0fe1b8bd9ee1625466ceb1bd96242e4d050d2cfd9a7b40166c\
                 63ed26ec9702168781b6edcf1633db8ff95af9341701004eec3fcf9550572ee8",
            ),
        ];
        for (method, expected) in cases {
            assert_eq!(
                sign(method, b"secret", &vector_params()),
                expected,
                "{method:?}"
            );
        }
    }

    #[test]
    fn signing_string_sorts_drops_sig_and_masks_separators() {
        let params: Params = [("text", "a=b&c"), ("sig", "x"), ("msisdn", "84")]
            .into_iter()
            .collect();
        assert_eq!(signing_string(&params), "&msisdn=84&text=a_b_c");
    }

    #[test]
    fn every_method_verifies_its_own_signature_in_any_case() {
        for method in [
            SignatureMethod::Md5Hash,
            SignatureMethod::HmacMd5,
            SignatureMethod::HmacSha1,
            SignatureMethod::HmacSha256,
            SignatureMethod::HmacSha512,
        ] {
            let params = signed(method, vector_params());
            assert_eq!(
                verify_signature(&settings(method), b"secret", &params, at(0)),
                Ok(())
            );
            let mut upper = vector_params();
            upper.push(
                "sig",
                sign(method, b"secret", &vector_params()).to_uppercase(),
            );
            assert_eq!(
                verify_signature(&settings(method), b"secret", &upper, at(0)),
                Ok(())
            );
            assert_eq!(
                verify_signature(&settings(method), b"other", &params, at(0)),
                Err(VonageError::SignatureMismatch)
            );
        }
    }

    #[test]
    fn tampering_or_missing_sig_is_refused() {
        let method = SignatureMethod::HmacSha256;
        let mut tampered = signed(method, vector_params());
        tampered.push("text", "injected");
        assert_eq!(
            verify_signature(&settings(method), b"secret", &tampered, at(0)),
            Err(VonageError::SignatureMismatch)
        );
        assert_eq!(
            verify_signature(&settings(method), b"secret", &vector_params(), at(0)),
            Err(VonageError::MissingSignature)
        );
        let mut garbage = vector_params();
        garbage.push("sig", "not hex");
        assert_eq!(
            verify_signature(&settings(method), b"secret", &garbage, at(0)),
            Err(VonageError::SignatureMismatch)
        );
    }

    #[test]
    fn max_age_refuses_old_and_far_future_timestamps() {
        let method = SignatureMethod::HmacSha256;
        let replay_safe = SignatureSettings {
            method,
            max_age: Some(Duration::from_secs(300)),
        };
        let params = signed(method, vector_params());
        let ts = 1_461_605_396;
        assert_eq!(
            verify_signature(&replay_safe, b"secret", &params, at(ts + 300)),
            Ok(())
        );
        assert_eq!(
            verify_signature(&replay_safe, b"secret", &params, at(ts + 301)),
            Err(VonageError::StaleTimestamp(Stale {
                age_secs: 301,
                max_age_secs: 300
            }))
        );
        assert!(matches!(
            verify_signature(&replay_safe, b"secret", &params, at(ts - 301)),
            Err(VonageError::StaleTimestamp(_))
        ));
        let no_timestamp = signed(method, [("a", "1")].into_iter().collect());
        assert_eq!(
            verify_signature(&replay_safe, b"secret", &no_timestamp, at(ts)),
            Err(VonageError::MissingField { field: "timestamp" })
        );
    }

    #[test]
    fn signature_methods_deserialize_from_sdk_names() {
        let method: SignatureMethod = serde_json::from_str(r#""sha256""#).unwrap();
        assert_eq!(method, SignatureMethod::HmacSha256);
        let method: SignatureMethod = serde_json::from_str(r#""md5hash""#).unwrap();
        assert_eq!(method, SignatureMethod::Md5Hash);
        assert!(serde_json::from_str::<SignatureMethod>(r#""sha3""#).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_requests_never_panic(
            query in ".{0,120}",
            body in proptest::collection::vec(any::<u8>(), 0..256),
            json in any::<bool>(),
            now in any::<i64>(),
        ) {
            let ct = if json { Some("application/json") } else { None };
            if let Ok(params) = Params::from_request(&query, ct, &body) {
                let _ = VonageInbound::from_params(&params);
                let _ = parse_delivery_receipt(&params);
                let now = DateTime::from_timestamp(now % 10_000_000_000, 0).unwrap_or_default();
                let replay_safe = SignatureSettings {
                    method: SignatureMethod::HmacSha256,
                    max_age: Some(Duration::MAX),
                };
                let _ = verify_signature(&replay_safe, b"secret", &params, now);
            }
        }
    }
}
