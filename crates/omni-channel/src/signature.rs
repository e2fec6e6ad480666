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
