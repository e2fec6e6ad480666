//! The pure parts of a refresh: what the token endpoint's answer means (RFC 6749 §5.1, §5.2),
//! when a token is due for renewal, and the XOAUTH2 SASL string. No I/O, no clock.

use omni_core::Secret;
use serde::Deserialize;
use std::time::Duration;

/// Renew a token this long before it expires at most (a tenth of its lifetime when that is
/// shorter), so a login started just before the renewal still presents a valid token.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// The lifetime assumed when the endpoint does not say (`expires_in` is only RECOMMENDED);
/// Google and Microsoft both issue one-hour tokens.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// Longest provider description kept in an error (Microsoft's carry trace ids and timestamps).
const MAX_DETAIL: usize = 300;

/// A successful refresh.
pub struct Granted {
    /// The new access token.
    pub access_token: Secret,
    /// Its lifetime, when the endpoint said.
    pub expires_in: Option<Duration>,
    /// A new refresh token, when the endpoint rotates them.
    pub refresh_token: Option<Secret>,
}

/// Why a refresh gave no token.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `invalid_grant`: the refresh token is dead; only a new consent helps.
    InvalidGrant(String),
    /// The endpoint refused the client or the request: a registration or config error.
    Refused {
        /// The OAuth error code or the HTTP status.
        error: String,
        /// The provider's description.
        detail: String,
    },
    /// Anything that may pass: a server error, a rate limit, an unreadable answer.
    Unavailable(String),
}

/// The fields of RFC 6749's answers we read; tokens go straight into [`Secret`]s and this
/// type has no `Debug`, so no token can be printed from it.
#[derive(Deserialize)]
struct Answer {
    access_token: Option<Secret>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<Secret>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Reads the token endpoint's answer (its HTTP status and body).
pub fn parse(status: u16, body: &[u8]) -> Result<Granted, Refusal> {
    let answer = serde_json::from_slice::<Answer>(body).ok();
    let success = (200..300).contains(&status);
    match answer {
        Some(a) if success => granted(a),
        Some(Answer {
            error: Some(error),
            error_description,
            ..
        }) => Err(refusal(status, error, error_description)),
        _ if status >= 500 || status == 429 => Err(Refusal::Unavailable(format!("HTTP {status}"))),
        _ if status == 400 || status == 401 || status == 403 => Err(Refusal::Refused {
            error: format!("HTTP {status}"),
            detail: "no OAuth error in the answer".into(),
        }),
        _ => Err(Refusal::Unavailable(format!(
            "HTTP {status} with no readable token answer"
        ))),
    }
}

fn granted(a: Answer) -> Result<Granted, Refusal> {
    let Some(access_token) = a.access_token.filter(|t| !t.is_empty()) else {
        return Err(Refusal::Unavailable(
            "answer without an access_token".into(),
        ));
    };
    if let Some(kind) = a.token_type.filter(|t| !t.eq_ignore_ascii_case("bearer")) {
        return Err(Refusal::Unavailable(format!(
            "token_type {:?}, expected Bearer",
            clean(&kind)
        )));
    }
    Ok(Granted {
        access_token,
        expires_in: a.expires_in.as_ref().and_then(seconds),
        refresh_token: a.refresh_token.filter(|t| !t.is_empty()),
    })
}

fn refusal(status: u16, error: String, description: Option<String>) -> Refusal {
    let detail = clean(description.as_deref().unwrap_or(&error));
    match error.as_str() {
        "invalid_grant" => Refusal::InvalidGrant(detail),
        "invalid_client"
        | "unauthorized_client"
        | "invalid_scope"
        | "unsupported_grant_type"
        | "invalid_request" => Refusal::Refused {
            error: clean(&error),
            detail,
        },
        // `server_error`, `temporarily_unavailable`, or a code we do not know: try again.
        _ => Refusal::Unavailable(format!("HTTP {status} {}: {detail}", clean(&error))),
    }
}

/// `expires_in` as a number of seconds (some endpoints send a string).
fn seconds(value: &serde_json::Value) -> Option<Duration> {
    let secs = match value {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }?;
    Some(Duration::from_secs(secs))
}

/// A provider's text on one line, bounded.
fn clean(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(MAX_DETAIL) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

/// How long before its expiry a token of `lifetime` is renewed: [`REFRESH_MARGIN`], or a
/// tenth of the lifetime when that is shorter.
pub fn refresh_margin(lifetime: Duration) -> Duration {
    REFRESH_MARGIN.min(lifetime / 10)
}

/// How long after it was asked for a token of `lifetime` is used (then renewed).
pub fn usable_for(lifetime: Duration) -> Duration {
    lifetime.saturating_sub(refresh_margin(lifetime))
}

/// The XOAUTH2 initial response (Google's and Microsoft's SASL mechanism): the user and the
/// bearer token, `\x01`-separated, ended by two `\x01`.
pub fn xoauth2_sasl(user: &str, access_token: &str) -> String {
    format!("user={user}\x01auth=Bearer {access_token}\x01\x01")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal_of(status: u16, body: &str) -> Refusal {
        match parse(status, body.as_bytes()) {
            Ok(_) => panic!("{body} parsed as a grant"),
            Err(r) => r,
        }
    }

    #[test]
    fn a_grant_is_read_with_its_lifetime_and_a_rotated_refresh_token() {
        let g = parse(
            200,
            br#"{"access_token":"ya29.a","token_type":"Bearer","expires_in":3599,"scope":"https://mail.google.com/"}"#,
        )
        .unwrap();
        assert_eq!(g.access_token.expose(), "ya29.a");
        assert_eq!(g.expires_in, Some(Duration::from_secs(3599)));
        assert!(g.refresh_token.is_none());

        let g = parse(
            200,
            br#"{"access_token":"eyJ0","token_type":"bearer","expires_in":"4000","refresh_token":"M.R3"}"#,
        )
        .unwrap();
        assert_eq!(g.expires_in, Some(Duration::from_secs(4000)));
        assert_eq!(
            g.refresh_token.map(|r| r.expose().to_owned()).as_deref(),
            Some("M.R3")
        );
        assert!(parse(200, br#"{"access_token":"a"}"#)
            .unwrap()
            .expires_in
            .is_none());
    }

    #[test]
    fn refusals_say_whether_to_reauthorize_fix_the_config_or_retry() {
        assert_eq!(
            refusal_of(
                400,
                r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#
            ),
            Refusal::InvalidGrant("Token has been expired or revoked.".into())
        );
        assert_eq!(
            refusal_of(401, r#"{"error":"invalid_client"}"#),
            Refusal::Refused {
                error: "invalid_client".into(),
                detail: "invalid_client".into()
            }
        );
        assert!(matches!(
            refusal_of(400, r#"{"error":"invalid_scope","error_description":"AADSTS70011:\r\n bad\r\n scope"}"#),
            Refusal::Refused { detail, .. } if detail == "AADSTS70011: bad scope"
        ));
        assert!(matches!(
            refusal_of(503, r#"{"error":"temporarily_unavailable"}"#),
            Refusal::Unavailable(_)
        ));
        assert!(matches!(
            refusal_of(502, "<html>bad gateway</html>"),
            Refusal::Unavailable(_)
        ));
        assert!(matches!(refusal_of(429, ""), Refusal::Unavailable(_)));
        assert!(matches!(refusal_of(401, ""), Refusal::Refused { .. }));
        assert!(matches!(
            refusal_of(200, r#"{"token_type":"Bearer"}"#),
            Refusal::Unavailable(_)
        ));
        assert!(matches!(
            refusal_of(200, r#"{"access_token":"a","token_type":"MAC"}"#),
            Refusal::Unavailable(_)
        ));
        assert!(matches!(
            refusal_of(200, "not json"),
            Refusal::Unavailable(_)
        ));
        let long = format!(
            r#"{{"error":"invalid_grant","error_description":"{}"}}"#,
            "x".repeat(5000)
        );
        let Refusal::InvalidGrant(detail) = refusal_of(400, &long) else {
            panic!("not invalid_grant")
        };
        assert!(detail.chars().count() <= MAX_DETAIL + 1);
    }

    #[test]
    fn a_token_is_renewed_a_minute_or_a_tenth_of_its_life_before_it_expires() {
        let s = Duration::from_secs;
        assert_eq!(refresh_margin(s(3600)), s(60));
        assert_eq!(usable_for(s(3600)), s(3540));
        assert_eq!(refresh_margin(s(300)), s(30));
        assert_eq!(usable_for(s(10)), s(9));
        assert_eq!(usable_for(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn the_xoauth2_string_is_user_and_bearer_token_separated_by_ctrl_a() {
        assert_eq!(
            xoauth2_sasl("cskh@shop.example.vn", "ya29.token"),
            "user=cskh@shop.example.vn\u{1}auth=Bearer ya29.token\u{1}\u{1}"
        );
    }
}
