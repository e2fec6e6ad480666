//! Replies out through the Cloud API (`POST /<version>/<phone number id>/messages`, the
//! number's token as a bearer header), one call per part: the text in pieces of at most
//! 4,096 characters, then each attachment by link (image, video, audio, or a document named
//! after the file). A reply with a `template` is one template message instead: the only
//! kind WhatsApp delivers outside the 24-hour customer-service window.
//!
//! Every part carries `biz_opaque_callback_data` = `<outbound event id>.<conversation id>`,
//! which Meta echoes in the part's status webhooks, so `delivered`, `read` and `failed` are
//! filed under the reply. The window is Meta's to enforce: a free-form reply outside it is
//! accepted by the API and then fails with error 131047 in a status webhook, which becomes a
//! `failed` delivery event with reason `outside_window` (or the API refuses it at once with
//! the same code). The Cloud API has no idempotency key: each part's progress is recorded
//! before and after its call, and a call whose answer was lost is `outcome_unknown`, never
//! repeated.

use omni_channel::delivery::CallbackRef;
use omni_channel::{
    sender_account, AccountMap, ChannelSender, FailureReason, RateLimiter, SendError, SendFuture,
    SendProgress, SendReceipt, SendRequest, SenderAccounts,
};
use omni_core::{Attachment, OutboundMessage, Template, TenantId};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

use super::{NumberSettings, WhatsappTenant};
use crate::meta::GraphErrorBody;
use crate::wire::split_text;

/// The longest text message WhatsApp takes, in characters.
const MAX_TEXT_CHARS: usize = 4096;
/// The longest body of an interactive message (the CSAT survey's list).
const MAX_INTERACTIVE_BODY_CHARS: usize = 1024;

/// Where and how fast to call the Cloud API.
#[derive(Debug, Clone)]
pub struct WhatsappSendSettings {
    /// `https://graph.facebook.com` in production; a local stand-in in tests.
    pub graph_base_url: String,
    /// The Graph API version in the path, e.g. `v23.0`.
    pub api_version: String,
    /// Messages per second per business number.
    pub rate_per_number: f64,
    /// Timeout of one Cloud API call.
    pub timeout: Duration,
}

impl WhatsappSendSettings {
    /// `<graph_base_url>/<version>`: the root of every call and of media ids' URLs.
    pub fn api_root(&self) -> String {
        format!(
            "{}/{}",
            self.graph_base_url.trim_end_matches('/'),
            self.api_version
        )
    }
}

/// Number settings by (tenant, phone number id).
type Numbers = AccountMap<NumberSettings>;

fn numbers_of<'a>(
    tenants: impl IntoIterator<Item = (&'a TenantId, &'a WhatsappTenant)>,
) -> Numbers {
    tenants
        .into_iter()
        .flat_map(|(tenant, w)| {
            w.numbers.iter().map(move |(id, settings)| {
                ((tenant.as_str().to_owned(), id.clone()), settings.clone())
            })
        })
        .collect()
}

/// Sends replies, templates and read marks for every configured business number.
pub struct WhatsappSender {
    /// Replaced whole by [`WhatsappSender::set_tenants`], read once per reply.
    numbers: SenderAccounts<NumberSettings>,
    http: reqwest::Client,
    settings: WhatsappSendSettings,
    /// Per business number: WhatsApp's throughput limit is per number.
    limiter: RateLimiter,
}

impl WhatsappSender {
    /// A sender for these tenants' numbers.
    pub fn new<'a>(
        tenants: impl IntoIterator<Item = (&'a TenantId, &'a WhatsappTenant)>,
        settings: WhatsappSendSettings,
    ) -> Result<Self, reqwest::Error> {
        let http = omni_channel::provider::client(settings.timeout)?;
        let burst = settings.rate_per_number.ceil().clamp(1.0, 1000.0) as u32;
        Ok(Self {
            numbers: SenderAccounts::new(numbers_of(tenants)),
            http,
            limiter: RateLimiter::new(settings.rate_per_number, burst),
            settings,
        })
    }

    /// Replaces every tenant's numbers (a reloaded config); rate limits carry over.
    pub fn set_tenants<'a>(
        &self,
        tenants: impl IntoIterator<Item = (&'a TenantId, &'a WhatsappTenant)>,
    ) {
        self.numbers.replace(numbers_of(tenants));
    }

    async fn send_reply(
        &self,
        request: &SendRequest,
        progress: &mut SendProgress,
    ) -> Result<SendReceipt, SendError> {
        let message = &request.message;
        let number_id = &message.channel.account;
        let numbers = self.numbers.snapshot();
        let number = sender_account(&numbers, &message.tenant, number_id, || {
            format!("no access token for whatsapp number {number_id}")
        })?;
        let reference = CallbackRef {
            outbound: request.event_id,
            conversation: message.conversation_id,
        }
        .client_ref();
        let parts = match &message.template {
            Some(template) => vec![template_part(message, template)?],
            None => parts(message)?,
        };
        for (index, part) in parts.into_iter().enumerate().skip(progress.parts_sent) {
            let mut body = json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": message.recipient,
                "biz_opaque_callback_data": reference,
            });
            merge(&mut body, part);
            if let Some(quoted) = message.reply_to.as_ref().filter(|_| index == 0) {
                body["context"] = json!({"message_id": quoted});
            }
            // Durable before the call: a replica taking over never sends this part blindly.
            progress.begin_part(index).await?;
            let id = self.call(number_id, number, body).await?;
            progress.part_sent(index, id).await?;
        }
        Ok(SendReceipt {
            provider_message_id: progress.provider_message_ids.first().cloned(),
            segments: None,
        })
    }

    /// Marks the customer's message `message_id` read (blue ticks), with the typing indicator
    /// when `typing` (WhatsApp shows it until the reply or for 25 seconds; there is no
    /// "typing off"). Under the number's rate limit, never retried here.
    pub async fn mark_read(
        &self,
        tenant: &TenantId,
        number_id: &str,
        message_id: &str,
        typing: bool,
    ) -> Result<(), SendError> {
        let numbers = self.numbers.snapshot();
        let number = sender_account(&numbers, tenant, number_id, || {
            format!("no access token for whatsapp number {number_id}")
        })?;
        let mut body = json!({
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": message_id,
        });
        if typing {
            body["typing_indicator"] = json!({"type": "text"});
        }
        self.post(number_id, number, body).await.map(|_| ())
    }

    /// One message call: the `wamid` Meta assigned.
    async fn call(
        &self,
        number_id: &str,
        number: &NumberSettings,
        body: serde_json::Value,
    ) -> Result<String, SendError> {
        let (status, bytes) = self.post(number_id, number, body).await?;
        #[derive(Deserialize)]
        struct Sent {
            messages: Vec<SentMessage>,
        }
        #[derive(Deserialize)]
        struct SentMessage {
            id: String,
        }
        serde_json::from_slice::<Sent>(&bytes)
            .ok()
            .and_then(|s| s.messages.into_iter().next())
            .map(|m| m.id)
            .ok_or_else(|| {
                SendError::permanent(
                    FailureReason::OutcomeUnknown,
                    format!("Cloud API answered {status} without a message id (not resent)"),
                )
            })
    }

    /// One Cloud API call under the number's rate limit: the status and body of a success,
    /// or Meta's error, classified.
    async fn post(
        &self,
        number_id: &str,
        number: &NumberSettings,
        body: serde_json::Value,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), SendError> {
        self.limiter.acquire(number_id).await;
        let url = format!("{}/{number_id}/messages", self.settings.api_root());
        let answer = omni_channel::provider::call(
            self.http
                .post(url)
                .bearer_auth(number.access_token.expose())
                .json(&body),
        )
        .await?;
        if answer.status.is_success() {
            return Ok((answer.status, answer.body.to_vec()));
        }
        match serde_json::from_slice::<GraphErrorBody>(&answer.body) {
            Ok(body) => {
                let mut error = classify_code(body.error.code, body.error.describe());
                if answer.status.is_server_error() && !error.retryable {
                    error = SendError::retryable(FailureReason::ProviderUnavailable, error.detail);
                }
                Err(error.after(answer.retry_after))
            }
            Err(_) => Err(answer.status_error()),
        }
    }
}

impl ChannelSender for WhatsappSender {
    fn send<'a>(
        &'a self,
        request: &'a SendRequest,
        progress: &'a mut SendProgress,
    ) -> SendFuture<'a> {
        Box::pin(self.send_reply(request, progress))
    }

    fn sends_templates(&self) -> bool {
        true
    }
}

/// Copies `part`'s keys into `body`.
fn merge(body: &mut serde_json::Value, part: serde_json::Value) {
    if let (Some(body), serde_json::Value::Object(part)) = (body.as_object_mut(), part) {
        body.extend(part);
    }
}

/// The message objects of a free-form reply: its text in pieces, then one per attachment. A
/// CSAT survey that fits is one interactive list of the scores 1–5, whose answer comes back
/// as the chosen score's title.
fn parts(message: &OutboundMessage) -> Result<Vec<serde_json::Value>, SendError> {
    if message.csat_survey
        && message.attachments.is_empty()
        && !message.text.trim().is_empty()
        && message.text.chars().count() <= MAX_INTERACTIVE_BODY_CHARS
    {
        return Ok(vec![survey_list(&message.text)]);
    }
    let mut parts: Vec<serde_json::Value> = split_text(&message.text, MAX_TEXT_CHARS)
        .into_iter()
        .map(|t| json!({"type": "text", "text": {"body": t, "preview_url": false}}))
        .collect();
    parts.extend(message.attachments.iter().map(media_part));
    if parts.is_empty() {
        return Err(SendError::permanent(
            FailureReason::InvalidMessage,
            "a reply needs text, an attachment or a template",
        ));
    }
    Ok(parts)
}

/// An attachment as a media message by link.
fn media_part(a: &Attachment) -> serde_json::Value {
    let kind = match a.content_type.as_deref().and_then(|c| c.split('/').next()) {
        Some("image") => "image",
        Some("video") => "video",
        Some("audio") => "audio",
        _ => "document",
    };
    let mut media = json!({"link": a.url});
    if kind == "document" {
        if let Some(name) = &a.name {
            media["filename"] = json!(name);
        }
    }
    json!({"type": kind, kind: media})
}

/// The CSAT question with a list of the scores 5 down to 1.
fn survey_list(question: &str) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = (1..=5)
        .rev()
        .map(|n| json!({"id": format!("CSAT_{n}"), "title": n.to_string()}))
        .collect();
    json!({
        "type": "interactive",
        "interactive": {
            "type": "list",
            "body": {"text": question},
            "action": {"button": "1 – 5", "sections": [{"title": "CSAT", "rows": rows}]},
        },
    })
}

/// A template message. Parameters named `1`, `2`, … fill the body's positional `{{1}}`,
/// `{{2}}` in order; any other names are named parameters (`parameter_name`). WhatsApp needs
/// the template's language.
fn template_part(
    message: &OutboundMessage,
    template: &Template,
) -> Result<serde_json::Value, SendError> {
    if !message.attachments.is_empty() {
        return Err(SendError::permanent(
            FailureReason::InvalidMessage,
            "a WhatsApp template carries its own content, no attachments",
        ));
    }
    let language = template.language.as_deref().ok_or_else(|| {
        SendError::permanent(
            FailureReason::InvalidMessage,
            "a WhatsApp template needs its language (template.language, e.g. vi or en_US)",
        )
    })?;
    let positional = template
        .params
        .keys()
        .all(|k| k.parse::<u32>().is_ok_and(|n| n > 0));
    let parameters: Vec<serde_json::Value> = if positional {
        let mut numbered: Vec<(u32, &String)> = template
            .params
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v)))
            .collect();
        numbered.sort_by_key(|(n, _)| *n);
        numbered
            .into_iter()
            .map(|(_, v)| json!({"type": "text", "text": v}))
            .collect()
    } else {
        template
            .params
            .iter()
            .map(|(k, v)| json!({"type": "text", "parameter_name": k, "text": v}))
            .collect()
    };
    let mut body = json!({"name": template.name, "language": {"code": language}});
    if !parameters.is_empty() {
        body["components"] = json!([{"type": "body", "parameters": parameters}]);
    }
    Ok(json!({"type": "template", "template": body}))
}

/// Sorts a Cloud API error code (in an API answer or a `failed` status) into retryable and
/// permanent failures, per Meta's WhatsApp error code table.
pub(crate) fn classify_code(code: i64, detail: String) -> SendError {
    match code {
        // Throughput, spam and pair rate limits, and Graph's own.
        4 | 80007 | 130429 | 131048 | 131056 => {
            SendError::retryable(FailureReason::RateLimited, detail)
        }
        // Temporary errors and "something went wrong"/"service unavailable".
        1 | 2 | 131000 | 131016 => SendError::retryable(FailureReason::ProviderUnavailable, detail),
        // Re-engagement message: more than 24 hours since the customer last wrote.
        131047 => SendError::permanent(FailureReason::OutsideWindow, detail),
        // Undeliverable, marketing opt-out, healthy-ecosystem limit, experiment.
        131026 | 131049 | 131050 | 130472 => {
            SendError::permanent(FailureReason::UserUnavailable, detail)
        }
        // Not in the test number's allowed list; recipient cannot be the sender.
        131030 | 131021 => SendError::permanent(FailureReason::InvalidRecipient, detail),
        // Auth errors and expired tokens.
        0 | 190 => SendError::permanent(FailureReason::BadToken, detail),
        // Unsupported message type.
        131051 => SendError::permanent(FailureReason::Unsupported, detail),
        // Bad parameters, media that could not be fetched, template problems.
        100 | 131008 | 131009 | 131052 | 131053 | 132000 | 132001 | 132005 | 132007 | 132012
        | 132015 | 132016 | 135000 => SendError::permanent(FailureReason::InvalidMessage, detail),
        // Payment or account problems (131042, 131031, 368, 133010…).
        _ => SendError::permanent(FailureReason::Rejected, detail),
    }
}
