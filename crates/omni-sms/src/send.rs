//! Replies out by SMS, through the provider the tenant's sending number is mapped to.
//!
//! For every reply: find the number's route (`channel.account` = our number, short code or
//! brandname), normalize the recipient to E.164 (`0901234567` → `+84901234567`), lay the
//! text out after NFC ([`crate::layout`]: GSM-7 or UCS-2 and the segment count, reported on
//! the `sent` delivery event), wait for the number's rate limit, and make one provider call:
//! - Twilio: `POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json`, basic auth, form
//!   `To`, `From` (or `MessagingServiceSid`), `Body`, `StatusCallback`, `MediaUrl` per
//!   attachment (MMS); `201` with `sid`.
//! - Vonage: `POST {base}/sms/json`, form `api_key`, `api_secret`, `from`, `to`, `text`,
//!   `type=unicode` for UCS-2, `client-ref`, `callback`; every `messages[].status` must be `0`.
//! - eSMS.vn: `POST {base}/MainService.svc/json/SendMultipleMessage_V4_post_json/` with the
//!   JSON of [`crate::esms::build_send_body`] (`RequestId` = the outbound event id, so a retry
//!   is refused by eSMS instead of sent twice); `CodeResult` `100` is accepted. Only eSMS calls
//!   whose answer was lost are repeated; for Twilio and Vonage such a call is
//!   `outcome_unknown` (no idempotency key), and the call is recorded as at the provider
//!   before it is made ([`omni_channel::SendProgress::begin_part`]).
//!
//! Failures are classified retryable (HTTP 429 and 5xx, timeouts, Vonage throttling) or
//! permanent with a bounded reason; Vonage and eSMS take attachments nowhere, so a reply with
//! attachments through them fails as `unsupported`.

use std::sync::RwLock;

use omni_channel::{
    ChannelSender, FailureReason, RateLimiter, SendError, SendFuture, SendProgress, SendReceipt,
    SendRequest,
};
use omni_core::TenantId;
use serde::Deserialize;

use crate::callback::CallbackRef;
use crate::encoding::{layout, SmsLayout};
use crate::phone::{Address, PhoneNumber};
use crate::settings::{NumberRoute, SmsApiSettings, SmsTenant};
use crate::webhook::SmsTenants;
use crate::{esms, params::clip};

/// Sends SMS replies for every configured tenant.
pub struct SmsSender {
    /// Tenants by id; replaced whole by [`SmsSender::set_tenants`], read once per reply.
    tenants: RwLock<SmsTenants>,
    http: reqwest::Client,
    settings: SmsApiSettings,
    limiter: RateLimiter,
}

/// Twilio's error body.
#[derive(Deserialize)]
struct TwilioError {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct TwilioCreated {
    sid: String,
}

#[derive(Deserialize)]
struct VonageReply {
    #[serde(default)]
    messages: Vec<VonageMessage>,
}

#[derive(Deserialize)]
struct VonageMessage {
    #[serde(default)]
    status: String,
    #[serde(rename = "message-id", default)]
    message_id: Option<String>,
    #[serde(rename = "error-text", default)]
    error_text: Option<String>,
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
            tenants: RwLock::new(crate::webhook::tenants(tenants)),
            http,
            settings,
            limiter,
        })
    }

    /// Replaces every tenant (a reloaded config): replies taken from now on use them; a reply
    /// being sent finishes with the tenant it started with. Rate limits carry over.
    pub fn set_tenants(&self, tenants: SmsTenants) {
        *self.tenants.write().unwrap_or_else(|p| p.into_inner()) = tenants;
    }

    async fn send_reply(
        &self,
        request: &SendRequest,
        progress: &mut SendProgress,
    ) -> Result<SendReceipt, SendError> {
        let message = &request.message;
        let account = &message.channel.account;
        let not_configured = || {
            SendError::permanent(
                FailureReason::AccountNotConfigured,
                format!(
                    "SMS number {account} is not configured for tenant {}",
                    message.tenant
                ),
            )
        };
        let tenants = self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (tenant, sms) = tenants
            .get(message.tenant.as_str())
            .ok_or_else(not_configured)?;
        let route = sms.numbers.get(account).ok_or_else(not_configured)?;
        let to = match Address::parse(&message.recipient, &sms.country_code) {
            Ok(Address::E164(number)) => number,
            Ok(other) => {
                return Err(SendError::permanent(
                    FailureReason::InvalidRecipient,
                    format!("{other} is not a phone number that can receive SMS"),
                ))
            }
            Err(e) => {
                return Err(SendError::permanent(
                    FailureReason::InvalidRecipient,
                    format!("recipient: {e}"),
                ))
            }
        };
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
            tenant,
            sms,
            account,
            to: &to,
            text: &measured,
            reference: &reference,
        };
        let result = match route {
            NumberRoute::Twilio {
                messaging_service_sid,
            } => {
                self.twilio(&call, messaging_service_sid.as_deref(), &media)
                    .await
            }
            NumberRoute::Vonage => self.vonage(&call).await,
            NumberRoute::Esms { sms_type } => self.esms(&call, *sms_type).await,
        };
        let esms = matches!(route, NumberRoute::Esms { .. });
        let id = match result {
            Ok(id) => id,
            // eSMS drops a repeated RequestId: a call of unknown fate is safe to repeat.
            Err(e) if esms && e.reason == FailureReason::OutcomeUnknown => {
                progress.uncertain = true;
                return Err(SendError::retryable(
                    FailureReason::ProviderUnavailable,
                    format!("{} (repeated with the same RequestId)", e.detail),
                ));
            }
            // A refusal after such a call may be eSMS refusing the repeat of a message it took.
            Err(e) if esms && progress.uncertain && !e.retryable => {
                return Err(SendError::permanent(
                    FailureReason::OutcomeUnknown,
                    format!(
                        "refused after an earlier call of unknown fate (eSMS refuses a repeated RequestId): {}",
                        e.detail
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        progress
            .part_sent(0, id.clone().unwrap_or_default())
            .await?;
        Ok(SendReceipt {
            provider_message_id: id,
            segments: segments(&measured),
        })
    }

    async fn twilio(
        &self,
        call: &Call<'_>,
        messaging_service_sid: Option<&str>,
        media: &[&str],
    ) -> Result<Option<String>, SendError> {
        let twilio = call.sms.twilio.as_ref().ok_or_else(|| {
            SendError::permanent(FailureReason::AccountNotConfigured, "no Twilio account")
        })?;
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.settings.twilio_base_url.trim_end_matches('/'),
            twilio.account_sid
        );
        let status_callback = format!(
            "{}/v1/webhooks/sms/twilio/{}/status?{}",
            call.sms.public_base_url.trim_end_matches('/'),
            call.tenant,
            call.reference.query(call.account)
        );
        let mut form: Vec<(&str, &str)> = vec![("To", call.to.as_str())];
        match messaging_service_sid {
            Some(sid) => form.push(("MessagingServiceSid", sid)),
            None => form.push(("From", call.account)),
        }
        if !call.text.text.is_empty() {
            form.push(("Body", &call.text.text));
        }
        for url in media {
            form.push(("MediaUrl", url));
        }
        form.push(("StatusCallback", &status_callback));
        let answer = omni_channel::provider::call(
            self.http
                .post(url)
                .basic_auth(&twilio.account_sid, Some(twilio.auth_token.expose()))
                .form(&form),
        )
        .await?;
        let (status, retry_after, bytes) = (answer.status, answer.retry_after, answer.body);
        if status.is_success() {
            return Ok(serde_json::from_slice::<TwilioCreated>(&bytes)
                .ok()
                .map(|c| c.sid));
        }
        let error = serde_json::from_slice::<TwilioError>(&bytes).ok();
        Err(match error {
            Some(TwilioError {
                code: Some(code),
                message,
            }) if !status.is_server_error() && status.as_u16() != 429 => {
                classify_twilio(code, &message).after(retry_after)
            }
            _ => SendError::from_status(status, retry_after),
        })
    }

    async fn vonage(&self, call: &Call<'_>) -> Result<Option<String>, SendError> {
        let vonage = call.sms.vonage.as_ref().ok_or_else(|| {
            SendError::permanent(FailureReason::AccountNotConfigured, "no Vonage account")
        })?;
        let url = format!(
            "{}/sms/json",
            self.settings.vonage_base_url.trim_end_matches('/')
        );
        let mut dlr = format!(
            "{}/v1/webhooks/sms/vonage/{}/dlr",
            call.sms.public_base_url.trim_end_matches('/'),
            call.tenant
        );
        if vonage.signature.is_none() {
            if let Some(token) = &call.sms.callback_token {
                dlr.push_str("?token=");
                dlr.extend(form_urlencoded::byte_serialize(token.expose().as_bytes()));
            }
        }
        // Vonage wants numbers as international digits without '+'.
        let from = call.account.strip_prefix('+').unwrap_or(call.account);
        let client_ref = call.reference.client_ref();
        let mut form: Vec<(&str, &str)> = vec![
            ("api_key", vonage.api_key.as_str()),
            ("api_secret", vonage.api_secret.expose()),
            ("from", from),
            ("to", call.to.digits()),
            ("text", &call.text.text),
        ];
        if call.text.encoding.is_unicode() {
            form.push(("type", "unicode"));
        }
        form.push(("client-ref", &client_ref));
        form.push(("callback", &dlr));
        let answer = omni_channel::provider::call(self.http.post(url).form(&form)).await?;
        let (status, retry_after, bytes) = (answer.status, answer.retry_after, answer.body);
        if !status.is_success() {
            return Err(SendError::from_status(status, retry_after));
        }
        let reply: VonageReply = serde_json::from_slice(&bytes).map_err(|_| {
            SendError::permanent(FailureReason::Rejected, "Vonage answered without messages")
        })?;
        if let Some(failed) = reply.messages.iter().find(|m| m.status.trim() != "0") {
            return Err(classify_vonage(
                failed.status.trim(),
                failed.error_text.as_deref().unwrap_or(""),
            ));
        }
        let first = reply.messages.first().ok_or_else(|| {
            SendError::permanent(FailureReason::Rejected, "Vonage answered without messages")
        })?;
        Ok(first.message_id.clone())
    }

    async fn esms(
        &self,
        call: &Call<'_>,
        sms_type: esms::SmsType,
    ) -> Result<Option<String>, SendError> {
        let account = call.sms.esms.as_ref().ok_or_else(|| {
            SendError::permanent(FailureReason::AccountNotConfigured, "no eSMS account")
        })?;
        let callback = call.sms.callback_token.as_ref().map(|token| {
            let token: String =
                form_urlencoded::byte_serialize(token.expose().as_bytes()).collect();
            format!(
                "{}/v1/webhooks/sms/esms/{}/callback?token={token}&{}",
                call.sms.public_base_url.trim_end_matches('/'),
                call.tenant,
                call.reference.query(call.account)
            )
        });
        let request_id = call.reference.outbound.to_string();
        let body = esms::build_send_body(
            &account.credentials,
            &esms::SendRequest {
                to: call.to,
                text: &call.text.text,
                sms_type,
                brandname: Some(call.account),
                sandbox: account.sandbox,
                request_id: &request_id,
                callback_url: callback.as_deref(),
            },
        )
        .map_err(|e| match e {
            esms::EsmsError::NotVietnamese => {
                SendError::permanent(FailureReason::InvalidRecipient, e.to_string())
            }
            other => SendError::permanent(FailureReason::InvalidMessage, other.to_string()),
        })?;
        let url = format!(
            "{}/MainService.svc/json/SendMultipleMessage_V4_post_json/",
            self.settings.esms_base_url.trim_end_matches('/')
        );
        let answer = omni_channel::provider::call(self.http.post(url).json(&body)).await?;
        let (status, retry_after, bytes) = (answer.status, answer.retry_after, answer.body);
        if !status.is_success() {
            return Err(SendError::from_status(status, retry_after));
        }
        match esms::parse_send_reply(&bytes) {
            Ok(accepted) => Ok(accepted.sms_id),
            Err(esms::EsmsError::Rejected { code, message }) => {
                Err(classify_esms(&code, message.as_deref().unwrap_or("")))
            }
            Err(e) => Err(SendError::permanent(FailureReason::Rejected, e.to_string())),
        }
    }
}

/// What every provider call needs.
struct Call<'a> {
    tenant: &'a TenantId,
    sms: &'a SmsTenant,
    account: &'a str,
    to: &'a PhoneNumber,
    text: &'a SmsLayout,
    reference: &'a CallbackRef,
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
        let tenants = self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        tenants
            .get(request.message.tenant.as_str())
            .and_then(|(_, sms)| sms.numbers.get(&request.message.channel.account))
            .is_some_and(|route| matches!(route, NumberRoute::Esms { .. }))
    }
}

fn segments(layout: &SmsLayout) -> Option<u32> {
    u32::try_from(layout.segments).ok()
}

/// Sorts a Twilio REST error code (4xx answers) into a bounded reason.
pub fn classify_twilio(code: i64, message: &str) -> SendError {
    let detail = clip(&format!("Twilio error {code}: {message}"));
    match code {
        // Too many requests / queue overflow.
        20429 | 14107 => SendError::retryable(FailureReason::RateLimited, detail),
        // Authentication failed.
        20003 | 20005 => SendError::permanent(FailureReason::BadToken, detail),
        // Not a valid phone number / not a mobile number.
        21211 | 21614 | 21612 | 21408 => {
            SendError::permanent(FailureReason::InvalidRecipient, detail)
        }
        // The recipient replied STOP.
        21610 => SendError::permanent(FailureReason::UserUnavailable, detail),
        // Body too long / empty.
        21617 | 21602 => SendError::permanent(FailureReason::InvalidMessage, detail),
        _ => SendError::permanent(FailureReason::Rejected, detail),
    }
}

/// Sorts a Vonage `messages[].status` into a bounded reason.
pub fn classify_vonage(status: &str, error_text: &str) -> SendError {
    let detail = clip(&format!("Vonage status {status}: {error_text}"));
    match status {
        // Throttled; internal error; too many existing binds.
        "1" => SendError::retryable(FailureReason::RateLimited, detail),
        "5" | "10" => SendError::retryable(FailureReason::ProviderUnavailable, detail),
        // Missing / invalid parameters, invalid message, message too long.
        "2" | "3" | "6" | "12" => SendError::permanent(FailureReason::InvalidMessage, detail),
        // Invalid credentials, account barred, HTTP not enabled, bad signature.
        "4" | "8" | "11" | "14" | "32" => SendError::permanent(FailureReason::BadToken, detail),
        // Number barred.
        "7" => SendError::permanent(FailureReason::UserUnavailable, detail),
        // Partner quota violation (balance).
        "9" => SendError::permanent(FailureReason::QuotaExceeded, detail),
        // Invalid network code, non-whitelisted destination, number de-activated.
        "22" | "29" | "33" => SendError::permanent(FailureReason::InvalidRecipient, detail),
        _ => SendError::permanent(FailureReason::Rejected, detail),
    }
}

/// Sorts an eSMS `CodeResult` into a bounded reason.
pub fn classify_esms(code: &str, message: &str) -> SendError {
    let detail = clip(&format!("eSMS CodeResult {code}: {message}"));
    match code {
        // Unknown error on eSMS's side.
        "99" => SendError::retryable(FailureReason::ProviderUnavailable, detail),
        // Wrong ApiKey / SecretKey; account locked.
        "101" | "102" => SendError::permanent(FailureReason::BadToken, detail),
        // Balance too low; daily limit reached.
        "103" | "124" => SendError::permanent(FailureReason::QuotaExceeded, detail),
        // Brandname not registered; content not matching a registered template.
        "104" | "118" | "119" => SendError::permanent(FailureReason::InvalidMessage, detail),
        _ => SendError::permanent(FailureReason::Rejected, detail),
    }
}
