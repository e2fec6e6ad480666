//! Live chat visitor tokens (`token::verify`, what the session and socket endpoints call on the
//! token a visitor presents): as presented, and with any payload signed by the harness so the
//! decoding behind the signature check is reached too.
//!
//! Invariants: a token verifies under at most one secret; a payload signed with the widget's
//! secret is never refused as forged under it and always refused under another; accepted
//! claims sign into a token that verifies to the same claims.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use omni_channel::signature::hmac_sha256_hex;
use omni_fuzz::{OTHER_SECRET, SECRET};
use omni_livechat::token::{sign, verify, TokenError};

const NOW: i64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let (secret, other) = (SECRET.as_bytes(), OTHER_SECRET.as_bytes());
    // As presented: the bytes are the token (query strings are text).
    let token = String::from_utf8_lossy(data);
    let mine = verify(&token, secret, NOW, 0);
    assert!(!(mine.is_ok() && verify(&token, other, NOW, 0).is_ok()));
    // Signed here: the bytes are the payload's JSON.
    let payload = URL_SAFE_NO_PAD.encode(data);
    let token = format!("{payload}.{}", hmac_sha256_hex(secret, payload.as_bytes()));
    let grace = i64::from(data.first().copied().unwrap_or(0)) * 3600;
    match verify(&token, secret, NOW, grace) {
        Ok(claims) => {
            assert!(
                claims.exp.saturating_add(grace) > NOW,
                "expired claims accepted"
            );
            let again = sign(&claims, secret);
            assert_eq!(
                verify(&again, secret, NOW, grace),
                Ok(claims),
                "claims round-trip"
            );
        }
        Err(e) => assert_ne!(e, TokenError::BadSignature, "our own signature refused"),
    }
    // An empty payload is malformed before any signature is computed.
    let refusal = if payload.is_empty() {
        TokenError::Malformed
    } else {
        TokenError::BadSignature
    };
    assert_eq!(verify(&token, other, NOW, grace), Err(refusal));
});
