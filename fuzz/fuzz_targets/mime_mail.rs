//! A customer's raw mail through mail-parser and our reduction (`parse_mail`: ids, sender,
//! RFC 2047 subject, plain or HTML-reduced text, quote trimming, bounds, auto-reply
//! detection) and into its event (`identify`, `message_event`) and the subject of our reply
//! (`reply_subject`); and the text functions on their own.
//!
//! Invariants: text and subject within their bounds, at most `MAX_ATTACHMENTS` attachments, a
//! lowercase sender address, trimming never adds text, normalizing twice changes nothing, a
//! reply's subject never stacks `Re:`, and the event reads back as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omni_channel::Parsed;
use omni_core::{ChannelKind, ChannelRef};
use omni_email::event::{identify, message_event, Location};
use omni_email::parse::{parse_mail, MAX_ATTACHMENTS};
use omni_email::text;
use omni_email::thread::reply_subject;
use omni_fuzz::{check_parsed, now, tenant};

fuzz_target!(|raw: &[u8]| {
    if let Ok(mail) = parse_mail(raw) {
        assert!(mail.text.len() <= text::MAX_TEXT_BYTES);
        assert!(mail
            .subject
            .as_ref()
            .is_none_or(|s| s.len() <= text::MAX_SUBJECT_BYTES));
        assert!(mail.attachments.len() <= MAX_ATTACHMENTS);
        if let Some(from) = &mail.from {
            assert_eq!(
                from.address,
                from.address.to_lowercase(),
                "addresses are lowercased"
            );
        }
        let subject = reply_subject(mail.subject.as_deref());
        assert!(subject.starts_with("Re:"));
        assert_eq!(
            reply_subject(Some(&subject)),
            subject,
            "a reply's reply keeps one Re:"
        );
        let tenant = tenant();
        let channel = ChannelRef::new(ChannelKind::Email, "support@shop.example");
        let at = Location {
            folder: "INBOX",
            uidvalidity: 7,
            uid: 42,
        };
        let trusted = ["mx.shop.example".to_owned()];
        if let Some(identity) = identify(&tenant, &channel, &mail, at, &trusted) {
            let event = message_event(&tenant, &channel, &mail, &identity, vec![], now())
                .expect("a parsed mail makes an event");
            check_parsed(&Parsed::from(vec![event]));
        }
    }
    let body = String::from_utf8_lossy(raw);
    // Authentication-Results values as any sender may write them.
    if let Some(auth) = omni_email::auth::parse_header(&body) {
        assert!(!auth.authserv_id.is_empty() && !auth.authserv_id.contains('='));
    }
    let normalized = text::normalize(&body);
    assert_eq!(
        text::normalize(&normalized),
        normalized,
        "normalize is idempotent"
    );
    let trimmed = text::trim_quoted(&normalized);
    assert!(
        trimmed.len() <= normalized.len(),
        "trimming never adds text"
    );
    let cut = text::truncate(&body, 100, text::TRUNCATED_MARK);
    assert!(cut.len() <= 100, "truncate keeps its bound");
});
