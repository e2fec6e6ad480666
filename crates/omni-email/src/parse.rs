//! One raw mail → the facts the channel needs, with no I/O: ids and threading headers, the
//! sender, the subject (RFC 2047 decoded), the text (plain preferred, HTML reduced to text,
//! quoted history trimmed), attachments, and whether a person wrote it.
//!
//! Never panics on any input: `mail-parser` is built for hostile mail and fuzzed upstream,
//! and [`parse_mail`] also catches a panic from it, so one poisoned mail cannot stop a
//! mailbox. A mail it cannot read at all is [`Unreadable`].

use chrono::{DateTime, Utc};
use mail_parser::{HeaderValue, MessageParser, MimeHeaders};

use crate::text;

/// What kind of sender wrote a mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailKind {
    /// A person: routed as a customer message.
    Person,
    /// An automatic answer (out of office, ticket acknowledgements, read receipts, bulk
    /// mail): not routed.
    AutoReply,
    /// A delivery failure report: not routed.
    Bounce,
}

impl MailKind {
    /// A bounded label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            MailKind::Person => "person",
            MailKind::AutoReply => "auto_reply",
            MailKind::Bounce => "bounce",
        }
    }
}

/// The sender of a mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    /// The address, lowercased (the contact id).
    pub address: String,
    /// The display name, RFC 2047 decoded, if any.
    pub name: Option<String>,
}

/// An attachment as found in the mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailAttachment {
    /// The file name the sender gave, decoded, if any.
    pub name: Option<String>,
    /// `type/subtype`.
    pub content_type: String,
    /// The decoded content.
    pub content: Vec<u8>,
}

/// The facts of one mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedMail {
    /// `Message-ID` without brackets, if the mail has one.
    pub message_id: Option<String>,
    /// `In-Reply-To` (first id), without brackets.
    pub in_reply_to: Option<String>,
    /// `References`, in order, without brackets.
    pub references: Vec<String>,
    /// The sender (`From`, else `Sender`, else `Return-Path`).
    pub from: Option<Sender>,
    /// The subject, decoded and bounded.
    pub subject: Option<String>,
    /// The customer's words: quoted history trimmed, bounded.
    pub text: String,
    /// Files attached (not inline body parts).
    pub attachments: Vec<MailAttachment>,
    /// The `Date` header, if valid.
    pub sent_at: Option<DateTime<Utc>>,
    /// Who wrote it.
    pub kind: MailKind,
    /// Every `Authentication-Results` header value, top to bottom (bounded; see
    /// [`crate::auth`], which decides which of them to believe).
    pub authentication_results: Vec<String>,
}

/// The bytes are not a mail at all (no header could be read).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable mail")]
pub struct Unreadable;

/// The most attachments listed on one event.
pub const MAX_ATTACHMENTS: usize = 100;

/// Parses one raw mail. Never panics.
pub fn parse_mail(raw: &[u8]) -> Result<ParsedMail, Unreadable> {
    std::panic::catch_unwind(|| parse_inner(raw)).unwrap_or(Err(Unreadable))
}

fn parse_inner(raw: &[u8]) -> Result<ParsedMail, Unreadable> {
    let message = MessageParser::default().parse(raw).ok_or(Unreadable)?;
    if message.headers().is_empty() {
        return Err(Unreadable);
    }
    let message_id = message
        .message_id()
        .map(crate::thread::bare_id)
        .filter(|id| !id.is_empty())
        .map(str::to_owned);
    let in_reply_to = id_list(message.in_reply_to()).into_iter().next();
    let references = id_list(message.references());
    let from = sender(&message);
    let subject = message
        .subject()
        .map(|s| text::truncate(s.trim(), text::MAX_SUBJECT_BYTES, "…"))
        .filter(|s| !s.is_empty());
    let body = message
        .body_text(0)
        .map(|t| text::normalize(&t))
        .unwrap_or_default();
    let trimmed = text::trim_quoted(&body);
    let text = text::truncate(&trimmed, text::MAX_TEXT_BYTES, text::TRUNCATED_MARK);
    let attachments = message
        .attachments()
        .filter(|p| !p.is_message() || p.message().is_some())
        .take(MAX_ATTACHMENTS)
        .map(|p| MailAttachment {
            name: p.attachment_name().map(str::to_owned),
            content_type: p.content_type().map_or_else(
                || "application/octet-stream".to_owned(),
                |ct| match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub).to_ascii_lowercase(),
                    None => ct.ctype().to_ascii_lowercase(),
                },
            ),
            content: p.contents().to_vec(),
        })
        .collect();
    let sent_at = message
        .date()
        .and_then(|d| DateTime::from_timestamp(d.to_timestamp(), 0));
    let kind = classify(&message, from.as_ref());
    let authentication_results = message
        .headers_raw()
        .filter(|(name, _)| name.eq_ignore_ascii_case("authentication-results"))
        .take(crate::auth::MAX_HEADERS)
        .map(|(_, value)| text::truncate(value.trim(), crate::auth::MAX_HEADER_BYTES, ""))
        .collect();
    Ok(ParsedMail {
        message_id,
        in_reply_to,
        references,
        from,
        subject,
        text,
        attachments,
        sent_at,
        kind,
        authentication_results,
    })
}

/// Message ids of an `In-Reply-To` or `References` header, bare, in order.
fn id_list(value: &HeaderValue<'_>) -> Vec<String> {
    let ids: Vec<&str> = match value {
        HeaderValue::Text(t) => vec![t.as_ref()],
        HeaderValue::TextList(list) => list.iter().map(AsRef::as_ref).collect(),
        _ => Vec::new(),
    };
    ids.into_iter()
        .flat_map(str::split_whitespace)
        .map(crate::thread::bare_id)
        .filter(|id| !id.is_empty())
        .take(100)
        .map(str::to_owned)
        .collect()
}

fn sender(message: &mail_parser::Message<'_>) -> Option<Sender> {
    let from = message
        .from()
        .or_else(|| message.sender())
        .and_then(|a| a.first());
    if let Some(addr) = from {
        if let Some(address) = addr.address().map(str::trim).filter(|a| a.contains('@')) {
            return Some(Sender {
                address: address.to_lowercase(),
                name: addr
                    .name()
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty()),
            });
        }
    }
    message
        .return_address()
        .map(|a| crate::thread::bare_id(a).to_lowercase())
        .filter(|a| a.contains('@'))
        .map(|address| Sender {
            address,
            name: None,
        })
}

/// Auto-replies and bounces, by the headers RFC 3834 and common practice define.
fn classify(message: &mail_parser::Message<'_>, from: Option<&Sender>) -> MailKind {
    let raw = |name: &str| {
        message
            .headers_raw()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_ascii_lowercase())
    };
    // A delivery status report (RFC 3464) is a bounce; a disposition notification (RFC 8098,
    // read receipts) is automatic.
    if let Some(ct) = message.content_type() {
        if ct.ctype().eq_ignore_ascii_case("multipart")
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("report"))
        {
            let report = ct
                .attribute("report-type")
                .unwrap_or("")
                .to_ascii_lowercase();
            return if report == "disposition-notification" {
                MailKind::AutoReply
            } else {
                MailKind::Bounce
            };
        }
    }
    let local = from
        .and_then(|f| f.address.split('@').next())
        .unwrap_or("")
        .to_ascii_lowercase();
    if local == "mailer-daemon" || local == "postmaster" {
        return MailKind::Bounce;
    }
    // A null reverse path (`Return-Path: <>`) is how MTAs send bounces.
    if raw("Return-Path").is_some_and(|v| v == "<>") {
        return MailKind::Bounce;
    }
    if raw("Auto-Submitted").is_some_and(|v| {
        let v = v.split(';').next().unwrap_or("").trim();
        !v.is_empty() && v != "no"
    }) {
        return MailKind::AutoReply;
    }
    if raw("X-Autoreply").is_some() || raw("X-Autorespond").is_some() {
        return MailKind::AutoReply;
    }
    if raw("Precedence").is_some_and(|v| matches!(v.as_str(), "bulk" | "junk" | "auto_reply")) {
        return MailKind::AutoReply;
    }
    // Microsoft Exchange marks its out-of-office answers this way.
    if raw("X-MS-Exchange-Generated-Message-Source").is_some()
        || raw("X-Auto-Response-Suppress").is_some_and(|v| v.contains("all"))
            && raw("X-MS-Exchange-Inbox-Rules-Loop").is_some()
    {
        return MailKind::AutoReply;
    }
    MailKind::Person
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(headers: &str, body: &str) -> Vec<u8> {
        format!("{headers}\r\n\r\n{body}").into_bytes()
    }

    const BASE: &str = "From: =?UTF-8?B?Tmd1eeG7hW4gVsSDbiBBbg==?= <An.Nguyen@Example.VN>\r\nTo: support@shop.vn\r\nMessage-ID: <c1@example.vn>\r\nDate: Mon, 1 Jul 2024 10:00:00 +0700";

    #[test]
    fn vietnamese_subject_and_sender_are_decoded() {
        let raw = mail(
            &format!("{BASE}\r\nSubject: =?UTF-8?Q?=C4=90=C6=A1n_h=C3=A0ng_c=E1=BB=A7a_t=C3=B4i?=\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit"),
            "Tôi chưa nhận được hàng.",
        );
        let m = parse_mail(&raw).unwrap();
        assert_eq!(m.subject.as_deref(), Some("Đơn hàng của tôi"));
        assert_eq!(m.text, "Tôi chưa nhận được hàng.");
        let from = m.from.unwrap();
        assert_eq!(from.address, "an.nguyen@example.vn");
        assert_eq!(from.name.as_deref(), Some("Nguyễn Văn An"));
        assert_eq!(m.message_id.as_deref(), Some("c1@example.vn"));
        assert_eq!(m.kind, MailKind::Person);
        assert_eq!(m.sent_at.unwrap().to_rfc3339(), "2024-07-01T03:00:00+00:00");
    }

    #[test]
    fn threading_headers_are_bare_and_ordered() {
        let raw = mail(
            &format!("{BASE}\r\nIn-Reply-To: <p@shop.vn>\r\nReferences: <root@example.vn>\r\n <p@shop.vn>\r\nSubject: Re: x"),
            "ok",
        );
        let m = parse_mail(&raw).unwrap();
        assert_eq!(m.in_reply_to.as_deref(), Some("p@shop.vn"));
        assert_eq!(m.references, ["root@example.vn", "p@shop.vn"]);
    }

    #[test]
    fn html_only_mail_becomes_text_and_plain_is_preferred() {
        let raw = mail(
            &format!("{BASE}\r\nContent-Type: text/html; charset=utf-8"),
            "<html><body><p>Xin ch&agrave;o <b>shop</b></p><p>Gi&aacute; bao nhi&ecirc;u?</p></body></html>",
        );
        let m = parse_mail(&raw).unwrap();
        assert!(m.text.contains("Xin chào shop"), "{:?}", m.text);
        assert!(m.text.contains("Giá bao nhiêu?"));
        assert!(!m.text.contains('<'));

        let raw = mail(
            &format!("{BASE}\r\nContent-Type: multipart/alternative; boundary=b"),
            "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain words\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>html words</p>\r\n--b--\r\n",
        );
        assert_eq!(parse_mail(&raw).unwrap().text, "plain words");
    }

    #[test]
    fn attachments_are_listed_with_decoded_names() {
        let raw = mail(
            &format!("{BASE}\r\nContent-Type: multipart/mixed; boundary=b"),
            "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nxem file\r\n--b\r\nContent-Type: application/pdf; name=\"=?UTF-8?Q?h=C3=B3a_=C4=91=C6=A1n.pdf?=\"\r\nContent-Disposition: attachment; filename=\"=?UTF-8?Q?h=C3=B3a_=C4=91=C6=A1n.pdf?=\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQ=\r\n--b--\r\n",
        );
        let m = parse_mail(&raw).unwrap();
        assert_eq!(m.text, "xem file");
        assert_eq!(m.attachments.len(), 1);
        let a = &m.attachments[0];
        assert_eq!(a.name.as_deref(), Some("hóa đơn.pdf"));
        assert_eq!(a.content_type, "application/pdf");
        assert_eq!(a.content, b"%PDF-1.4");
    }

    #[test]
    fn legacy_vietnamese_charset_is_decoded() {
        // "Cảm ơn" in windows-1258 uses combining tone marks: C a 0xD2(hook above) m space 0xF5(ơ) n
        let raw = mail(
            &format!("{BASE}\r\nContent-Type: text/plain; charset=windows-1258\r\nContent-Transfer-Encoding: 8bit"),
            "",
        );
        let mut raw = raw;
        raw.extend_from_slice(b"Ca\xd2m \xf5n");
        let m = parse_mail(&raw).unwrap();
        assert!(m.text.starts_with("Ca\u{309}m ơn"), "{:?}", m.text);
    }

    #[test]
    fn automatic_mail_is_recognized() {
        for (headers, kind) in [
            ("Auto-Submitted: auto-replied", MailKind::AutoReply),
            (
                "Auto-Submitted: auto-generated; type=ticket",
                MailKind::AutoReply,
            ),
            ("Auto-Submitted: no", MailKind::Person),
            ("X-Autoreply: yes", MailKind::AutoReply),
            ("Precedence: bulk", MailKind::AutoReply),
            ("Precedence: auto_reply", MailKind::AutoReply),
            ("Precedence: list", MailKind::Person),
            ("Return-Path: <>", MailKind::Bounce),
            (
                "Content-Type: multipart/report; report-type=delivery-status; boundary=x",
                MailKind::Bounce,
            ),
            (
                "Content-Type: multipart/report; report-type=disposition-notification; boundary=x",
                MailKind::AutoReply,
            ),
        ] {
            let raw = mail(&format!("{BASE}\r\n{headers}"), "--x--\r\n");
            assert_eq!(parse_mail(&raw).unwrap().kind, kind, "{headers}");
        }
        let raw = mail(
            "From: Mail Delivery System <MAILER-DAEMON@mx.example.vn>\r\nSubject: Undelivered",
            "x",
        );
        assert_eq!(parse_mail(&raw).unwrap().kind, MailKind::Bounce);
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pieces: [&[u8]; 12] = [
            b"From: ",
            b"Content-Type: multipart/mixed; boundary=",
            b"\r\n",
            b"--",
            b"=?UTF-8?B?",
            b"?=",
            b"Content-Transfer-Encoding: base64",
            b"<",
            b">",
            b"\xff\xfe\x00",
            b"message/rfc822",
            b"Subject: =?x?Q?=C4",
        ];
        for _ in 0..3000 {
            let mut raw = Vec::new();
            for _ in 0..(next() % 40) {
                if next() % 3 == 0 {
                    raw.push(u8::try_from(next() % 256).unwrap_or(0));
                } else {
                    raw.extend_from_slice(pieces[usize::try_from(next() % 12).unwrap_or(0)]);
                }
            }
            let _ = parse_mail(&raw);
        }
        assert_eq!(parse_mail(b""), Err(Unreadable));
    }
}
