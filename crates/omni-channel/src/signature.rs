//! Constant-time credential checks shared by every adapter.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// True when `presented` equals `expected`, in time independent of where they differ.
pub fn secrets_match(presented: &[u8], expected: &[u8]) -> bool {
    presented.ct_eq(expected).into()
}

/// Verifies a hex HMAC-SHA256 of `body` under `key`, as sent in a header (optionally prefixed,
/// e.g. `sha256=`). Case-insensitive hex; constant-time comparison of the MAC.
pub fn verify_hmac_sha256_hex(key: &[u8], body: &[u8], presented_hex: &str) -> bool {
    let Ok(presented) = hex::decode(presented_hex.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&presented).is_ok()
}

/// Verifies a hex HMAC-SHA1 of `body` under `key` (Meta's legacy `X-Hub-Signature`).
pub fn verify_hmac_sha1_hex(key: &[u8], body: &[u8], presented_hex: &str) -> bool {
    let Ok(presented) = hex::decode(presented_hex.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(key) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&presented).is_ok()
}

/// The hex HMAC-SHA1 of `body` under `key` (for tests and docs).
pub fn hmac_sha1_hex(key: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<sha1::Sha1>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The hex SHA-256 of the concatenated `parts` (plain digests used as MACs, e.g. Zalo's
/// `X-ZEvent-Signature`).
pub fn sha256_hex(parts: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

/// True when the hex strings name the same bytes (case-insensitive), in constant time.
pub fn hex_digests_match(presented_hex: &str, expected_hex: &str) -> bool {
    match (hex::decode(presented_hex.trim()), hex::decode(expected_hex)) {
        (Ok(a), Ok(b)) => secrets_match(&a, &b),
        _ => false,
    }
}

/// The hex HMAC-SHA256 of `body` under `key` (for clients, tests and docs).
pub fn hmac_sha256_hex(key: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_test_case_2() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        let mac = hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            mac,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify_hmac_sha256_hex(
            b"Jefe",
            b"what do ya want for nothing?",
            &mac
        ));
        assert!(verify_hmac_sha256_hex(
            b"Jefe",
            b"what do ya want for nothing?",
            &mac.to_uppercase()
        ));
    }

    #[test]
    fn rfc2202_hmac_sha1_and_fips_sha256_vectors() {
        // RFC 2202, HMAC-SHA1 test case 2.
        let mac = hmac_sha1_hex(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(mac, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
        assert!(verify_hmac_sha1_hex(
            b"Jefe",
            b"what do ya want for nothing?",
            &mac
        ));
        assert!(!verify_hmac_sha1_hex(b"Jefe", b"what do ya want?", &mac));
        // FIPS 180-2: SHA-256("abc"), split across parts.
        let digest = sha256_hex(&[b"a", b"bc"]);
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(hex_digests_match(&digest.to_uppercase(), &digest));
        assert!(!hex_digests_match("ba78", &digest));
        assert!(!hex_digests_match("not hex", &digest));
    }

    #[test]
    fn wrong_key_body_or_garbage_fails() {
        let mac = hmac_sha256_hex(b"k", b"body");
        assert!(!verify_hmac_sha256_hex(b"k2", b"body", &mac));
        assert!(!verify_hmac_sha256_hex(b"k", b"body!", &mac));
        assert!(!verify_hmac_sha256_hex(b"k", b"body", "zz"));
        assert!(!verify_hmac_sha256_hex(b"k", b"body", &mac[..10]));
        assert!(secrets_match(b"abc", b"abc"));
        assert!(!secrets_match(b"abc", b"abd"));
        assert!(!secrets_match(b"abc", b"abcd"));
    }
}
