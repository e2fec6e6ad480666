//! A reply's fate: counted, built into its delivery event and published on the delivery
//! topic before the outbound record is committed.

use chrono::Utc;
use omni_bus::HandlerOutcome;
use omni_core::{
    ChannelRef, CloudEvent, ConversationId, DeliveryStatus, DeliveryUpdate, EventType,
};
use std::time::Duration;

use super::{Dispatcher, FailureReason, SendError, SendReceipt, SendRequest};

impl Dispatcher {
    /// Counts the outcome and builds the delivery event.
    pub(super) fn record(
        &self,
        request: &SendRequest,
        result: &Result<SendReceipt, SendError>,
    ) -> CloudEvent<DeliveryUpdate> {
        let message = &request.message;
        let kind = message.channel.kind.as_str();
        let (status, receipt, error) = match result {
            Ok(receipt) => (DeliveryStatus::Sent, Some(receipt), None),
            Err(e) => (DeliveryStatus::Failed, None, Some(e)),
        };
        let status_label = match status {
            DeliveryStatus::Sent => "sent",
            _ => "failed",
        };
        self.metrics
            .deliveries
            .with_label_values(&[kind, status_label])
            .inc();
        if let Some(e) = error {
            self.metrics
                .failures
                .with_label_values(&[kind, e.reason.as_str()])
                .inc();
            tracing::warn!(channel = kind, tenant = %message.tenant, event_id = %request.event_id,
                reason = %e.reason, detail = %e.detail, "reply not delivered");
        }
        let now = Utc::now();
        let update = DeliveryUpdate {
            tenant: message.tenant.clone(),
            conversation_id: message.conversation_id,
            outbound_event_id: request.event_id,
            channel: message.channel.clone(),
            status,
            provider_message_id: receipt.and_then(|r| r.provider_message_id.clone()),
            reason: error.map(|e| e.reason.as_str().to_owned()),
            detail: error.map(|e| e.detail.clone()),
            segments: receipt.and_then(|r| r.segments),
            occurred_at: now,
        };
        crate::delivery::delivery_event(update, now)
    }

    /// Publishes the delivery event, retrying until Kafka takes it: the reply went out (or
    /// definitely failed), so the outbound record must not be committed before its fate is.
    pub(super) async fn publish(&self, update: CloudEvent<DeliveryUpdate>) -> HandlerOutcome {
        let payload = match serde_json::to_vec(&update) {
            Ok(p) => p,
            Err(e) => return HandlerOutcome::Skip(format!("cannot serialize delivery: {e}")),
        };
        let key = update.data.tenant.as_str().as_bytes();
        let mut wait = Duration::from_millis(200);
        loop {
            match self.sink.publish(&self.delivery_topic, key, &payload).await {
                Ok(()) => return HandlerOutcome::Done,
                Err(e) => {
                    tracing::warn!(error = %e, event_id = %update.data.outbound_event_id,
                        "cannot publish delivery result yet, retrying");
                }
            }
            let mut stop = self.stop.clone();
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => {
                    // The reply will be redelivered to the next owner and sent again.
                    return HandlerOutcome::Retry("stopping before the delivery was published".into());
                }
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }

    /// A reply that cannot be read (its `data` is not an `omni.message.send`): when it still
    /// names its conversation and channel, its fate is published as `failed` with reason
    /// `invalid_message`, so the agent's tool learns of it; then the record is skipped, which
    /// copies it to the dead-letter topic.
    pub(super) async fn refuse(
        &self,
        event: &CloudEvent<serde_json::Value>,
        reason: String,
    ) -> HandlerOutcome {
        #[derive(serde::Deserialize)]
        struct Named {
            conversation_id: ConversationId,
            channel: ChannelRef,
        }
        if event.event_type != EventType::MessageSend {
            return HandlerOutcome::Skip(reason);
        }
        let Ok(named) = <Named as serde::Deserialize>::deserialize(&event.data) else {
            return HandlerOutcome::Skip(reason);
        };
        let invalid = FailureReason::InvalidMessage.as_str();
        let kind = named.channel.kind.as_str();
        self.metrics
            .deliveries
            .with_label_values(&[kind, "failed"])
            .inc();
        self.metrics
            .failures
            .with_label_values(&[kind, invalid])
            .inc();
        let now = Utc::now();
        let update = DeliveryUpdate {
            tenant: event.tenant.clone(),
            conversation_id: named.conversation_id,
            outbound_event_id: event.id,
            channel: named.channel,
            status: DeliveryStatus::Failed,
            provider_message_id: None,
            reason: Some(invalid.to_owned()),
            detail: Some(reason.clone()),
            segments: None,
            occurred_at: now,
        };
        match self
            .publish(crate::delivery::delivery_event(update, now))
            .await
        {
            HandlerOutcome::Done => HandlerOutcome::Skip(reason),
            other => other,
        }
    }
}
