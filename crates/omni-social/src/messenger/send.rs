//! Replies out through the Graph Send API, for Messenger pages and Instagram accounts alike
//! (one [`MetaProduct`] each says what differs: the text limit, the path, Messenger's extras).
//!
//! A reply becomes one Send API call per part: the text (split at the product's limit:
//! Messenger 2,000 characters, Instagram 1,000), then each attachment. A reply is first sent as `RESPONSE` (inside the 24-hour
//! window); when Meta answers that the window is closed and the account enables it, a human
//! agent's reply is sent again with the `HUMAN_AGENT` tag (7 days). On Messenger every part
//! carries `metadata: "omnirouter:<outbound event id>"` so its echo is recognized (Instagram
//! documents no `metadata`: its echoes are published, matched by `mid`). The Send API has no
//! idempotency key: each part's progress is recorded before and after its call
//! ([`SendProgress::begin_part`], [`SendProgress::part_sent`]), and a call whose answer was lost
//! is reported `outcome_unknown`, never repeated.

use omni_channel::{
    sender_account, AccountMap, ChannelSender, FailureReason, RateLimiter, SendError, SendFuture,
    SendProgress, SendReceipt, SendRequest, SenderAccounts,
};
use omni_core::{Attachment, TenantId};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

use super::product::{MetaProduct, INSTAGRAM, MESSENGER};
use super::{MessengerTenant, PageSettings, ECHO_MARKER};
use crate::meta::{GraphError, GraphErrorBody};
use crate::wire::split_text;

/// An agent's signal that is not a message, as Meta's `sender_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderAction {
    /// Show the typing bubble (Meta hides it after 20 s or at the next message).
    TypingOn,
    /// Hide the typing bubble.
    TypingOff,
    /// Mark the customer's last message seen.
    MarkSeen,
}

impl SenderAction {
    /// Meta's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            SenderAction::TypingOn => "typing_on",
            SenderAction::TypingOff => "typing_off",
            SenderAction::MarkSeen => "mark_seen",
        }
    }
}

/// Where and how fast to call the Graph API.
#[derive(Debug, Clone)]
pub struct MessengerSendSettings {
    /// `https://graph.facebook.com` in production; a local stand-in in tests.
    pub graph_base_url: String,
    /// The Graph API version in the path, e.g. `v23.0`.
    pub api_version: String,
    /// Send API calls per second per page (Meta allows about 300 for text).
    pub rate_per_page: f64,
    /// Timeout of one Send API call.
    pub timeout: Duration,
}

/// Sends replies for every configured page (or, built with [`MessengerSender::instagram`],
/// every Instagram account).
pub struct MessengerSender {
    /// What differs between Messenger and Instagram.
    product: &'static MetaProduct,
    /// Accounts by (tenant, account id); replaced whole by [`MessengerSender::set_tenants`],
    /// read once per reply.
    pages: SenderAccounts<PageSettings>,
    http: reqwest::Client,
    settings: MessengerSendSettings,
    limiter: RateLimiter,
}

/// Page settings by (tenant, page id).
type Pages = AccountMap<PageSettings>;

fn pages_of<'a>(
    product: &MetaProduct,
    tenants: impl IntoIterator<Item = (&'a TenantId, &'a MessengerTenant)>,
) -> Pages {
    let accounts = product.accounts;
    tenants
        .into_iter()
        .flat_map(|(tenant, m)| {
            accounts(m).iter().map(move |(page, settings)| {
                ((tenant.as_str().to_owned(), page.clone()), settings.clone())
            })
        })
        .collect()
}

/// The answers to a CSAT survey as quick replies: tapping one sends its title ("1".."5") as
/// the customer's message, which the router takes as the score.
fn survey_quick_replies() -> serde_json::Value {
    (1..=5)
        .map(|n| json!({"content_type": "text", "title": n.to_string(), "payload": format!("CSAT_{n}")}))
        .collect()
}

impl MessengerSender {
    /// A sender for these tenants' Messenger pages.
    pub fn new<'a>(
        tenants: impl IntoIterator<Item = (&'a TenantId, &'a MessengerTenant)>,
        settings: MessengerSendSettings,
    ) -> Result<Self, reqwest::Error> {
        Self::for_product(&MESSENGER, tenants, settings)
    }

    /// A sender for these tenants' Instagram accounts (channel kind `instagram`).
    pub fn instagram<'a>(
        tenants: impl IntoIterator<Item = (&'a TenantId, &'a MessengerTenant)>,
        settings: MessengerSendSettings,
    ) -> Result<Self, reqwest::Error> {
        Self::for_product(&INSTAGRAM, tenants, settings)
    }

    fn for_product<'a>(
        product: &'static MetaProduct,
        tenants: impl IntoIterator<Item = (&'a TenantId, &'a MessengerTenant)>,
        settings: MessengerSendSettings,
    ) -> Result<Self, reqwest::Error> {
        let http = omni_channel::provider::client(settings.timeout)?;
        let limiter = RateLimiter::new(settings.rate_per_page, 20);
        Ok(Self {
            product,
            pages: SenderAccounts::new(pages_of(product, tenants)),
            http,
            settings,
            limiter,
        })
    }

    /// Replaces every tenant's pages (a reloaded config): replies taken from now on use them;
    /// a reply being sent finishes with the pages it started with. Rate limits carry over.
    pub fn set_tenants<'a>(
        &self,
        tenants: impl IntoIterator<Item = (&'a TenantId, &'a MessengerTenant)>,
    ) {
        self.pages.replace(pages_of(self.product, tenants));
    }

    async fn send_reply(
        &self,
        request: &SendRequest,
        progress: &mut SendProgress,
    ) -> Result<SendReceipt, SendError> {
        let message = &request.message;
        let page_id = &message.channel.account;
        let pages = self.pages.snapshot();
        let page = sender_account(&pages, &message.tenant, page_id, || {
            format!(
                "no access token for {} account {page_id}",
                self.product.kind
            )
        })?;
        let parts = parts(
            &message.text,
            &message.attachments,
            self.product.max_text_chars,
        )?;
        let mut tagged = false;
        for (index, part) in parts.iter().enumerate().skip(progress.parts_sent) {
            let body = self.part_body(request, part, index, parts.len());
            // Durable before the call: a replica taking over never sends this part blindly.
            progress.begin_part(index).await?;
            let result = match tagged {
                true => {
                    self.call(page_id, page, with_human_agent_tag(body.clone()))
                        .await
                }
                false => self.call(page_id, page, body.clone()).await,
            };
            let message_id = match result {
                Ok(id) => id,
                Err(e)
                    if e.reason == FailureReason::OutsideWindow
                        && !tagged
                        && page.human_agent_tag
                        && message.agent_id.is_some() =>
                {
                    tagged = true;
                    self.call(page_id, page, with_human_agent_tag(body))
                        .await
                        .map_err(|e| match e.reason {
                            FailureReason::OutsideWindow => SendError::permanent(
                                FailureReason::OutsideWindow,
                                format!("outside the 7-day human agent window: {}", e.detail),
                            ),
                            _ => e,
                        })?
                }
                Err(e) => return Err(e),
            };
            progress.part_sent(index, message_id).await?;
        }
        Ok(SendReceipt {
            provider_message_id: progress.provider_message_ids.first().cloned(),
            segments: None,
        })
    }

    /// The Send API body of part `index` of `count`: Messenger's parts carry the echo marker
    /// and the first the quoted message; the last of a CSAT survey carries the answers.
    fn part_body(
        &self,
        request: &SendRequest,
        part: &serde_json::Value,
        index: usize,
        count: usize,
    ) -> serde_json::Value {
        let message = &request.message;
        let mut body = json!({
            "recipient": {"id": message.recipient},
            "messaging_type": "RESPONSE",
            "message": part,
        });
        if self.product.messenger_extras {
            body["message"]["metadata"] = json!(format!("{ECHO_MARKER}{}", request.event_id));
            if let Some(mid) = message.reply_to.as_ref().filter(|_| index == 0) {
                body["message"]["reply_to"] = json!({"mid": mid});
            }
        }
        if message.csat_survey && index + 1 == count {
            body["message"]["quick_replies"] = survey_quick_replies();
        }
        body
    }

    /// An agent's typing indicator or "seen" to `recipient` from `account`: one Send API call
    /// with `sender_action`, under the same rate limit as replies, never retried here (a late
    /// "typing" is worse than none).
    pub async fn sender_action(
        &self,
        tenant: &TenantId,
        account: &str,
        recipient: &str,
        action: SenderAction,
    ) -> Result<(), SendError> {
        let accounts = self.pages.snapshot();
        let settings = sender_account(&accounts, tenant, account, || {
            format!(
                "no access token for {} account {account}",
                self.product.kind
            )
        })?;
        let body = json!({"recipient": {"id": recipient}, "sender_action": action.as_str()});
        self.post(account, settings, body).await.map(|_| ())
    }

    /// One Send API call; the `message_id` Meta assigned.
    async fn call(
        &self,
        page_id: &str,
        page: &PageSettings,
        body: serde_json::Value,
    ) -> Result<String, SendError> {
        let (status, bytes) = self.post(page_id, page, body).await?;
        #[derive(Deserialize)]
        struct Sent {
            message_id: String,
        }
        serde_json::from_slice::<Sent>(&bytes)
            .map(|s| s.message_id)
            .map_err(|e| {
                SendError::permanent(
                    FailureReason::Rejected,
                    format!("Send API answered {status} without a message_id: {e}"),
                )
            })
    }

    /// One Send API call under the account's rate limit: the status and body of a success,
    /// or Meta's error, classified.
    async fn post(
        &self,
        page_id: &str,
        page: &PageSettings,
        body: serde_json::Value,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), SendError> {
        self.limiter.acquire(page_id).await;
        let url = format!(
            "{}/{}/{}/messages",
            self.settings.graph_base_url.trim_end_matches('/'),
            self.settings.api_version,
            (self.product.send_path)(page_id)
        );
        let answer = omni_channel::provider::call(
            self.http
                .post(url)
                // A header, not `?access_token=`: URLs end up in proxies' and servers' logs.
                .bearer_auth(page.access_token.expose())
                .json(&body),
        )
        .await?;
        let (status, bytes) = (answer.status, &answer.body);
        if status.is_success() {
            return Ok((status, bytes.to_vec()));
        }
        match serde_json::from_slice::<GraphErrorBody>(bytes) {
            Ok(body) => Err(classify(&body.error, status).after(answer.retry_after)),
            Err(_) => Err(answer.status_error()),
        }
    }
}

impl ChannelSender for MessengerSender {
    fn send<'a>(
        &'a self,
        request: &'a SendRequest,
        progress: &'a mut SendProgress,
    ) -> SendFuture<'a> {
        Box::pin(self.send_reply(request, progress))
    }
}

/// Sorts a Graph error into retryable and permanent failures, per Meta's error codes.
pub(crate) fn classify(error: &GraphError, status: reqwest::StatusCode) -> SendError {
    let detail = error.describe();
    match (error.code, error.error_subcode) {
        // Application, user, page and Send API rate limits.
        (4 | 17 | 32 | 613 | 80006, _) => SendError::retryable(FailureReason::RateLimited, detail),
        // Unknown/temporary errors and "temporary send message failure".
        (1 | 2 | 1200, _) => SendError::retryable(FailureReason::ProviderUnavailable, detail),
        (10, Some(2_018_278)) | (10, None) => {
            SendError::permanent(FailureReason::OutsideWindow, detail)
        }
        (551, _) | (100, Some(2_018_001)) | (200, Some(1_545_041)) => {
            SendError::permanent(FailureReason::UserUnavailable, detail)
        }
        (190 | 102, _) => SendError::permanent(FailureReason::BadToken, detail),
        (100, _) => SendError::permanent(FailureReason::InvalidMessage, detail),
        _ if status.is_server_error() => {
            SendError::retryable(FailureReason::ProviderUnavailable, detail)
        }
        _ => SendError::permanent(FailureReason::Rejected, detail),
    }
}

fn with_human_agent_tag(mut body: serde_json::Value) -> serde_json::Value {
    body["messaging_type"] = json!("MESSAGE_TAG");
    body["tag"] = json!("HUMAN_AGENT");
    body
}

/// The Send API `message` objects of a reply: its text in pieces of at most `max_chars`,
/// then one per attachment.
fn parts(
    text: &str,
    attachments: &[Attachment],
    max_chars: usize,
) -> Result<Vec<serde_json::Value>, SendError> {
    let mut parts: Vec<serde_json::Value> = split_text(text, max_chars)
        .into_iter()
        .map(|t| json!({"text": t}))
        .collect();
    for a in attachments {
        parts.push(json!({
            "attachment": {
                "type": attachment_type(a.content_type.as_deref()),
                "payload": {"url": a.url, "is_reusable": true},
            }
        }));
    }
    if parts.is_empty() {
        return Err(SendError::permanent(
            FailureReason::InvalidMessage,
            "a reply needs text or an attachment",
        ));
    }
    Ok(parts)
}

/// Messenger's attachment type for a MIME type.
fn attachment_type(content_type: Option<&str>) -> &'static str {
    match content_type.and_then(|c| c.split('/').next()) {
        Some("image") => "image",
        Some("video") => "video",
        Some("audio") => "audio",
        _ => "file",
    }
}
