//! `X-Twilio-Signature`, as Twilio's SDKs compute it:
//! - form body: `base64(HMAC-SHA1(auth token, URL + k1 + v1 + k2 + v2 …))` over the decoded
//!   form parameters sorted by key, then by value, repeated keys included;
//! - any other body (JSON): Twilio adds `bodySHA256=<hex sha256(body)>` to the URL's query and
//!   signs the URL alone, with no parameters; the hash must then match the raw body.
//!
//! The URL is the full public URL Twilio called, query included. Like the SDKs, a check also
//! accepts the URL with the scheme's default port added (when it has none) or removed (when it
//! has the default one), because Twilio is not consistent about it. Behind a TLS-terminating
//! proxy the caller must rebuild the public URL (scheme, host, port) before calling
//! [`verify_request`].

use base64::Engine as _;
use omni_channel::signature::secrets_match;

use super::TwilioError;
use crate::crypto;
use crate::params::Params;

/// The header Twilio signs requests in.
pub const SIGNATURE_HEADER: &str = "X-Twilio-Signature";

/// The query parameter that marks a JSON-body request.
const BODY_HASH_PARAM: &str = "bodySHA256";

/// The signature Twilio sends for a request to `url` with `params` (the decoded form fields;
/// empty for a JSON body).
pub fn compute_signature(auth_token: &[u8], url: &str, params: &Params) -> String {
    let mut pairs: Vec<(&str, &str)> = params.iter().collect();
    pairs.sort_unstable();
    let mut data = String::from(url);
    for (key, value) in pairs {
        data.push_str(key);
        data.push_str(value);
    }
    let mac = crypto::hmac_sha1(auth_token, &[data.as_bytes()]);
    base64::engine::general_purpose::STANDARD.encode(mac)
}

/// Checks `signature` against `url` (as given, then with its default port added or removed)
/// and `params`, in constant time.
pub fn verify_signature(
    auth_token: &[u8],
    url: &str,
    params: &Params,
    signature: &str,
) -> Result<(), TwilioError> {
    let presented = signature.trim().as_bytes();
    // Every variant is checked, so the time taken does not tell which one matched.
    let matched = url_variants(url)
        .iter()
        .map(|candidate| {
            secrets_match(
                presented,
                compute_signature(auth_token, candidate, params).as_bytes(),
            )
        })
        .fold(false, |any, this| any | this);
    if matched {
        Ok(())
    } else {
        Err(TwilioError::SignatureMismatch)
    }
}

/// Verifies a whole webhook request as an axum handler has it: the full public `url`, the raw
/// `body` and the `X-Twilio-Signature` header. A URL carrying `bodySHA256` is checked as a
/// JSON-body request, any other as a form request.
pub fn verify_request(
    auth_token: &[u8],
    url: &str,
    body: &[u8],
    signature: Option<&str>,
) -> Result<(), TwilioError> {
    let signature = signature
        .filter(|s| !s.trim().is_empty())
        .ok_or(TwilioError::MissingSignature)?;
    match Params::from_url_query(url).get(BODY_HASH_PARAM) {
        Some(expected_hash) => {
            verify_signature(auth_token, url, &Params::new(), signature)?;
            let matches = hex::decode(expected_hash.trim())
                .is_ok_and(|expected| secrets_match(&expected, &crypto::sha256(body)));
            if matches {
                Ok(())
            } else {
                Err(TwilioError::BodyHashMismatch)
            }
        }
        None => verify_signature(auth_token, url, &Params::from_form(body), signature),
    }
}

/// `url`, then the same URL with the scheme's default port added or removed, when that
/// differs. Unknown schemes and unparsable URLs give only `url` itself.
fn url_variants(url: &str) -> Vec<String> {
    let mut variants = vec![url.to_owned()];
    let Some((scheme, after_scheme)) = url.split_once("://") else {
        return variants;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => "443",
        "http" => "80",
        _ => return variants,
    };
    let authority_end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let (authority, rest) = after_scheme.split_at(authority_end);
    let (userinfo, host_port) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    // The port follows the last ':' that is not inside an IPv6 literal.
    let host_end = match host_port.rfind(']') {
        Some(bracket) => bracket + 1,
        None => 0,
    };
    let (host, port) = match host_port[host_end..].rfind(':') {
        Some(colon) => {
            let (host, port) = host_port.split_at(host_end + colon);
            (host, Some(&port[1..]))
        }
        None => (host_port, None),
    };
    if host.is_empty() {
        return variants;
    }
    match port {
        None => variants.push(format!("{scheme}://{userinfo}{host}:{default_port}{rest}")),
        Some(port) if port == default_port => {
            variants.push(format!("{scheme}://{userinfo}{host}{rest}"));
        }
        Some(_) => {}
    }
    variants
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twilio::{parse_inbound, parse_status};
    use proptest::prelude::*;

    const TOKEN: &[u8] = b"12345";
    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    fn published_params() -> Params {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .into_iter()
        .collect()
    }

    fn form(params: &Params) -> Vec<u8> {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter())
            .finish()
            .into_bytes()
    }

    #[test]
    fn published_test_vector_matches() {
        assert_eq!(
            compute_signature(TOKEN, URL, &published_params()),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
    }

    #[test]
    fn parameter_order_in_the_body_does_not_matter() {
        let reversed: Params = published_params()
            .iter()
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        assert!(verify_request(
            TOKEN,
            URL,
            &form(&reversed),
            Some("RSOYDt4T1cUTdK1PDd93/VVr8B8=")
        )
        .is_ok());
    }

    #[test]
    fn tampered_body_url_token_or_signature_fails() {
        let body = form(&published_params());
        let sig = Some("RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        assert!(verify_request(TOKEN, URL, &body, sig).is_ok());
        let mut tampered = published_params();
        tampered.push("Extra", "1");
        assert_eq!(
            verify_request(TOKEN, URL, &form(&tampered), sig),
            Err(TwilioError::SignatureMismatch)
        );
        assert_eq!(
            verify_request(TOKEN, "https://mycompany.com/myapp.php?foo=1", &body, sig),
            Err(TwilioError::SignatureMismatch)
        );
        assert_eq!(
            verify_request(b"54321", URL, &body, sig),
            Err(TwilioError::SignatureMismatch)
        );
        assert_eq!(
            verify_request(TOKEN, URL, &body, Some("RSOYDt4T1cUTdK1PDd93/VVr8B8")),
            Err(TwilioError::SignatureMismatch)
        );
        assert_eq!(
            verify_request(TOKEN, URL, &body, None),
            Err(TwilioError::MissingSignature)
        );
        assert_eq!(
            verify_request(TOKEN, URL, &body, Some("  ")),
            Err(TwilioError::MissingSignature)
        );
    }

    #[test]
    fn repeated_keys_are_signed_sorted_by_value() {
        let params: Params = [("b", "2"), ("a", "z"), ("a", "y")].into_iter().collect();
        // Computed independently: base64(HMAC-SHA1("12345", URL + "ay" + "az" + "b2")).
        let expected = base64::engine::general_purpose::STANDARD.encode(crypto::hmac_sha1(
            TOKEN,
            &[format!("{URL}ayazb2").as_bytes()],
        ));
        assert_eq!(compute_signature(TOKEN, URL, &params), expected);
    }

    #[test]
    fn default_port_may_be_added_or_removed() {
        let params = published_params();
        let body = form(&params);
        let with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        let signed_with_port = compute_signature(TOKEN, with_port, &params);
        // Twilio signed with :443, we rebuilt the URL without it.
        assert!(verify_request(TOKEN, URL, &body, Some(&signed_with_port)).is_ok());
        // Twilio signed without, our URL has it.
        assert!(verify_request(
            TOKEN,
            with_port,
            &body,
            Some("RSOYDt4T1cUTdK1PDd93/VVr8B8=")
        )
        .is_ok());
        // A non-default port is never dropped.
        let odd_port = "https://mycompany.com:8443/myapp.php?foo=1&bar=2";
        assert_eq!(
            verify_request(TOKEN, odd_port, &body, Some("RSOYDt4T1cUTdK1PDd93/VVr8B8=")),
            Err(TwilioError::SignatureMismatch)
        );
    }

    #[test]
    fn url_variants_handle_http_userinfo_and_ipv6() {
        assert_eq!(
            url_variants("http://u:p@example.com/x"),
            vec!["http://u:p@example.com/x", "http://u:p@example.com:80/x"]
        );
        assert_eq!(
            url_variants("https://[::1]:443?a=1"),
            vec!["https://[::1]:443?a=1", "https://[::1]?a=1"]
        );
        assert_eq!(
            url_variants("ftp://example.com/"),
            vec!["ftp://example.com/"]
        );
        assert_eq!(url_variants("not a url"), vec!["not a url"]);
    }

    #[test]
    fn json_body_is_checked_by_its_hash_in_the_url() {
        let body = br#"{"MessageSid":"SM1"}"#;
        let hash = hex::encode(crypto::sha256(body));
        let url = format!("https://example.com/sms/twilio?{BODY_HASH_PARAM}={hash}");
        let signature = compute_signature(TOKEN, &url, &Params::new());
        assert!(verify_request(TOKEN, &url, body, Some(&signature)).is_ok());
        // A different body with the same (signed) URL fails on the hash.
        assert_eq!(
            verify_request(TOKEN, &url, br#"{"MessageSid":"SM2"}"#, Some(&signature)),
            Err(TwilioError::BodyHashMismatch)
        );
        // The URL is signed: changing the hash in it breaks the signature.
        let other_hash = hex::encode(crypto::sha256(b"{}"));
        let forged = format!("https://example.com/sms/twilio?{BODY_HASH_PARAM}={other_hash}");
        assert_eq!(
            verify_request(TOKEN, &forged, b"{}", Some(&signature)),
            Err(TwilioError::SignatureMismatch)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            url in ".{0,80}",
            sig in proptest::option::of(".{0,40}"),
        ) {
            let _ = parse_inbound(&body);
            let _ = parse_status(&body);
            let _ = verify_request(TOKEN, &url, &body, sig.as_deref());
            let _ = url_variants(&url);
        }
    }
}
