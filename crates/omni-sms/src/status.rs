//! Delivery states shared by every SMS provider in this crate.
//!
//! Each provider reports progress in its own words (Twilio `undelivered`, Vonage `expired`,
//! eSMS `SendStatus=4`); the parsers map them onto [`DeliveryState`] so the code that publishes
//! `omni.delivery.updated` events handles one vocabulary, and keep the provider's own word in
//! [`StatusReport::provider_status`] for logs and the event's detail.

use omni_core::DeliveryStatus;

/// Where an outbound SMS stands, in provider-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Still on its way inside the provider (queued, scheduled, awaiting approval, or a state
    /// that says nothing new). Nothing to publish.
    Pending,
    /// Handed to the carrier; no handset receipt yet.
    Sent,
    /// The carrier reports it reached the handset.
    Delivered,
    /// The recipient read it (only some channels report this).
    Read,
    /// It will not arrive: rejected, expired, undeliverable or canceled.
    Failed {
        /// The provider's error code, when it gave one (Twilio `ErrorCode`, Vonage
        /// `err-code`, eSMS `SendStatus`).
        code: Option<String>,
    },
}

impl DeliveryState {
    /// The status to publish on the delivery topic, or `None` for [`DeliveryState::Pending`]
    /// (an in-between state the event contract does not carry).
    pub fn to_core(&self) -> Option<DeliveryStatus> {
        match self {
            Self::Pending => None,
            Self::Sent => Some(DeliveryStatus::Sent),
            Self::Delivered => Some(DeliveryStatus::Delivered),
            Self::Read => Some(DeliveryStatus::Read),
            Self::Failed { .. } => Some(DeliveryStatus::Failed),
        }
    }

    /// The provider's error code of a failure, for the delivery event's `reason`.
    pub fn failure_code(&self) -> Option<&str> {
        match self {
            Self::Failed { code } => code.as_deref(),
            _ => None,
        }
    }
}

/// One status callback, whatever the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// The provider's id for the outbound message (Twilio `MessageSid`, Vonage `messageId`,
    /// eSMS `SMSID`): the key to find which outbound event this reports on.
    pub provider_message_id: String,
    /// What the status means.
    pub state: DeliveryState,
    /// The provider's own status word or number, unchanged, for logs and event detail.
    pub provider_status: String,
    /// The sender's own reference echoed back, where the provider supports one (Vonage
    /// `client-ref`, eSMS `RequestId`): our outbound event id when we set it on send.
    pub client_ref: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_publishes_nothing_and_others_map_to_the_event_contract() {
        assert_eq!(DeliveryState::Pending.to_core(), None);
        assert_eq!(DeliveryState::Sent.to_core(), Some(DeliveryStatus::Sent));
        assert_eq!(
            DeliveryState::Delivered.to_core(),
            Some(DeliveryStatus::Delivered)
        );
        assert_eq!(DeliveryState::Read.to_core(), Some(DeliveryStatus::Read));
        assert_eq!(
            DeliveryState::Failed { code: None }.to_core(),
            Some(DeliveryStatus::Failed)
        );
    }

    #[test]
    fn failure_code_is_only_reported_for_failures() {
        let failed = DeliveryState::Failed {
            code: Some("30008".into()),
        };
        assert_eq!(failed.failure_code(), Some("30008"));
        assert_eq!(DeliveryState::Delivered.failure_code(), None);
    }
}
