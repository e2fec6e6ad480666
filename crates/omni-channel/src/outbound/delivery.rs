//! A reply's fate: counted, built into its delivery event and published on the delivery
//! topic before the outbound record is committed.

use chrono::Utc;
use omni_bus::HandlerOutcome;
use omni_core::{CloudEvent, DeliveryStatus, DeliveryUpdate};
use std::time::Duration;

use super::{Dispatcher, SendError, SendReceipt, SendRequest};

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
    pub(super) async fn publish(
        &self,
        request: &SendRequest,
        update: CloudEvent<DeliveryUpdate>,
    ) -> HandlerOutcome {
        let payload = match serde_json::to_vec(&update) {
            Ok(p) => p,
            Err(e) => return HandlerOutcome::Skip(format!("cannot serialize delivery: {e}")),
        };
        let key = request.message.tenant.as_str().as_bytes();
        let mut wait = Duration::from_millis(200);
        loop {
            match self.sink.publish(&self.delivery_topic, key, &payload).await {
                Ok(()) => return HandlerOutcome::Done,
                Err(e) => {
                    tracing::warn!(error = %e, event_id = %request.event_id,
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
}
