//! Calling a provider's HTTP API, the same way for every sender: one client configuration,
//! one way to read an answer (status, `Retry-After`, body) with transport failures already
//! classified, and one bounded download of an attachment to upload elsewhere.

use bytes::Bytes;
use reqwest::StatusCode;
use std::time::Duration;

use crate::outbound::{retry_after, FailureReason, SendError};

/// A client for a provider's API: `timeout` per call, connecting within at most 5 s of it.
pub fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .build()
}

/// A provider's answer, read whole.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The provider's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// A failure from the status alone, for answers whose body says nothing more.
    pub fn status_error(&self) -> SendError {
        SendError::from_status(self.status, self.retry_after)
    }
}

/// Sends `request` and reads the answer. A connect error (nothing went out) is retryable; a
/// failure after the request was written (timeout, connection lost, unreadable answer) is
/// [`FailureReason::OutcomeUnknown`] and not retryable, since the provider may have acted on
/// it (see [`SendError::from_send_transport`]). Errors never carry the URL (it may carry a
/// token). A caller whose call is safe to repeat (an upload, an idempotent provider) maps
/// `OutcomeUnknown` back to a retryable error itself.
pub async fn call(request: reqwest::RequestBuilder) -> Result<Answer, SendError> {
    let response = request
        .send()
        .await
        .map_err(|e| SendError::from_send_transport(&e))?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = response
        .bytes()
        .await
        .map_err(|e| SendError::from_send_transport(&e))?;
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// Reads a reply's attachment to re-upload or attach it: from our own media store when the
/// URL is one it handed out, otherwise through the safe fetcher (no private, loopback,
/// link-local or metadata address, redirects re-checked, at most `limit` bytes, bounded in
/// time). What the fetcher refuses is a permanent `invalid_message` naming why; a timeout,
/// a 5xx or a transport error may pass and is retried.
/// A sender built without the daemon's media settings (`None`) uses the strictest: no store,
/// no network allowed beyond the public internet.
pub async fn fetch_attachment(
    media: Option<&omni_media::Media>,
    url: &str,
    limit: u64,
) -> Result<Vec<u8>, SendError> {
    let media = match media {
        Some(media) => media,
        None => strict_media()?,
    };
    media.read_outbound(url, limit).await.map_err(|e| {
        let detail = format!("attachment {url_kind}: {e}", url_kind = scheme_of(url));
        if e.is_retryable() {
            SendError::retryable(FailureReason::ProviderUnavailable, detail)
        } else {
            SendError::permanent(FailureReason::InvalidMessage, detail)
        }
    })
}

/// The strictest media settings, built once.
fn strict_media() -> Result<&'static omni_media::Media, SendError> {
    static STRICT: std::sync::OnceLock<Option<omni_media::Media>> = std::sync::OnceLock::new();
    STRICT
        .get_or_init(|| omni_media::Media::new(&omni_media::MediaSettings::default()).ok())
        .as_ref()
        .ok_or_else(|| {
            SendError::retryable(
                FailureReason::ProviderUnavailable,
                "the attachment fetcher could not be built",
            )
        })
}

/// An attachment URL's scheme and host only, for an error detail (its path and query may
/// carry a signature or a token).
fn scheme_of(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let host = host.rsplit('@').next().unwrap_or_default();
            format!("{scheme}://{host}")
        }
        None => url.chars().take(16).collect(),
    }
}
