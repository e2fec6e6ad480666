//! The `omni.message.received` every provider's inbound webhook publishes: the sender
//! normalized into the contact, our number into the channel account.

use chrono::{DateTime, Utc};
use omni_channel::{IngressError, PreparedEvent};
use omni_core::{
    Attachment, ChannelKind, ChannelRef, Contact, Direction, EventType, Message, TenantId,
};

use crate::phone::Address;
use crate::settings::SmsTenant;

/// An inbound SMS as every provider's fields fill it: an SMS has no subject, reply-to or
/// payload.
pub(crate) fn inbound_message(
    id: String,
    text: String,
    attachments: Vec<Attachment>,
    sent_at: Option<DateTime<Utc>>,
) -> Message {
    Message {
        id,
        direction: Direction::Inbound,
        text,
        subject: None,
        attachments,
        reply_to: None,
        payload: None,
        sent_at,
    }
}

/// Normalizes an address for a contact id or channel account, naming the field when it is
/// not one.
pub(crate) fn address(sms: &SmsTenant, field: &str, raw: &str) -> Result<Address, IngressError> {
    Address::parse(raw, &sms.country_code).map_err(|e| IngressError::InvalidField {
        field: field.to_owned(),
        reason: e.to_string(),
    })
}

/// The contact for a sender address: E.164 numbers also fill `contact.phone`.
fn contact(sender: &Address) -> Contact {
    let mut contact = Contact::new(sender.as_str());
    contact.phone = sender.phone_number().map(|p| p.as_str().to_owned());
    contact
}

/// The event of `message` sent by `from` to our number `to`.
pub(crate) fn message_event(
    tenant: &TenantId,
    sms: &SmsTenant,
    from: &str,
    to: &str,
    message: Message,
    now: DateTime<Utc>,
) -> Result<PreparedEvent, IngressError> {
    let sender = address(sms, "from", from)?;
    let ours = address(sms, "to", to)?;
    PreparedEvent::message(
        tenant,
        ChannelRef::new(ChannelKind::Sms, ours.as_str()),
        contact(&sender),
        EventType::MessageReceived,
        message,
        now,
    )
}
