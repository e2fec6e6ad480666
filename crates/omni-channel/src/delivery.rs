//! The delivery event, built one way wherever a reply's fate is learnt: the dispatcher (`sent`,
//! `failed`), a provider's status callback (`delivered`, `read`, …) and live chat's sockets.
//! Its id depends only on the outbound event and the status, so every reporter of the same
//! fact writes the same id and consumers keep one.

use chrono::{DateTime, Utc};
use omni_core::{CloudEvent, DeliveryStatus, DeliveryUpdate, EventId, EventType, TenantId};

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
