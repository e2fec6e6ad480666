//! The digests and MACs the providers sign with (Twilio HMAC-SHA1 and `bodySHA256`, Vonage's
//! five modes, gateways' HMAC-SHA256), computed over several parts without copying them.
//! Signatures are compared with [`omni_channel::signature::secrets_match`], like every
//! adapter's credentials.

use hmac::{Hmac, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::{Sha256, Sha512};

macro_rules! hmac_fn {
    ($(#[$doc:meta])* $name:ident, $digest:ty) => {
        $(#[$doc])*
        pub(crate) fn $name(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            // HMAC takes keys of any length, so this never fails; an empty MAC never matches.
            let Ok(mut mac) = <Hmac<$digest> as Mac>::new_from_slice(key) else {
                return Vec::new();
            };
            for part in parts {
                mac.update(part);
            }
            mac.finalize().into_bytes().to_vec()
        }
    };
}

hmac_fn!(
    /// HMAC-SHA1 (Twilio, Vonage `sha1`).
    hmac_sha1,
    Sha1
);
hmac_fn!(
    /// HMAC-MD5 (Vonage `md5`).
    hmac_md5,
    Md5
);
hmac_fn!(
    /// HMAC-SHA256 (Vonage `sha256`, generic gateways).
    hmac_sha256,
    Sha256
);
hmac_fn!(
    /// HMAC-SHA512 (Vonage `sha512`).
    hmac_sha512,
    Sha512
);

/// Plain MD5 over the concatenation of `parts` (Vonage `md5hash`).
pub(crate) fn md5(parts: &[&[u8]]) -> Vec<u8> {
    use md5::Digest;
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().to_vec()
}

/// Plain SHA-256 (Twilio's `bodySHA256`).
pub(crate) fn sha256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    Sha256::digest(data).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_2202_and_4231_vectors_hold() {
        // RFC 2202 test case 2 (HMAC-MD5 and HMAC-SHA1), RFC 4231 test case 2 (SHA-256/512).
        let key = b"Jefe";
        let data: &[&[u8]] = &[b"what do ya ", b"want for nothing?"];
        assert_eq!(
            hex::encode(hmac_md5(key, data)),
            "750c783e6ab0b503eaa86e310a5db738"
        );
        assert_eq!(
            hex::encode(hmac_sha1(key, data)),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        assert_eq!(
            hex::encode(hmac_sha256(key, data)),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(hex::encode(hmac_sha512(key, data)).starts_with("164b7a7bfcf819e2"));
        assert_eq!(
            hex::encode(md5(&[b"a", b"bc"])),
            "900150983cd24fb0d6963f7d28e17f72"
        );
    }

    #[test]
    fn comparison_needs_equal_length_and_content() {
        use omni_channel::signature::secrets_match;
        assert!(secrets_match(b"abc", b"abc"));
        assert!(!secrets_match(b"abc", b"abd"));
        assert!(!secrets_match(b"abc", b"abcd"));
    }
}
