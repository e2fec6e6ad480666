//! A reply through Vonage: `POST {base}/sms/json`, form `api_key`, `api_secret`, `from`, `to`,
//! `text`, `type=unicode` for UCS-2, `client-ref`, `callback`; every `messages[].status` must
//! be `0`.

use omni_channel::{FailureReason, SendError};
use serde::Deserialize;

use crate::params::clip;
use crate::send::Call;

/// Vonage's answer to a send.
#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    messages: Vec<ReplyMessage>,
}

/// One message of [`Reply`] (a long text may be sent as several).
#[derive(Deserialize)]
struct ReplyMessage {
    #[serde(default)]
    status: String,
    #[serde(rename = "message-id", default)]
    message_id: Option<String>,
    #[serde(rename = "error-text", default)]
    error_text: Option<String>,
}

/// Sends the reply; Vonage's id for it (its first message's).
pub(crate) async fn send_message(call: &Call<'_>) -> Result<Option<String>, SendError> {
    let vonage = call.sms.vonage.as_ref().ok_or_else(|| {
        SendError::permanent(FailureReason::AccountNotConfigured, "no Vonage account")
    })?;
    let url = format!(
        "{}/sms/json",
        call.api.vonage_base_url.trim_end_matches('/')
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
    let answer = omni_channel::provider::call(call.http.post(url).form(&form)).await?;
    let (status, retry_after, bytes) = (answer.status, answer.retry_after, answer.body);
    if !status.is_success() {
        return Err(SendError::from_status(status, retry_after));
    }
    let reply: Reply = serde_json::from_slice(&bytes).map_err(|_| {
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
