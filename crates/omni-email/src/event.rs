//! A parsed mail → the identity and the `omni.message.received` event it becomes. Pure.

use chrono::{DateTime, Utc};
use omni_channel::{IngressError, PreparedEvent};
use omni_core::{
    Attachment, AuthResult, ChannelRef, CloudEvent, Contact, ConversationId, Direction, EventId,
    EventType, Message, MessageFlag, MessageReceived, SenderAuthentication, TenantId,
};

use crate::parse::ParsedMail;
use crate::thread::thread_root;

/// Where a mail was found.
#[derive(Debug, Clone, Copy)]
pub struct Location<'a> {
    /// The folder.
    pub folder: &'a str,
    /// The folder's UIDVALIDITY.
    pub uidvalidity: u32,
    /// The mail's UID.
    pub uid: u32,
}

/// Who a mail is from and where it belongs, decided before anything is stored or published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The dedupe key: the Message-ID, or `imap:<folder>:<uidvalidity>:<uid>` without one.
    pub provider_id: String,
    /// `EventId::from_provider(tenant, channel, "message", provider_id)`.
    pub event_id: EventId,
    /// The thread root (see [`crate::thread`]).
    pub root: String,
    /// `ConversationId::derive(tenant, channel, sender, Some(root))`.
    pub conversation_id: ConversationId,
    /// The sender's address (the contact id).
    pub contact: String,
    /// What a trusted receiving server found about the sender.
    pub authentication: Option<SenderAuthentication>,
    /// Why the mail was treated with suspicion.
    pub flags: Vec<MessageFlag>,
}

impl Identity {
    /// The same mail in the thread rooted at `root` (the thread index knew the candidate root
    /// as a later mail of an older thread, e.g. one of our replies).
    pub fn rooted_at(mut self, tenant: &TenantId, channel: &ChannelRef, root: String) -> Self {
        self.conversation_id = ConversationId::derive(tenant, channel, &self.contact, Some(&root));
        self.root = root;
        self
    }

    /// Whether the trusted server found the mail failing DMARC: its `From` is not believed.
    pub fn fails_dmarc(&self) -> bool {
        self.authentication
            .as_ref()
            .is_some_and(|a| a.dmarc == Some(AuthResult::Fail))
    }

    /// The same mail under an id of its own: its Message-ID was used before by another
    /// sender's mail, so it is neither a repeat of that mail nor a member of its thread.
    pub fn reusing_message_id(mut self, tenant: &TenantId, channel: &ChannelRef) -> Self {
        self.provider_id = format!("{}#from:{}", self.provider_id, self.contact);
        self.event_id = EventId::from_provider(tenant, channel, "message", &self.provider_id);
        self.flags.push(MessageFlag::MessageIdReused);
        let own = self.provider_id.clone();
        self.rooted_at(tenant, channel, own)
    }
}

/// The identity of a mail, or `None` when it has no sender address to answer. The
/// `Authentication-Results` of the servers in `trusted_authserv_ids` are believed: a mail they
/// found failing DMARC starts a conversation of its own, whatever thread it names.
pub fn identify(
    tenant: &TenantId,
    channel: &ChannelRef,
    mail: &ParsedMail,
    at: Location<'_>,
    trusted_authserv_ids: &[String],
) -> Option<Identity> {
    let contact = mail.from.as_ref()?.address.clone();
    let provider_id = mail
        .message_id
        .clone()
        .unwrap_or_else(|| format!("imap:{}:{}:{}", at.folder, at.uidvalidity, at.uid));
    let authentication =
        crate::auth::sender_authentication(&mail.authentication_results, trusted_authserv_ids);
    let mut flags = Vec::new();
    let mut root =
        thread_root(&mail.references, mail.in_reply_to.as_deref(), &provider_id).to_owned();
    if root != provider_id
        && authentication
            .as_ref()
            .is_some_and(|a| a.dmarc == Some(AuthResult::Fail))
    {
        // A forged `From` naming a customer's thread must not land in that conversation.
        root = provider_id.clone();
        flags.push(MessageFlag::ThreadRefused);
    }
    Some(Identity {
        event_id: EventId::from_provider(tenant, channel, "message", &provider_id),
        conversation_id: ConversationId::derive(tenant, channel, &contact, Some(&root)),
        provider_id,
        root,
        contact,
        authentication,
        flags,
    })
}

/// The `omni.message.received` event of a customer mail.
pub fn message_event(
    tenant: &TenantId,
    channel: &ChannelRef,
    mail: &ParsedMail,
    identity: &Identity,
    attachments: Vec<Attachment>,
    now: DateTime<Utc>,
) -> Result<PreparedEvent, IngressError> {
    let contact = Contact {
        email: Some(identity.contact.clone()),
        name: mail.from.as_ref().and_then(|f| f.name.clone()),
        ..Contact::new(identity.contact.clone())
    };
    let data = MessageReceived {
        tenant: tenant.clone(),
        conversation_id: identity.conversation_id,
        channel: channel.clone(),
        contact,
        message: Message {
            // The mail's own Message-ID, even when it is published under an id of its own.
            id: mail
                .message_id
                .clone()
                .unwrap_or_else(|| identity.provider_id.clone()),
            direction: Direction::Inbound,
            text: mail.text.clone(),
            subject: mail.subject.clone(),
            attachments,
            reply_to: mail.in_reply_to.clone(),
            payload: None,
            sent_at: mail.sent_at,
        },
        received_at: now,
        authentication: identity.authentication.clone(),
        flags: identity.flags.clone(),
    };
    PreparedEvent::from_event(&CloudEvent::new(
        identity.event_id,
        EventType::MessageReceived,
        tenant.clone(),
        channel,
        identity.conversation_id,
        now,
        data,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_mail;
    use omni_core::ChannelKind;

    fn at(uid: u32) -> Location<'static> {
        Location {
            folder: "INBOX",
            uidvalidity: 7,
            uid,
        }
    }

    #[test]
    fn a_reply_joins_its_thread_and_a_new_mail_does_not() {
        let tenant = TenantId::new("acme").unwrap();
        let channel = ChannelRef::new(ChannelKind::Email, "support@shop.vn");
        let first =
            parse_mail(b"From: a@x.vn\r\nMessage-ID: <m1@x.vn>\r\nSubject: hi\r\n\r\nhello")
                .unwrap();
        let reply = parse_mail(b"From: A <A@X.vn>\r\nMessage-ID: <m3@x.vn>\r\nIn-Reply-To: <r1@shop.vn>\r\nReferences: <m1@x.vn> <r1@shop.vn>\r\n\r\nthanks").unwrap();
        let other = parse_mail(b"From: a@x.vn\r\nMessage-ID: <m4@x.vn>\r\nSubject: new\r\n\r\nnew")
            .unwrap();
        let i1 = identify(&tenant, &channel, &first, at(1), &[]).unwrap();
        let i2 = identify(&tenant, &channel, &reply, at(2), &[]).unwrap();
        let i3 = identify(&tenant, &channel, &other, at(3), &[]).unwrap();
        assert_eq!(i1.conversation_id, i2.conversation_id);
        assert_ne!(i1.conversation_id, i3.conversation_id);
        assert_eq!(i2.root, "m1@x.vn");
        assert_eq!(
            i1.event_id,
            EventId::from_provider(&tenant, &channel, "message", "m1@x.vn")
        );
        let event = message_event(&tenant, &channel, &reply, &i2, vec![], Utc::now()).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
        assert_eq!(json["type"], "omni.message.received");
        assert_eq!(json["data"]["contact"]["id"], "a@x.vn");
        assert_eq!(json["data"]["contact"]["name"], "A");
        assert_eq!(json["data"]["message"]["reply_to"], "r1@shop.vn");
        assert_eq!(json["subject"], i2.conversation_id.to_string());
    }

    #[test]
    fn mail_without_message_id_is_named_by_its_uid_and_without_sender_is_refused() {
        let tenant = TenantId::new("acme").unwrap();
        let channel = ChannelRef::new(ChannelKind::Email, "support@shop.vn");
        let m = parse_mail(b"From: a@x.vn\r\nSubject: x\r\n\r\nbody").unwrap();
        let i = identify(&tenant, &channel, &m, at(42), &[]).unwrap();
        assert_eq!(i.provider_id, "imap:INBOX:7:42");
        assert_eq!(i.root, "imap:INBOX:7:42");
        let m = parse_mail(b"Subject: x\r\n\r\nbody").unwrap();
        assert!(identify(&tenant, &channel, &m, at(43), &[]).is_none());
    }

    /// A reply naming a customer's thread: with a trusted server's DMARC pass it joins the
    /// thread; failing DMARC it starts its own conversation, flagged, and its results are on
    /// the event; the same header from an untrusted server changes nothing.
    #[test]
    fn a_mail_failing_dmarc_cannot_join_the_thread_it_names() {
        let tenant = TenantId::new("acme").unwrap();
        let channel = ChannelRef::new(ChannelKind::Email, "support@shop.vn");
        let trusted = vec!["mx.shop.vn".to_owned()];
        let reply = |dmarc: &str, server: &str| {
            parse_mail(format!("Authentication-Results: {server}; spf=fail smtp.mailfrom=x.vn; dkim=none; dmarc={dmarc} header.from=x.vn\r\nFrom: a@x.vn\r\nMessage-ID: <m9@evil>\r\nReferences: <m1@x.vn>\r\n\r\nsend the refund to my new account").as_bytes()).unwrap()
        };
        let first = parse_mail(b"From: a@x.vn\r\nMessage-ID: <m1@x.vn>\r\n\r\nhello").unwrap();
        let thread = identify(&tenant, &channel, &first, at(1), &trusted).unwrap();

        let passing = identify(
            &tenant,
            &channel,
            &reply("pass", "mx.shop.vn"),
            at(2),
            &trusted,
        )
        .unwrap();
        assert_eq!(passing.conversation_id, thread.conversation_id);
        assert!(passing.flags.is_empty());

        let forged_mail = reply("fail", "mx.shop.vn");
        let forged = identify(&tenant, &channel, &forged_mail, at(3), &trusted).unwrap();
        assert_ne!(forged.conversation_id, thread.conversation_id);
        assert_eq!(forged.root, "m9@evil");
        assert_eq!(forged.flags, [MessageFlag::ThreadRefused]);
        assert!(forged.fails_dmarc());
        let event =
            message_event(&tenant, &channel, &forged_mail, &forged, vec![], Utc::now()).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
        assert_eq!(json["data"]["flags"], serde_json::json!(["thread_refused"]));
        assert_eq!(
            json["data"]["authentication"],
            serde_json::json!({"authserv_id": "mx.shop.vn", "spf": "fail", "dkim": "none", "dmarc": "fail"})
        );

        let untrusted = identify(
            &tenant,
            &channel,
            &reply("fail", "mx.evil"),
            at(4),
            &trusted,
        )
        .unwrap();
        assert_eq!(untrusted.conversation_id, thread.conversation_id);
        assert_eq!(untrusted.authentication, None);
    }

    #[test]
    fn a_reused_message_id_gets_an_id_and_a_conversation_of_its_own() {
        let tenant = TenantId::new("acme").unwrap();
        let channel = ChannelRef::new(ChannelKind::Email, "support@shop.vn");
        let mail = parse_mail(b"From: mallory@evil.example\r\nMessage-ID: <m1@x.vn>\r\nReferences: <m0@x.vn>\r\n\r\nhi").unwrap();
        let plain = identify(&tenant, &channel, &mail, at(5), &[]).unwrap();
        let own = plain.clone().reusing_message_id(&tenant, &channel);
        assert_ne!(own.event_id, plain.event_id);
        assert_ne!(own.conversation_id, plain.conversation_id);
        assert_eq!(own.flags, [MessageFlag::MessageIdReused]);
        let event = message_event(&tenant, &channel, &mail, &own, vec![], Utc::now()).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
        assert_eq!(
            json["data"]["message"]["id"], "m1@x.vn",
            "the mail's own id is kept"
        );
        assert_eq!(json["id"], own.event_id.to_string());
    }
}
