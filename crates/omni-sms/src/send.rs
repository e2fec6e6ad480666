//! Replies out by SMS, through the provider the tenant's sending number is mapped to.
//!
//! For every reply: find the number's route (`channel.account` = our number, short code or
//! brandname), normalize the recipient to E.164 (`0901234567` → `+84901234567`), lay the
//! text out after NFC ([`crate::layout`]: GSM-7 or UCS-2 and the segment count, reported on
//! the `sent` delivery event), wait for the number's rate limit, record the call as at the
//! provider ([`omni_channel::SendProgress::begin_part`]) and make one provider call, written
//! in the provider's folder (`twilio/send.rs`, `vonage/send.rs`, `esms/send.rs`).
//!
//! Failures are classified retryable (HTTP 429 and 5xx, timeouts, Vonage throttling) or
//! permanent with a bounded reason. A call whose answer was lost is `outcome_unknown` and never
//! repeated, except through eSMS, which refuses a repeated `RequestId`. Vonage and eSMS take
//! attachments nowhere, so a reply with attachments through them fails as `unsupported`.

use omni_channel::{
    ChannelSender, FailureReason, RateLimiter, SendError, SendFuture, SendProgress, SendReceipt,
    SendRequest, SenderAccounts,
};
use omni_core::{OutboundMessage, TenantId};

use crate::callback::CallbackRef;
use crate::encoding::{layout, SmsLayout};
use crate::phone::{Address, PhoneNumber};
use crate::settings::{NumberRoute, SmsApiSettings, SmsTenant};
use crate::webhook::SmsTenants;
use crate::{esms, twilio, vonage};

/// Sends SMS replies for every configured tenant.
pub struct SmsSender {
    /// Tenants by id; replaced whole by [`SmsSender::set_tenants`], read once per reply.
    tenants: SenderAccounts<(TenantId, SmsTenant), String>,
    http: reqwest::Client,
    settings: SmsApiSettings,
    limiter: RateLimiter,
}

/// What every provider call needs.
pub(crate) struct Call<'a> {
    pub(crate) http: &'a reqwest::Client,
    pub(crate) api: &'a SmsApiSettings,
    pub(crate) tenant: &'a TenantId,
    pub(crate) sms: &'a SmsTenant,
    /// Our number, short code or brandname it goes out from.
    pub(crate) account: &'a str,
    pub(crate) to: &'a PhoneNumber,
    pub(crate) text: &'a SmsLayout,
    /// What the provider's status callbacks carry back.
    pub(crate) reference: &'a CallbackRef,
}

impl SmsSender {
    /// A sender for these tenants.
    pub fn new(
        tenants: impl IntoIterator<Item = (TenantId, SmsTenant)>,
        settings: SmsApiSettings,
    ) -> Result<Self, reqwest::Error> {
        let http = omni_channel::provider::client(settings.timeout)?;
        let limiter = RateLimiter::new(settings.rate_per_number, 5);
        Ok(Self {
            tenants: SenderAccounts::new(crate::webhook::tenants(tenants)),
            http,
            settings,
            limiter,
        })
    }

    /// Replaces every tenant (a reloaded config): replies taken from now on use them; a reply
    /// being sent finishes with the tenant it started with. Rate limits carry over.
    pub fn set_tenants(&self, tenants: SmsTenants) {
        self.tenants.replace(tenants);
    }

    /// The tenants as they are now, for one reply.
    fn current_tenants(&self) -> SmsTenants {
        self.tenants.snapshot()
    }

    async fn send_reply(
        &self,
        request: &SendRequest,
        progress: &mut SendProgress,
    ) -> Result<SendReceipt, SendError> {
        let message = &request.message;
        let account = &message.channel.account;
        let tenants = self.current_tenants();
        let (tenant, sms) = tenants
            .get(message.tenant.as_str())
            .ok_or_else(|| not_configured(message))?;
        let route = sms
            .numbers
            .get(account)
            .ok_or_else(|| not_configured(message))?;
        let to = recipient(message, sms)?;
        let measured = layout(&message.text);
        let media: Vec<&str> = message.attachments.iter().map(|a| a.url.as_str()).collect();
        if measured.text.trim().is_empty() && media.is_empty() {
            return Err(SendError::permanent(
                FailureReason::InvalidMessage,
                "an SMS needs text",
            ));
        }
        if !media.is_empty() && !matches!(route, NumberRoute::Twilio { .. }) {
            return Err(SendError::permanent(
                FailureReason::Unsupported,
                "attachments can only be sent as MMS through Twilio",
            ));
        }
        if progress.parts_sent > 0 {
            // Already accepted by the provider in an earlier attempt: never send twice.
            return Ok(SendReceipt {
                provider_message_id: progress.provider_message_ids.first().cloned(),
                segments: segments(&measured),
            });
        }
        let reference = CallbackRef {
            outbound: request.event_id,
            conversation: message.conversation_id,
        };
        self.limiter.acquire(account).await;
        // Durable before the call: a replica taking over never sends it blindly.
        progress.begin_part(0).await?;
        let call = Call {
            http: &self.http,
            api: &self.settings,
            tenant,
            sms,
            account,
            to: &to,
            text: &measured,
            reference: &reference,
        };
        let id = match route {
            NumberRoute::Twilio {
                messaging_service_sid,
            } => twilio::send_message(&call, messaging_service_sid.as_deref(), &media).await?,
            NumberRoute::Vonage => vonage::send_message(&call).await?,
            NumberRoute::Esms { sms_type } => {
                esms::classify_outcome(esms::send_message(&call, *sms_type).await, progress)?
            }
        };
        progress
            .part_sent(0, id.clone().unwrap_or_default())
            .await?;
        Ok(SendReceipt {
            provider_message_id: id,
            segments: segments(&measured),
        })
    }
}

/// The refusal of a reply from a number the tenant does not have.
fn not_configured(message: &OutboundMessage) -> SendError {
    SendError::permanent(
        FailureReason::AccountNotConfigured,
        format!(
            "SMS number {} is not configured for tenant {}",
            message.channel.account, message.tenant
        ),
    )
}

/// The recipient in E.164: SMS goes to phone numbers only.
fn recipient(message: &OutboundMessage, sms: &SmsTenant) -> Result<PhoneNumber, SendError> {
    match Address::parse(&message.recipient, &sms.country_code) {
        Ok(Address::E164(number)) => Ok(number),
        Ok(other) => Err(SendError::permanent(
            FailureReason::InvalidRecipient,
            format!("{other} is not a phone number that can receive SMS"),
        )),
        Err(e) => Err(SendError::permanent(
            FailureReason::InvalidRecipient,
            format!("recipient: {e}"),
        )),
    }
}

impl ChannelSender for SmsSender {
    fn send<'a>(
        &'a self,
        request: &'a SendRequest,
        progress: &'a mut SendProgress,
    ) -> SendFuture<'a> {
        Box::pin(self.send_reply(request, progress))
    }

    /// eSMS drops a request whose `RequestId` (the outbound event id: one SMS per reply, split
    /// into segments by the gateway) it already has; Twilio and Vonage have no such key.
    fn deduplicates(&self, request: &SendRequest) -> bool {
        self.current_tenants()
            .get(request.message.tenant.as_str())
            .and_then(|(_, sms)| sms.numbers.get(&request.message.channel.account))
            .is_some_and(|route| matches!(route, NumberRoute::Esms { .. }))
    }
}

fn segments(layout: &SmsLayout) -> Option<u32> {
    u32::try_from(layout.segments).ok()
}
