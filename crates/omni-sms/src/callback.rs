//! Status callbacks back to the outbound event they report on.
//!
//! A provider's status callback names its own message id, not ours. So when we send, we give
//! the provider what we need to file its report: the outbound event id, the conversation id
//! and the channel account.
//! - Twilio: in the query of the `StatusCallback` URL (`?ref=…&conv=…&account=…`), which
//!   Twilio signs as part of the URL it calls.
//! - eSMS: in the query of the `CallbackUrl` (with the tenant's `token`), and the outbound
//!   event id also as `RequestId`, which eSMS echoes.
//! - Vonage: `client-ref` = `<outbound event id>.<conversation id>` (covered by the signature
//!   of signed delivery receipts); the account is the receipt's `to` (the sender we used).
//!
//! A report in a pending state publishes nothing; the others become `omni.delivery.updated`
//! with a bounded `reason` for failures and the provider's own words in `detail`.

use chrono::{DateTime, Utc};
use omni_channel::{FailureReason, IngressError, Parsed, PreparedEvent};
use omni_core::{ChannelKind, ChannelRef, DeliveryUpdate, TenantId};

use crate::params::Params;
use crate::status::StatusReport;

pub use omni_channel::delivery::CallbackRef;

/// Reads `ref` and `conv` (written by [`CallbackRef::query`]) from a callback URL's query.
fn reference_from_query(params: &Params) -> Option<CallbackRef> {
    Some(CallbackRef {
        outbound: params.get("ref")?.parse().ok()?,
        conversation: params.get("conv")?.parse().ok()?,
    })
}

/// The provider whose words a failure code is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Twilio `ErrorCode`.
    Twilio,
    /// Vonage `err-code`.
    Vonage,
    /// eSMS `SendStatus`.
    Esms,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::Twilio => "twilio",
            Provider::Vonage => "vonage",
            Provider::Esms => "esms",
        }
    }
}

/// The bounded reason for a provider's failure code in a delivery report.
pub fn failure_reason(provider: Provider, code: Option<&str>) -> FailureReason {
    let code = code.map(str::trim).unwrap_or("");
    match (provider, code) {
        // 30003 unreachable handset, 30004 blocked, 21610 unsubscribed (STOP).
        (Provider::Twilio, "30003" | "30004" | "21610") => FailureReason::UserUnavailable,
        // 30005 unknown destination, 30006 landline or unreachable carrier, 21211/21614 bad number.
        (Provider::Twilio, "30005" | "30006" | "21211" | "21614") => {
            FailureReason::InvalidRecipient
        }
        // 2 absent subscriber (temporary), 4 call barred, 7 handset busy, 12 unreachable.
        (Provider::Vonage, "2" | "4" | "7" | "12") => FailureReason::UserUnavailable,
        // 3 absent subscriber (permanent), 9 illegal number, 11 unroutable.
        (Provider::Vonage, "3" | "9" | "11") => FailureReason::InvalidRecipient,
        // 10 illegal message.
        (Provider::Vonage, "10") => FailureReason::InvalidMessage,
        // 8 network error.
        (Provider::Vonage, "8") => FailureReason::ProviderUnavailable,
        _ => FailureReason::Rejected,
    }
}

/// The delivery event for `report`, or `None` when it is pending (nothing new to publish).
pub fn delivery_event(
    tenant: &TenantId,
    reference: &CallbackRef,
    account: &str,
    provider: Provider,
    report: &StatusReport,
    now: DateTime<Utc>,
) -> Result<Option<PreparedEvent>, IngressError> {
    let Some(status) = report.state.to_core() else {
        return Ok(None);
    };
    let failed = status == omni_core::DeliveryStatus::Failed;
    let code = report.state.failure_code();
    let detail = match code {
        Some(code) => format!(
            "{} status {}, error {code}",
            provider.name(),
            report.provider_status
        ),
        None => format!("{} status {}", provider.name(), report.provider_status),
    };
    let update = DeliveryUpdate {
        tenant: tenant.clone(),
        conversation_id: reference.conversation,
        outbound_event_id: reference.outbound,
        channel: ChannelRef::new(ChannelKind::Sms, account),
        status,
        provider_message_id: Some(report.provider_message_id.clone()),
        reason: failed.then(|| failure_reason(provider, code).as_str().to_owned()),
        detail: Some(crate::params::clip(&detail)),
        segments: None,
        occurred_at: now,
    };
    PreparedEvent::delivery(update, now).map(Some)
}

/// The delivery event of a callback whose reference came back in our callback URL's query
/// (`refs`): accepted without publishing when it carries none.
pub(crate) fn status_event(
    tenant: &TenantId,
    refs: &Params,
    account: Option<String>,
    provider: Provider,
    report: &StatusReport,
    now: DateTime<Utc>,
) -> Result<Parsed, IngressError> {
    let (Some(reference), Some(account)) = (reference_from_query(refs), account) else {
        return Ok(uncorrelated());
    };
    reference_event(tenant, &reference, &account, provider, report, now)
}

/// The delivery event for `report` as something to publish, or nothing when it is pending.
pub(crate) fn reference_event(
    tenant: &TenantId,
    reference: &CallbackRef,
    account: &str,
    provider: Provider,
    report: &StatusReport,
    now: DateTime<Utc>,
) -> Result<Parsed, IngressError> {
    Ok(
        delivery_event(tenant, reference, account, provider, report, now)?
            .map_or_else(pending, |e| vec![e].into()),
    )
}

/// A report on a message omnirouter did not send (or without our reference): accepted, not
/// published, so the provider does not retry it.
pub(crate) fn uncorrelated() -> Parsed {
    Parsed {
        events: vec![],
        ignored: vec!["uncorrelated_status"],
        ..Parsed::default()
    }
}

/// A pending state: nothing new to publish.
fn pending() -> Parsed {
    Parsed {
        events: vec![],
        ignored: vec!["pending_status"],
        ..Parsed::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omni_core::{ConversationId, EventId};

    #[test]
    fn references_round_trip_through_query_and_client_ref() {
        let tenant = TenantId::new("acme").unwrap();
        let channel = ChannelRef::new(ChannelKind::Sms, "+84281234567");
        let r = CallbackRef {
            outbound: EventId::new_random(),
            conversation: ConversationId::derive(&tenant, &channel, "+84901234567", None),
        };
        let q = r.query("+84281234567");
        assert!(q.contains("account=%2B84281234567"), "{q}");
        assert_eq!(
            reference_from_query(&Params::from_query(&q)),
            Some(r.clone())
        );
        assert_eq!(r.client_ref().len(), 73);
        assert_eq!(CallbackRef::from_client_ref(&r.client_ref()), Some(r));
        assert_eq!(CallbackRef::from_client_ref("nope"), None);
    }
}
