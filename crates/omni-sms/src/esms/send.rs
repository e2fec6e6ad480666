//! A reply through eSMS.vn: `POST {base}/MainService.svc/json/SendMultipleMessage_V4_post_json/`
//! with the JSON of [`build_send_body`] (`RequestId` = the outbound event id, so a retry is
//! refused by eSMS instead of sent twice); `CodeResult` `100` is accepted. Unlike Twilio's and
//! Vonage's, an eSMS call whose answer was lost is repeated ([`classify_outcome`]).

use omni_channel::{FailureReason, SendError, SendProgress};

use super::{build_send_body, parse_send_reply, EsmsError, SendRequest, SmsType};
use crate::params::clip;
use crate::send::Call;

/// Sends the reply; eSMS's `SMSID` for it when it gave one.
pub(crate) async fn send_message(
    call: &Call<'_>,
    sms_type: SmsType,
) -> Result<Option<String>, SendError> {
    let account = call.sms.esms.as_ref().ok_or_else(|| {
        SendError::permanent(FailureReason::AccountNotConfigured, "no eSMS account")
    })?;
    let callback = call.sms.callback_token.as_ref().map(|token| {
        let token: String = form_urlencoded::byte_serialize(token.expose().as_bytes()).collect();
        format!(
            "{}/v1/webhooks/sms/esms/{}/callback?token={token}&{}",
            call.sms.public_base_url.trim_end_matches('/'),
            call.tenant,
            call.reference.query(call.account)
        )
    });
    let request_id = call.reference.outbound.to_string();
    let body = build_send_body(
        &account.credentials,
        &SendRequest {
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
        EsmsError::NotVietnamese => {
            SendError::permanent(FailureReason::InvalidRecipient, e.to_string())
        }
        other => SendError::permanent(FailureReason::InvalidMessage, other.to_string()),
    })?;
    let url = format!(
        "{}/MainService.svc/json/SendMultipleMessage_V4_post_json/",
        call.api.esms_base_url.trim_end_matches('/')
    );
    let answer = omni_channel::provider::call(call.http.post(url).json(&body)).await?;
    let (status, retry_after, bytes) = (answer.status, answer.retry_after, answer.body);
    if !status.is_success() {
        return Err(SendError::from_status(status, retry_after));
    }
    match parse_send_reply(&bytes) {
        Ok(accepted) => Ok(accepted.sms_id),
        Err(EsmsError::Rejected { code, message }) => {
            Err(classify_esms(&code, message.as_deref().unwrap_or("")))
        }
        Err(e) => Err(SendError::permanent(FailureReason::Rejected, e.to_string())),
    }
}

/// What an eSMS call's outcome means for the reply: eSMS drops a repeated `RequestId`, so a
/// call of unknown fate is safe to repeat, and a refusal after one may be eSMS refusing the
/// repeat of a message it took.
pub(crate) fn classify_outcome(
    result: Result<Option<String>, SendError>,
    progress: &mut SendProgress,
) -> Result<Option<String>, SendError> {
    match result {
        Ok(id) => Ok(id),
        Err(e) if e.reason == FailureReason::OutcomeUnknown => {
            progress.uncertain = true;
            Err(SendError::retryable(
                FailureReason::ProviderUnavailable,
                format!("{} (repeated with the same RequestId)", e.detail),
            ))
        }
        Err(e) if progress.uncertain && !e.retryable => Err(SendError::permanent(
            FailureReason::OutcomeUnknown,
            format!(
                "refused after an earlier call of unknown fate (eSMS refuses a repeated RequestId): {}",
                e.detail
            ),
        )),
        Err(e) => Err(e),
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
