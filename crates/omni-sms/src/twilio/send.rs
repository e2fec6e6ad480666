//! A reply through Twilio: `POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json`,
//! basic auth, form `To`, `From` (or `MessagingServiceSid`), `Body`, `StatusCallback`,
//! `MediaUrl` per attachment (MMS); `201` with `sid`.

use omni_channel::{FailureReason, SendError};
use serde::Deserialize;

use crate::params::clip;
use crate::send::Call;

/// Twilio's error body.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: String,
}

/// Twilio's answer to a created message.
#[derive(Deserialize)]
struct Created {
    sid: String,
}

/// Sends the reply; Twilio's id for it when it said.
pub(crate) async fn send_message(
    call: &Call<'_>,
    messaging_service_sid: Option<&str>,
    media: &[&str],
) -> Result<Option<String>, SendError> {
    let twilio = call.sms.twilio.as_ref().ok_or_else(|| {
        SendError::permanent(FailureReason::AccountNotConfigured, "no Twilio account")
    })?;
    let url = format!(
        "{}/2010-04-01/Accounts/{}/Messages.json",
        call.api.twilio_base_url.trim_end_matches('/'),
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
        call.http
            .post(url)
            .basic_auth(&twilio.account_sid, Some(twilio.auth_token.expose()))
            .form(&form),
    )
    .await?;
    let (status, retry_after, bytes) = (answer.status, answer.retry_after, answer.body);
    if status.is_success() {
        return Ok(serde_json::from_slice::<Created>(&bytes)
            .ok()
            .map(|c| c.sid));
    }
    let error = serde_json::from_slice::<ErrorBody>(&bytes).ok();
    Err(match error {
        Some(ErrorBody {
            code: Some(code),
            message,
        }) if !status.is_server_error() && status.as_u16() != 429 => {
            classify_twilio(code, &message).after(retry_after)
        }
        _ => SendError::from_status(status, retry_after),
    })
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
