//! A tenant's SMS setup, as the daemon validated it from config: which provider accounts it
//! has, which of our numbers go out through which one, and the public URL providers call back.
//! Pure data; the daemon builds it (and names the bad key when it cannot).

use std::collections::HashMap;
use std::time::Duration;

use omni_core::Secret;

pub use crate::esms::EsmsAccount;
use crate::esms::SmsType;
pub use crate::gateway::GatewayAccount;
pub use crate::twilio::TwilioAccount;
pub use crate::vonage::VonageAccount;

/// One tenant's SMS channel.
#[derive(Debug, Clone)]
pub struct SmsTenant {
    /// The scheme, host (and port, and path prefix, if any) providers reach this daemon at,
    /// without a trailing `/`: `https://sms.shop.example.vn`. Twilio signs the URL it called,
    /// so behind a TLS-terminating proxy this is what the request URL is rebuilt from; callback
    /// URLs sent to providers are built from it too.
    pub public_base_url: String,
    /// The country calling code of national numbers (`0901234567` → `+84901234567`).
    pub country_code: String,
    /// The Twilio account, if the tenant has one.
    pub twilio: Option<TwilioAccount>,
    /// The Vonage account, if the tenant has one.
    pub vonage: Option<VonageAccount>,
    /// The eSMS.vn account, if the tenant has one.
    pub esms: Option<EsmsAccount>,
    /// Generic inbound gateways, by the name in their webhook path.
    pub gateways: HashMap<String, GatewayAccount>,
    /// Our numbers, short codes and brandnames (normalized), and how each sends.
    pub numbers: HashMap<String, NumberRoute>,
    /// The `token` query parameter that authenticates callbacks providers do not sign (eSMS,
    /// unsigned Vonage and gateway webhooks), compared in constant time.
    pub callback_token: Option<Secret>,
}

/// How one of our numbers sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumberRoute {
    /// Through the tenant's Twilio account.
    Twilio {
        /// `MessagingServiceSid` to send from a messaging service instead of `From`.
        messaging_service_sid: Option<String>,
    },
    /// Through the tenant's Vonage account.
    Vonage,
    /// Through the tenant's eSMS.vn account.
    Esms {
        /// `SmsType`: brandname customer care (`2`, the number key is the brandname) or an
        /// eSMS fixed number (`8`).
        sms_type: SmsType,
    },
}

/// Provider API endpoints and limits, shared by every tenant.
#[derive(Debug, Clone)]
pub struct SmsApiSettings {
    /// `https://api.twilio.com` in production.
    pub twilio_base_url: String,
    /// `https://rest.nexmo.com` in production.
    pub vonage_base_url: String,
    /// `https://rest.esms.vn` in production.
    pub esms_base_url: String,
    /// Timeout of one provider call.
    pub timeout: Duration,
    /// Sends per second per sending number (0: no limit).
    pub rate_per_number: f64,
}

impl Default for SmsApiSettings {
    fn default() -> Self {
        Self {
            twilio_base_url: "https://api.twilio.com".into(),
            vonage_base_url: "https://rest.nexmo.com".into(),
            esms_base_url: "https://rest.esms.vn".into(),
            timeout: Duration::from_secs(15),
            rate_per_number: 10.0,
        }
    }
}
