//! eSMS's delivery callback, read from its parameters (mapping in the module docs of
//! [`crate::esms`]).

use super::EsmsError;
use crate::params::{clip, Params};
use crate::status::{DeliveryState, StatusReport};

/// Reads a delivery callback's parameters (collect them with
/// [`Params::from_request`]; eSMS calls back with GET). Mapping in the module docs.
pub fn parse_delivery_callback(params: &Params) -> Result<StatusReport, EsmsError> {
    let get = |key: &str| {
        params
            .get_ignore_case(key)
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let sms_id = get("SMSID").ok_or(EsmsError::MissingField { field: "SMSID" })?;
    let status = get("SendStatus")
        .or_else(|| get("status"))
        .ok_or(EsmsError::MissingField {
            field: "SendStatus",
        })?;
    let count = |key: &str| get(key).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let state = match status {
        "1" | "2" | "3" => DeliveryState::Pending,
        "7" => DeliveryState::Sent,
        "4" | "6" => DeliveryState::Failed {
            code: Some(status.to_owned()),
        },
        "5" if count("SendSuccess") > 0 => DeliveryState::Delivered,
        "5" if count("SendFailed") > 0 => DeliveryState::Failed { code: None },
        "5" => DeliveryState::Sent,
        other => {
            return Err(EsmsError::UnknownStatus {
                status: clip(other),
            })
        }
    };
    Ok(StatusReport {
        provider_message_id: sms_id.to_owned(),
        state,
        provider_status: status.to_owned(),
        client_ref: get("RequestId").map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_callback_sample_with_failures_is_a_failure() {
        // The customer-care sample from eSMS's "Callback Url" page.
        let params = Params::from_query(
            "SMSID=dc712784-9c5f-4c69-b9a8-ea69d56adc9a87&SendFailed=2&SendStatus=5\
&SendSuccess=0&TotalPrice=0.0000&TotalReceiver=2&TotalSent=2&RequestId=&TypeId=2&telcoid=1\
&phonenumber=0901888484&switchsmsid=",
        );
        let report = parse_delivery_callback(&params).unwrap();
        assert_eq!(
            report.provider_message_id,
            "dc712784-9c5f-4c69-b9a8-ea69d56adc9a87"
        );
        assert_eq!(report.state, DeliveryState::Failed { code: None });
        assert_eq!(report.provider_status, "5");
        assert_eq!(report.client_ref, None);
    }

    #[test]
    fn callback_statuses_map_to_the_shared_states() {
        let state =
            |query: &str| parse_delivery_callback(&Params::from_query(query)).map(|r| r.state);
        assert_eq!(
            state("SMSID=1&SendStatus=5&SendSuccess=1&SendFailed=0").ok(),
            Some(DeliveryState::Delivered)
        );
        assert_eq!(
            state("SMSID=1&SendStatus=5").ok(),
            Some(DeliveryState::Sent)
        );
        assert_eq!(
            state("SMSID=1&SendStatus=7").ok(),
            Some(DeliveryState::Sent)
        );
        assert_eq!(
            state("SMSID=1&SendStatus=1").ok(),
            Some(DeliveryState::Pending)
        );
        assert_eq!(state("smsid=1&status=2").ok(), Some(DeliveryState::Pending));
        assert_eq!(
            state("SMSID=1&SendStatus=4").ok(),
            Some(DeliveryState::Failed {
                code: Some("4".into())
            })
        );
        assert!(matches!(
            state("SMSID=1&SendStatus=9"),
            Err(EsmsError::UnknownStatus { .. })
        ));
        assert!(matches!(
            state("SendStatus=5"),
            Err(EsmsError::MissingField { field: "SMSID" })
        ));
        let report =
            parse_delivery_callback(&Params::from_query("SMSID=1&SendStatus=7&RequestId=evt-9"))
                .unwrap();
        assert_eq!(report.client_ref.as_deref(), Some("evt-9"));
    }
}
