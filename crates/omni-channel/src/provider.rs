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

/// Downloads an attachment to re-upload it, refusing it past `limit` bytes (by its
/// Content-Length, or while streaming). A 5xx may pass; any other refusal is permanent.
pub async fn fetch_attachment(
    http: &reqwest::Client,
    url: &str,
    limit: u64,
) -> Result<Vec<u8>, SendError> {
    let mut response = http
        .get(url)
        .send()
        .await
        .map_err(|e| SendError::from_transport(&e))?;
    let status = response.status();
    if !status.is_success() {
        let detail = format!("fetching the attachment answered HTTP {status}");
        return Err(if status.is_server_error() {
            SendError::retryable(FailureReason::ProviderUnavailable, detail)
        } else {
            SendError::permanent(FailureReason::InvalidMessage, detail)
        });
    }
    let too_large = || {
        SendError::permanent(
            FailureReason::InvalidMessage,
            format!("attachment larger than the {limit}-byte limit"),
        )
    };
    if response.content_length().is_some_and(|l| l > limit) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| SendError::from_transport(&e))?
    {
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}
