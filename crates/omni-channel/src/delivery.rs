//! The delivery event, built one way wherever a reply's fate is learnt: the dispatcher (`sent`,
//! `failed`), a provider's status callback (`delivered`, `read`, …) and live chat's sockets.
//! Its id depends only on the outbound event and the status, so every reporter of the same
//! fact writes the same id and consumers keep one.

use chrono::{DateTime, Utc};
use omni_core::{
    CloudEvent, ConversationId, DeliveryStatus, DeliveryUpdate, EventId, EventType, TenantId,
};

/// The id of the delivery event reporting `status` for the outbound event `outbound`: the one
/// the dispatcher and every status callback use, so the same fact always has the same id.
pub fn delivery_event_id(tenant: &TenantId, outbound: EventId, status: DeliveryStatus) -> EventId {
    let label = match status {
        DeliveryStatus::Sent => "sent",
        DeliveryStatus::Failed => "failed",
        DeliveryStatus::Delivered => "delivered",
        DeliveryStatus::Read => "read",
    };
    EventId::derived(tenant, &[&outbound.to_string(), label])
}

/// The `omni.delivery.updated` CloudEvent carrying `update`, written at `now`, in the reply's
/// conversation, with the id [`delivery_event_id`] gives the fact.
pub fn delivery_event(update: DeliveryUpdate, now: DateTime<Utc>) -> CloudEvent<DeliveryUpdate> {
    let id = delivery_event_id(&update.tenant, update.outbound_event_id, update.status);
    let channel = update.channel.clone();
    let tenant = update.tenant.clone();
    let conversation = update.conversation_id;
    CloudEvent::new(
        id,
        EventType::DeliveryUpdated,
        tenant,
        &channel,
        conversation,
        now,
        update,
    )
}

/// What a provider's status report must carry back to be filed under the right outbound
/// event: its reports name the provider's message id, not ours, so we hand the provider our
/// ids when we send (a callback URL's query, Vonage's `client-ref`, WhatsApp's
/// `biz_opaque_callback_data`) and read them back from the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackRef {
    /// The `omni.message.send` event's id.
    pub outbound: EventId,
    /// Its conversation.
    pub conversation: ConversationId,
}

impl CallbackRef {
    /// `ref=…&conv=…&account=…`, form-encoded, for a callback URL's query.
    pub fn query(&self, account: &str) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("ref", &self.outbound.to_string())
            .append_pair("conv", &self.conversation.to_string())
            .append_pair("account", account)
            .finish()
    }

    /// `<outbound event id>.<conversation id>` (73 characters), for an opaque field the
    /// provider echoes.
    pub fn client_ref(&self) -> String {
        format!("{}.{}", self.outbound, self.conversation)
    }

    /// Reads a [`CallbackRef::client_ref`] back.
    pub fn from_client_ref(client_ref: &str) -> Option<Self> {
        let (outbound, conversation) = client_ref.trim().split_once('.')?;
        Some(Self {
            outbound: outbound.parse().ok()?,
            conversation: conversation.parse().ok()?,
        })
    }
}
