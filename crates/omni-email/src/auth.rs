//! Sender authentication: the `Authentication-Results` header (RFC 8601) of a receiving server
//! the operator trusts, read into [`SenderAuthentication`]. Pure.
//!
//! Anyone can write an `Authentication-Results` header into the mail they send, so only
//! headers whose authserv-id the mailbox names as trusted count, and of those only the topmost:
//! the trusted server adds its header above everything that came with the mail, and RFC 8601
//! §5 has it remove headers claiming its own id that arrived with the mail.

use omni_core::{AuthResult, SenderAuthentication};

/// The most `Authentication-Results` headers read from one mail.
pub const MAX_HEADERS: usize = 16;
/// The longest header value read; longer ones are cut (results come first in practice).
pub const MAX_HEADER_BYTES: usize = 4096;

/// The results of the topmost header whose authserv-id is in `trusted` (compared without
/// case), from `headers` in the order they appear in the mail; `None` when no trusted server
/// reported (or `trusted` is empty).
pub fn sender_authentication(
    headers: &[String],
    trusted: &[String],
) -> Option<SenderAuthentication> {
    headers
        .iter()
        .take(MAX_HEADERS)
        .filter_map(|h| parse_header(h))
        .find(|a| {
            trusted
                .iter()
                .any(|t| t.eq_ignore_ascii_case(&a.authserv_id))
        })
}

/// One header value: its authserv-id and the spf, dkim and dmarc results it gives. `None` when
/// it has no authserv-id (Microsoft 365 writes none, so its header cannot be told from one the
/// sender wrote).
pub fn parse_header(value: &str) -> Option<SenderAuthentication> {
    let clean = strip_comments(truncate(value, MAX_HEADER_BYTES));
    let mut parts = split_unquoted(&clean, ';').into_iter();
    let authserv_id = unquote(parts.next()?.split_whitespace().next()?);
    if authserv_id.is_empty() || authserv_id.contains('=') {
        return None;
    }
    let mut auth = SenderAuthentication {
        authserv_id: authserv_id.to_ascii_lowercase(),
        spf: None,
        dkim: None,
        dmarc: None,
    };
    for resinfo in parts {
        let Some(methodspec) = resinfo.split_whitespace().next() else {
            continue;
        };
        let Some((method, result)) = methodspec.split_once('=') else {
            continue;
        };
        let method = method.split('/').next().unwrap_or(method).trim();
        let Some(result) = parse_result(result.trim()) else {
            continue;
        };
        if method.eq_ignore_ascii_case("spf") {
            auth.spf.get_or_insert(result);
        } else if method.eq_ignore_ascii_case("dmarc") {
            auth.dmarc.get_or_insert(result);
        } else if method.eq_ignore_ascii_case("dkim") {
            // Several signatures: any that passed makes the mail DKIM-authenticated.
            if result == AuthResult::Pass || auth.dkim.is_none() {
                auth.dkim = Some(result);
            }
        }
    }
    Some(auth)
}

fn parse_result(s: &str) -> Option<AuthResult> {
    Some(match s.to_ascii_lowercase().as_str() {
        "pass" => AuthResult::Pass,
        "fail" | "hardfail" => AuthResult::Fail,
        "softfail" => AuthResult::Softfail,
        "neutral" => AuthResult::Neutral,
        "none" => AuthResult::None,
        "temperror" => AuthResult::Temperror,
        "permerror" => AuthResult::Permerror,
        "policy" => AuthResult::Policy,
        _ => return None,
    })
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The value with RFC 5322 comments (nested parentheses, `\` escapes) replaced by a space;
/// quoted strings are kept as they are. An unclosed comment runs to the end.
fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut depth = 0usize;
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if depth > 0 || quoted => {
                let next = chars.next();
                if depth == 0 {
                    out.push(c);
                    out.extend(next);
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(c);
            }
            '(' if !quoted => {
                depth += 1;
                if depth == 1 {
                    out.push(' ');
                }
            }
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// `s` split at `sep` outside quoted strings.
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches('"').to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Gmail's header, as it writes it (folded, with comments holding `;` and `=`).
    const GMAIL: &str = "mx.google.com;\r\n       dkim=pass header.i=@example.vn header.s=s1 header.b=AbCd;\r\n       spf=pass (google.com: domain of an@example.vn designates 203.0.113.5 as permitted sender; a=b) smtp.mailfrom=an@example.vn;\r\n       dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=example.vn";

    fn trusted(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn gmails_header_gives_every_result() {
        let a = parse_header(GMAIL).unwrap();
        assert_eq!(a.authserv_id, "mx.google.com");
        assert_eq!(a.spf, Some(AuthResult::Pass));
        assert_eq!(a.dkim, Some(AuthResult::Pass));
        assert_eq!(a.dmarc, Some(AuthResult::Pass));
    }

    /// RFC 8601 appendix B examples: a version after the id, `none`, several DKIM results,
    /// `method/version`, a quoted authserv-id.
    #[test]
    fn rfc_8601_examples_and_variants_parse() {
        let a = parse_header("example.com 1; none").unwrap();
        assert_eq!(a.authserv_id, "example.com");
        assert_eq!((a.spf, a.dkim, a.dmarc), (None, None, None));
        let a = parse_header(
            "mail-router.example.net; dkim=pass (good signature) header.d=newyork.example.com header.b=oINEO8hg; dkim=fail (bad signature) header.d=newyork.example.com",
        )
        .unwrap();
        assert_eq!(a.dkim, Some(AuthResult::Pass));
        let a = parse_header("mx.shop.vn; dkim=fail header.d=x; dkim=pass header.d=y").unwrap();
        assert_eq!(a.dkim, Some(AuthResult::Pass), "any passing signature");
        let a = parse_header("\"mx.shop.vn\"; spf/1=SoftFail smtp.mailfrom=x; DMARC=FAIL").unwrap();
        assert_eq!(a.authserv_id, "mx.shop.vn");
        assert_eq!(a.spf, Some(AuthResult::Softfail));
        assert_eq!(a.dmarc, Some(AuthResult::Fail));
    }

    #[test]
    fn only_the_topmost_header_of_a_trusted_server_counts() {
        let forged_below = "mx.shop.vn; dmarc=pass header.from=bank.vn".to_owned();
        let real =
            "mx.shop.vn; spf=fail smtp.mailfrom=bank.vn; dmarc=fail header.from=bank.vn".to_owned();
        let other = "attacker.example; dmarc=pass".to_owned();
        let headers = vec![other.clone(), real, forged_below];
        let a = sender_authentication(&headers, &trusted(&["MX.shop.vn"])).unwrap();
        assert_eq!(a.dmarc, Some(AuthResult::Fail));
        assert_eq!(a.spf, Some(AuthResult::Fail));
        assert_eq!(
            sender_authentication(&[other], &trusted(&["mx.shop.vn"])),
            None
        );
        assert_eq!(sender_authentication(&headers, &[]), None);
    }

    #[test]
    fn headers_without_an_authserv_id_and_garbage_give_nothing_and_never_panic() {
        // Microsoft 365's shape: results first, no id.
        assert_eq!(
            parse_header("spf=pass (sender IP is 1.2.3.4) smtp.mailfrom=x.vn; dmarc=pass"),
            None
        );
        for junk in [
            "",
            ";",
            "((((",
            "\"",
            "a; =; b=; =c; dkim",
            "x; dmarc=maybe",
        ] {
            let _ = parse_header(junk);
        }
        let a = parse_header("x; dmarc=maybe; spf=pass (unclosed").unwrap();
        assert_eq!(a.dmarc, None, "unknown results are ignored");
        assert_eq!(a.spf, Some(AuthResult::Pass));
        let long = format!("mx.shop.vn; spf=pass; x={}", "é".repeat(5000));
        assert_eq!(parse_header(&long).unwrap().spf, Some(AuthResult::Pass));
    }
}
