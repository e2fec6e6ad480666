//! Replies out through the Zalo OA v3 customer-service message API.
//!
//! Text goes to `POST /v3.0/oa/message/cs` with the quoted message id when the reply quotes
//! one (Zalo's 2,000-character limit splits longer text). An image is fetched from its URL,
//! uploaded to `/v2.0/oa/upload/image` and sent as a media template by `attachment_id`; any
//! other file is uploaded to `/v2.0/oa/upload/file` and sent by `token`. Zalo answers HTTP 200
//! even for failures: a non-zero `error` is a failure, classified by its code.
//!
//! A reply with a `template` is a Zalo Notification Service (ZNS) message instead: `POST
//! /message/template` on the ZNS API with the same OA access token, to the template's phone
//! number, with the outbound event id as `tracking_id`. ZNS reaches a customer outside the
//! OA's interaction window; its error codes have their own table.

use omni_channel::{
    sender_account, AccountMap, ChannelSender, FailureReason, RateLimiter, SendError, SendFuture,
    SendProgress, SendReceipt, SendRequest, SenderAccounts,
};
use omni_core::{Attachment, Secret, Template};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::token::{OaToken, TokenError};
use crate::wire::{split_text, IdText};

/// Zalo's longest text message, in characters.
const MAX_TEXT_CHARS: usize = 2000;
/// Zalo's upload limits: images 1 MB, files 5 MB.
const MAX_IMAGE_BYTES: u64 = 1024 * 1024;
const MAX_FILE_BYTES: u64 = 5 * 1024 * 1024;

/// Where and how fast to call the OA API.
#[derive(Debug, Clone)]
pub struct ZaloSendSettings {
    /// `https://openapi.zalo.me` in production; a local stand-in in tests.
    pub openapi_base_url: String,
    /// `https://business.openapi.zalo.me` (ZNS) in production; a local stand-in in tests.
    pub zns_base_url: String,
    /// Calls per second per OA.
    pub rate_per_oa: f64,
    /// Timeout of one API call (and of fetching an attachment to upload).
    pub timeout: Duration,
}

/// Token keepers by (tenant, OA id).
pub type Keepers = AccountMap<Arc<OaToken>>;

/// Sends Zalo replies for every configured OA.
pub struct ZaloSender {
    /// Token keepers by (tenant, OA id); replaced whole by [`ZaloSender::set_tokens`], read
    /// once per reply.
    tokens: SenderAccounts<Arc<OaToken>>,
    http: reqwest::Client,
    settings: ZaloSendSettings,
    limiter: RateLimiter,
    /// Reads attachments to upload: our own store directly, anything else safely.
    media: Option<Arc<omni_media::Media>>,
}

/// One part of a reply: text, or an uploaded attachment.
enum Part<'a> {
    Text(String),
    Image(&'a Attachment),
    File(&'a Attachment),
}

/// Zalo's answer envelope.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    error: i64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    data: Option<AnswerData>,
}

#[derive(Deserialize)]
struct AnswerData {
    #[serde(default)]
    message_id: Option<IdText>,
    /// ZNS names the sent message's id `msg_id`.
    #[serde(default)]
    msg_id: Option<IdText>,
    #[serde(default)]
    attachment_id: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

impl ZaloSender {
    /// A sender using these token keepers, by (tenant, OA id).
    pub fn new(
        tokens: HashMap<(String, String), Arc<OaToken>>,
        settings: ZaloSendSettings,
    ) -> Result<Self, reqwest::Error> {
        let http = omni_channel::provider::client(settings.timeout)?;
        let limiter = RateLimiter::new(settings.rate_per_oa, 10);
        Ok(Self {
            tokens: SenderAccounts::new(tokens),
            http,
            settings,
            limiter,
            media: None,
        })
    }

    /// Reads attachments through `media` (the daemon's store and fetch policy) instead of
    /// the strictest default.
    pub fn with_media(mut self, media: Arc<omni_media::Media>) -> Self {
        self.media = Some(media);
        self
    }

    /// Replaces the token keepers (a reloaded config): replies taken from now on use them; a
    /// reply being sent finishes with the keeper it started with. Rate limits carry over.
    pub fn set_tokens(&self, tokens: Keepers) {
        self.tokens.replace(tokens);
    }

    /// The token keepers in force, by (tenant, OA id).
    pub fn tokens(&self) -> Arc<Keepers> {
        self.tokens.snapshot()
    }

    async fn send_reply(
        &self,
        request: &SendRequest,
        progress: &mut SendProgress,
    ) -> Result<SendReceipt, SendError> {
        let message = &request.message;
        let oa = &message.channel.account;
        let token = sender_account(&self.tokens(), &message.tenant, oa, || {
            format!("OA {oa} is not configured for tenant {}", message.tenant)
        })?
        .clone();
        if let Some(template) = &message.template {
            return self.send_zns(request, template, &token, progress).await;
        }
        let mut parts: Vec<Part<'_>> = split_text(&message.text, MAX_TEXT_CHARS)
            .into_iter()
            .map(Part::Text)
            .collect();
        for a in &message.attachments {
            let is_image = a
                .content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("image/"));
            parts.push(if is_image {
                Part::Image(a)
            } else {
                Part::File(a)
            });
        }
        if parts.is_empty() {
            return Err(SendError::permanent(
                FailureReason::InvalidMessage,
                "a reply needs text or an attachment",
            ));
        }
        for (index, part) in parts.iter().enumerate().skip(progress.parts_sent) {
            let access = token.access_token().await.map_err(token_failure)?;
            let quote = (index == 0)
                .then_some(message.reply_to.as_deref())
                .flatten();
            let body = match part {
                Part::Text(text) => {
                    let mut m = json!({"text": text});
                    if let Some(q) = quote {
                        m["quote_message_id"] = json!(q);
                    }
                    m
                }
                Part::Image(a) => {
                    let id = self.upload(&access, oa, a, "image").await?;
                    json!({"attachment": {"type": "template", "payload": {
                        "template_type": "media",
                        "elements": [{"media_type": "image", "attachment_id": id}],
                    }}})
                }
                Part::File(a) => {
                    let file_token = self.upload(&access, oa, a, "file").await?;
                    json!({"attachment": {"type": "file", "payload": {"token": file_token}}})
                }
            };
            let body = json!({"recipient": {"user_id": message.recipient}, "message": body});
            // Durable before the call (the upload above is safe to repeat, this call is not).
            progress.begin_part(index).await?;
            let answer = self
                .call(
                    &access,
                    oa,
                    self.openapi("/v3.0/oa/message/cs"),
                    Body::Json(body),
                )
                .await;
            let data = match answer {
                Ok(data) => data,
                Err(e) => {
                    if e.reason == FailureReason::BadToken && e.retryable {
                        token.invalidate().await;
                    }
                    return Err(e);
                }
            };
            let id = data
                .and_then(|d| d.message_id)
                .map(|m| m.0)
                .unwrap_or_default();
            progress.part_sent(index, id).await?;
        }
        Ok(receipt(progress))
    }

    /// Sends a ZNS template message (see the module docs): one part, the template.
    async fn send_zns(
        &self,
        request: &SendRequest,
        template: &Template,
        token: &OaToken,
        progress: &mut SendProgress,
    ) -> Result<SendReceipt, SendError> {
        let message = &request.message;
        if !message.attachments.is_empty() {
            return Err(SendError::permanent(
                FailureReason::InvalidMessage,
                "a ZNS message carries its template only, no attachments",
            ));
        }
        let phone = template.phone.as_deref().ok_or_else(|| {
            SendError::permanent(
                FailureReason::InvalidRecipient,
                "a ZNS template is sent to a phone number: set template.phone",
            )
        })?;
        let body = json!({
            "phone": zns_phone(phone)?,
            "template_id": template.name,
            "template_data": template.params,
            "tracking_id": request.event_id.to_string(),
        });
        if progress.parts_sent > 0 {
            return Ok(receipt(progress));
        }
        let access = token.access_token().await.map_err(token_failure)?;
        progress.begin_part(0).await?;
        let url = format!(
            "{}/message/template",
            self.settings.zns_base_url.trim_end_matches('/')
        );
        let data = match self
            .call_with(
                &access,
                &message.channel.account,
                url,
                Body::Json(body),
                classify_zns,
            )
            .await
        {
            Ok(data) => data,
            Err(e) => {
                if e.reason == FailureReason::BadToken && e.retryable {
                    token.invalidate().await;
                }
                return Err(e);
            }
        };
        let id = data.and_then(|d| d.msg_id).map(|m| m.0).unwrap_or_default();
        progress.part_sent(0, id).await?;
        Ok(receipt(progress))
    }

    /// The OA API's URL for `path`.
    fn openapi(&self, path: &str) -> String {
        format!(
            "{}{path}",
            self.settings.openapi_base_url.trim_end_matches('/')
        )
    }

    /// Fetches an attachment and uploads it; the `attachment_id` (images) or `token` (files).
    async fn upload(
        &self,
        access: &Secret,
        oa: &str,
        attachment: &Attachment,
        kind: &str,
    ) -> Result<String, SendError> {
        let limit = if kind == "image" {
            MAX_IMAGE_BYTES
        } else {
            MAX_FILE_BYTES
        };
        let bytes =
            omni_channel::provider::fetch_attachment(self.media.as_deref(), &attachment.url, limit)
                .await?;
        let name = attachment
            .name
            .clone()
            .or_else(|| {
                attachment
                    .url
                    .rsplit('/')
                    .next()
                    .map(|s| s.split('?').next().unwrap_or(s).to_owned())
            })
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| kind.to_owned());
        let mut file = reqwest::multipart::Part::bytes(bytes).file_name(name);
        if let Some(ct) = attachment
            .content_type
            .as_deref()
            .filter(|c| !c.contains('*'))
        {
            file = file.mime_str(ct).map_err(|e| {
                SendError::permanent(
                    FailureReason::InvalidMessage,
                    format!("bad content type: {e}"),
                )
            })?;
        }
        let form = reqwest::multipart::Form::new().part("file", file);
        let url = self.openapi(&format!("/v2.0/oa/upload/{kind}"));
        // An upload is not seen by the customer: one whose answer was lost is safe to repeat.
        let data = self
            .call(access, oa, url, Body::Form(form))
            .await
            .map_err(|e| match e.reason {
                FailureReason::OutcomeUnknown => {
                    SendError::retryable(FailureReason::ProviderUnavailable, e.detail)
                }
                _ => e,
            })?;
        data.and_then(|d| {
            if kind == "image" {
                d.attachment_id
            } else {
                d.token
            }
        })
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            SendError::permanent(
                FailureReason::Rejected,
                format!("Zalo upload of a {kind} answered without its id"),
            )
        })
    }

    /// One OA API call with the `access_token` header; the answer's `data` when `error` is 0.
    async fn call(
        &self,
        access: &Secret,
        oa: &str,
        url: String,
        body: Body,
    ) -> Result<Option<AnswerData>, SendError> {
        self.call_with(access, oa, url, body, classify).await
    }

    /// [`ZaloSender::call`] with the error table of the API called (OA or ZNS).
    async fn call_with(
        &self,
        access: &Secret,
        oa: &str,
        url: String,
        body: Body,
        classify: fn(i64, &str) -> SendError,
    ) -> Result<Option<AnswerData>, SendError> {
        self.limiter.acquire(oa).await;
        let request = self.http.post(url).header("access_token", access.expose());
        let request = match body {
            Body::Json(v) => request.json(&v),
            Body::Form(f) => request.multipart(f),
        };
        let answer = omni_channel::provider::call(request).await?;
        match serde_json::from_slice::<Answer>(&answer.body) {
            Ok(zalo) if answer.status.is_success() && zalo.error == 0 => Ok(zalo.data),
            Ok(zalo) if zalo.error != 0 => Err(classify(zalo.error, &zalo.message)),
            _ => Err(answer.status_error()),
        }
    }
}

enum Body {
    Json(serde_json::Value),
    Form(reqwest::multipart::Form),
}

impl ChannelSender for ZaloSender {
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

/// The receipt of a reply whose parts are all sent: the first part's message id.
fn receipt(progress: &SendProgress) -> SendReceipt {
    SendReceipt {
        provider_message_id: progress
            .provider_message_ids
            .first()
            .filter(|id| !id.is_empty())
            .cloned(),
        segments: None,
    }
}

/// A phone number as ZNS takes it: digits with the country code, `84…` for Vietnam (`+84…`,
/// `84…` and the national `0…` are accepted; spaces, dots, dashes and brackets are dropped).
pub(crate) fn zns_phone(raw: &str) -> Result<String, SendError> {
    let digits: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '.' | '-' | '(' | ')'))
        .collect();
    let digits = digits.strip_prefix('+').unwrap_or(&digits);
    let international = match digits.strip_prefix('0') {
        Some(national) => format!("84{national}"),
        None => digits.to_owned(),
    };
    if (9..=15).contains(&international.len()) && international.bytes().all(|b| b.is_ascii_digit())
    {
        Ok(international)
    } else {
        Err(SendError::permanent(
            FailureReason::InvalidRecipient,
            format!("not a phone number ZNS can send to: {raw:?}"),
        ))
    }
}

/// Sorts a ZNS error code into retryable and permanent failures, by Zalo's ZNS error table
/// (zalo.cloud, "Cách xử lý mã lỗi"); codes not listed are permanent `rejected` with Zalo's
/// message in the detail.
pub(crate) fn classify_zns(code: i64, message: &str) -> SendError {
    let detail = format!("ZNS error {code}: {message}");
    match code {
        // Unknown error: "try again later".
        -100 => SendError::retryable(FailureReason::ProviderUnavailable, detail),
        // Access token invalid or expired: refresh and try again.
        -124 => SendError::retryable(FailureReason::BadToken, detail),
        // Phone number invalid.
        -108 => SendError::permanent(FailureReason::InvalidRecipient, detail),
        // The user is inactive, refuses ZNS or this kind of ZNS, has no Zalo account, cannot
        // receive ZNS, or runs a Zalo version too old.
        -110 | -114 | -118 | -119 | -139 | -141 => {
            SendError::permanent(FailureReason::UserUnavailable, detail)
        }
        // The template: its id, data, buttons or text invalid, not approved, or not allowed
        // for this OA or app.
        -109 | -111 | -112 | -113 | -116 | -117 | -131 | -132 => {
            SendError::permanent(FailureReason::InvalidMessage, detail)
        }
        // Out of quota (the ZNS balance, the OA's daily quota).
        -115 | -144 => SendError::permanent(FailureReason::QuotaExceeded, detail),
        // Outside the hours this kind of ZNS may be sent.
        -133 => SendError::permanent(FailureReason::OutsideWindow, detail),
        // The app or OA behind it: invalid, not activated, not linked, no permission.
        -105..=-101 | -120 | -125 => {
            SendError::permanent(FailureReason::AccountNotConfigured, detail)
        }
        _ => SendError::permanent(FailureReason::Rejected, detail),
    }
}

/// A token that could not be had, as a send failure.
fn token_failure(e: TokenError) -> SendError {
    if e.is_transient() {
        SendError::retryable(FailureReason::BadToken, e.to_string())
    } else {
        SendError::permanent(FailureReason::BadToken, e.to_string())
    }
}

/// Sorts a Zalo error code into retryable and permanent failures. The codes are from Zalo's
/// error table as far as it is published (UNCONFIRMED ones are treated as permanent).
pub(crate) fn classify(code: i64, message: &str) -> SendError {
    let detail = format!("Zalo error {code}: {message}");
    match code {
        // Internal error / too many requests.
        -32 | -100 => SendError::retryable(FailureReason::ProviderUnavailable, detail),
        // Access token invalid or expired: refresh and try again.
        -124 | -216 => SendError::retryable(FailureReason::BadToken, detail),
        // The user has not interacted within the window, or the OA may not message them now.
        -213 | -217 | -227 | -230 | -232 | -244 => {
            SendError::permanent(FailureReason::OutsideWindow, detail)
        }
        // The night curfew (22:00–06:00): a retry within our deadline cannot pass it.
        -234 => SendError::permanent(FailureReason::OutsideWindow, detail),
        // Quota of replies or messages used up (UNCONFIRMED codes).
        -211 | -240 => SendError::permanent(FailureReason::QuotaExceeded, detail),
        // Parameters invalid (a bad user id or message shape).
        -201 => SendError::permanent(FailureReason::InvalidMessage, detail),
        _ => SendError::permanent(FailureReason::Rejected, detail),
    }
}
