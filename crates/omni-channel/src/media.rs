//! Inbound attachments copied into the media store before their event is published, so the
//! event carries a URL that does not expire (Meta's and Zalo's CDN links die within days,
//! Twilio's and WhatsApp's need credentials).
//!
//! An adapter says how its attachments are fetched with a [`MediaSource`] on the prepared
//! event (credentials; WhatsApp's media ids are looked up first); [`Ingress::publish`]
//! copies each `http(s)` attachment through the safe fetcher ([`omni_media::SafeFetcher`]:
//! no private, loopback or link-local addresses, redirects re-checked, size and time
//! bounded) into the store, keyed by tenant, event id and position, so a provider's retry
//! overwrites the same object. A copy that fails never holds the message back: the event
//! keeps the provider's URL, and the failure is logged and counted in
//! `omni_media_copies_total{channel,result}` (`result` = `stored` or why not).
//!
//! [`Ingress::publish`]: crate::Ingress::publish

use omni_core::{CloudEvent, MessageReceived, TenantId};
use omni_media::{FetchAuth, Media, MediaError, MediaKey, MediaSettings};
use prometheus::{IntCounterVec, Opts, Registry};
use serde::Deserialize;
use std::sync::Arc;

use crate::webhook::PreparedEvent;

/// How an event's attachments are fetched.
#[derive(Debug, Clone, Default)]
pub struct MediaSource {
    /// Credentials the provider wants (Twilio's account, WhatsApp's number token); sent to
    /// the attachment's own origin only, never after a redirect elsewhere.
    pub auth: Option<FetchAuth>,
    /// What an attachment's URL names.
    pub lookup: MediaLookup,
}

impl MediaSource {
    /// The default source for a customer's `message`, or `None` when it has no `http(s)`
    /// attachment (nothing to copy).
    pub fn for_message(message: &omni_core::Message) -> Option<Self> {
        message
            .attachments
            .iter()
            .any(|a| is_http(&a.url))
            .then(Self::default)
    }
}

/// What an attachment's URL names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MediaLookup {
    /// The content itself.
    #[default]
    Direct,
    /// A Graph API media object (WhatsApp): its JSON gives the download `url`, fetched with
    /// the same credentials.
    GraphMedia,
}

/// Copies inbound attachments into the media store.
pub struct InboundMedia {
    media: Arc<Media>,
    settings: MediaSettings,
    copies: IntCounterVec,
}

/// The largest Graph media object description read (a small JSON).
const GRAPH_MEDIA_JSON_BYTES: u64 = 64 * 1024;

impl InboundMedia {
    /// Copies through `media` (which must have a store), with the per-channel limits of
    /// `settings`, counted in `registry`.
    pub fn new(
        media: Arc<Media>,
        settings: MediaSettings,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let copies = IntCounterVec::new(
            Opts::new(
                "omni_media_copies_total",
                "Inbound attachments copied into the media store (result=stored), or left at \
                 the provider's URL, by why (forbidden, too_large, timeout, status, s3, …).",
            ),
            &["channel", "result"],
        )?;
        registry.register(Box::new(copies.clone()))?;
        Ok(Self {
            media,
            settings,
            copies,
        })
    }

    /// Copies `event`'s `http(s)` attachments and rewrites their URLs in its payload.
    pub(crate) async fn copy(
        &self,
        tenant: &TenantId,
        source: &MediaSource,
        event: &mut PreparedEvent,
    ) {
        let Ok(mut message) = serde_json::from_slice::<CloudEvent<MessageReceived>>(&event.payload)
        else {
            return;
        };
        let channel = message.data.channel.kind;
        let limit = self.settings.max_bytes_for(channel.as_str());
        let event_id = event.id.to_string();
        let mut changed = false;
        for (n, attachment) in message.data.message.attachments.iter_mut().enumerate() {
            if !is_http(&attachment.url) {
                continue;
            }
            let key = MediaKey {
                tenant: tenant.as_str(),
                event_id: &event_id,
                index: n + 1,
                name: attachment.name.as_deref(),
            };
            let copied = self.copy_one(&key, &attachment.url, limit, source).await;
            let result = match copied {
                Ok((stored, content_type)) => {
                    attachment.url = stored.url;
                    attachment.size = Some(stored.size);
                    // The provider's exact type over a family such as `image/*`.
                    let vague = attachment
                        .content_type
                        .as_deref()
                        .is_none_or(|c| c.ends_with("/*"));
                    if let Some(exact) = content_type.or(stored.content_type).filter(|_| vague) {
                        attachment.content_type = Some(exact);
                    }
                    changed = true;
                    "stored"
                }
                Err(e) => {
                    tracing::warn!(channel = %channel, tenant = %tenant, event = %event_id,
                        attachment = n + 1, error = %e,
                        "attachment not copied into the media store; the event keeps the provider's URL");
                    e.reason()
                }
            };
            self.copies
                .with_label_values(&[channel.as_str(), result])
                .inc();
        }
        if changed {
            if let Ok(payload) = serde_json::to_vec(&message) {
                event.payload = payload;
            }
        }
    }

    /// One attachment into the store: the stored copy and, from a Graph media object, its
    /// MIME type.
    async fn copy_one(
        &self,
        key: &MediaKey<'_>,
        url: &str,
        limit: u64,
        source: &MediaSource,
    ) -> Result<(omni_media::Stored, Option<String>), MediaError> {
        let auth = source.auth.as_ref();
        match source.lookup {
            MediaLookup::Direct => Ok((self.media.copy_in(key, url, limit, auth).await?, None)),
            MediaLookup::GraphMedia => {
                #[derive(Deserialize)]
                struct GraphMedia {
                    url: String,
                    #[serde(default)]
                    mime_type: Option<String>,
                }
                let described = self
                    .media
                    .fetcher()
                    .fetch(url, GRAPH_MEDIA_JSON_BYTES, auth)
                    .await?;
                let object: GraphMedia = serde_json::from_slice(&described.bytes).map_err(|e| {
                    MediaError::Fetch(omni_media::FetchError::Transport(format!(
                        "the media object is not Graph's JSON: {e}"
                    )))
                })?;
                let stored = self.media.copy_in(key, &object.url, limit, auth).await?;
                Ok((stored, object.mime_type))
            }
        }
    }
}

fn is_http(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}
