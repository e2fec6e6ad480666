//! Configuration: built-in defaults, then the file given with `--config`, then environment
//! overrides `OMNI__SECTION__KEY`. Raw serde structs with `deny_unknown_fields` are validated
//! once into [`Settings`]; after start-up nothing can be invalid.

use omni_bus::BusConfig;
use omni_channel::ApiCredentials;
use omni_core::{Secret, TenantId};
use omni_sms::settings::{
    EsmsAccount, GatewayAccount, NumberRoute, SmsApiSettings, SmsTenant, TwilioAccount,
    VonageAccount,
};
use omni_social::messenger::{MessengerSendSettings, MessengerTenant, PageSettings};
use omni_social::zalo::token::RefreshSettings;
use omni_social::zalo::{OaSettings, ZaloSendSettings, ZaloTenant};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A config problem, naming the key an operator must fix.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file or environment could not be read or does not match the expected shape.
    #[error("cannot load config: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is invalid.
    #[error("invalid config key {key}: {reason}")]
    Invalid {
        /// The key, as `section.key`.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The Kafka section is invalid.
    #[error(transparent)]
    Kafka(#[from] omni_bus::BusError),
}

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSettings {
    /// `[server]`.
    pub server: RawServer,
    /// `[ingress]`.
    pub ingress: RawIngress,
    /// `[kafka]`.
    pub kafka: BusConfig,
    /// `[log]`.
    pub log: RawLog,
    /// `[router]`.
    pub router: RawRouter,
    /// `[outbound]`.
    pub outbound: RawOutbound,
    /// `[messenger]`.
    pub messenger: RawMessengerApi,
    /// `[zalo]`.
    pub zalo: RawZaloApi,
    /// `[sms]`.
    pub sms: RawSmsApi,
    /// `[email]`.
    pub email: RawEmail,
    /// `[livechat]`.
    pub livechat: RawLivechat,
    /// `[tenants.<id>]`.
    pub tenants: BTreeMap<String, RawTenant>,
}

/// `[server]`: the HTTP listener.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawServer {
    /// Address to listen on (`0.0.0.0:8080` behind a load balancer).
    pub listen: String,
    /// Largest request body accepted on any inbound endpoint, in bytes.
    pub max_body_bytes: usize,
    /// How long SIGTERM waits for in-flight requests and the producer flush.
    pub shutdown_grace_secs: u64,
    /// Base URL other replicas use to reach this one (`http://<pod IP>:8080`): a tenant's API
    /// reads are forwarded to the replica that owns it. Defaults to `http://<listen>` when
    /// `listen` names one interface; with `0.0.0.0` set it, or reads of tenants owned by this
    /// replica cannot be forwarded to it.
    pub advertised_url: Option<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            advertised_url: None,
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 64 * 1024,
            shutdown_grace_secs: 30,
        }
    }
}

/// `[ingress]`: behaviour shared by every inbound channel.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawIngress {
    /// A repeat of an event id within this many seconds is answered without publishing again.
    pub dedupe_window_secs: u64,
    /// At most this many ids are remembered (memory bound: ~64 bytes each).
    pub dedupe_capacity: usize,
}

impl Default for RawIngress {
    fn default() -> Self {
        Self {
            dedupe_window_secs: 600,
            dedupe_capacity: 200_000,
        }
    }
}

/// `[router]`: the routing engine's runner.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRouter {
    /// Run a router in this daemon (instances share tenants through the consumer group).
    pub enabled: bool,
    /// Consumer group shared by every router instance.
    pub group_id: String,
    /// How often due timers (offer timeouts, overflow, SLA) are checked, and gauges refreshed.
    pub tick_interval_ms: u64,
    /// Bucket bounds (seconds) of the response-time histograms; make SLA targets bounds.
    pub response_buckets_secs: Vec<f64>,
}

impl Default for RawRouter {
    fn default() -> Self {
        Self {
            enabled: true,
            group_id: "omnirouter-router".into(),
            tick_interval_ms: 1000,
            response_buckets_secs: omni_router::metrics::DEFAULT_BUCKETS.to_vec(),
        }
    }
}

/// `[outbound]`: sending agents' replies from the outbound topic through the channels.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawOutbound {
    /// Send replies from this daemon (instances share the work through the consumer group).
    pub enabled: bool,
    /// Consumer group shared by every sending instance.
    pub group_id: String,
    /// Replies sent at once (replies within one conversation always go out in order).
    pub max_in_flight: usize,
    /// Provider calls per reply at most, the first included, for retryable failures.
    pub max_attempts: u32,
    /// Wait before the first retry (doubles each time, with jitter).
    pub initial_backoff_ms: u64,
    /// Longest wait between retries.
    pub max_backoff_ms: u64,
    /// No retry starts later than this after the first attempt.
    pub deadline_secs: u64,
    /// A reply older than this when taken is not sent but failed as `expired` (a new consumer
    /// group starting from the beginning of a long topic must not resend old replies).
    pub max_age_secs: u64,
}

impl Default for RawOutbound {
    fn default() -> Self {
        let policy = omni_channel::RetryPolicy::default();
        Self {
            enabled: true,
            group_id: "omnirouter-outbound".into(),
            max_in_flight: 64,
            max_attempts: policy.max_attempts,
            initial_backoff_ms: u64::try_from(policy.initial_backoff.as_millis()).unwrap_or(500),
            max_backoff_ms: u64::try_from(policy.max_backoff.as_millis()).unwrap_or(30_000),
            deadline_secs: policy.deadline.as_secs(),
            max_age_secs: 86_400,
        }
    }
}

/// `[messenger]`: the Graph API, shared by every tenant's pages.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawMessengerApi {
    /// The Graph API base URL.
    pub graph_base_url: String,
    /// The Graph API version in request paths.
    pub api_version: String,
    /// Send API calls per second per page.
    pub rate_per_page: f64,
    /// Timeout of one Send API call.
    pub timeout_secs: u64,
}

impl Default for RawMessengerApi {
    fn default() -> Self {
        Self {
            graph_base_url: "https://graph.facebook.com".into(),
            api_version: "v23.0".into(),
            rate_per_page: 250.0,
            timeout_secs: 15,
        }
    }
}

/// `[zalo]`: the Zalo OA and OAuth APIs, shared by every tenant's OAs.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawZaloApi {
    /// The OA API base URL.
    pub openapi_base_url: String,
    /// The OAuth base URL (token refresh).
    pub oauth_base_url: String,
    /// OA API calls per second per OA.
    pub rate_per_oa: f64,
    /// Timeout of one API call.
    pub timeout_secs: u64,
    /// Refresh an access token this long before it expires.
    pub refresh_before_secs: u64,
    /// The key (32 bytes, base64) sealing OA token pairs on the shared tokens topic.
    pub token_key: Option<omni_core::Secret>,
    /// Write token pairs to Kafka in clear text instead (when no `token_key` is set).
    pub tokens_in_clear: bool,
}

impl Default for RawZaloApi {
    fn default() -> Self {
        Self {
            openapi_base_url: "https://openapi.zalo.me".into(),
            oauth_base_url: "https://oauth.zaloapp.com".into(),
            rate_per_oa: 50.0,
            timeout_secs: 15,
            refresh_before_secs: 3600,
            token_key: None,
            tokens_in_clear: false,
        }
    }
}

/// `[sms]`: the SMS providers' APIs and multipart reassembly, shared by every tenant.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSmsApi {
    /// Twilio's REST API base URL.
    pub twilio_base_url: String,
    /// Vonage's SMS API base URL.
    pub vonage_base_url: String,
    /// eSMS.vn's API base URL.
    pub esms_base_url: String,
    /// Timeout of one provider call.
    pub timeout_secs: u64,
    /// Sends per second per sending number (0: no limit).
    pub rate_per_number: f64,
    /// How long a multipart SMS waits for its missing parts before it is published as it is.
    pub concat_ttl_secs: u64,
    /// Incomplete multipart SMS held at most per tenant (the oldest is published when full).
    pub concat_max_pending: usize,
}

impl Default for RawSmsApi {
    fn default() -> Self {
        let api = SmsApiSettings::default();
        Self {
            twilio_base_url: api.twilio_base_url,
            vonage_base_url: api.vonage_base_url,
            esms_base_url: api.esms_base_url,
            timeout_secs: api.timeout.as_secs(),
            rate_per_number: api.rate_per_number,
            concat_ttl_secs: 900,
            concat_max_pending: 10_000,
        }
    }
}

/// `[tenants.<id>.sms]`: a tenant's SMS providers and numbers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSms {
    /// `https://host[:port][/prefix]` providers reach this daemon at (Twilio signs it).
    pub public_base_url: String,
    /// Country calling code of national numbers (`0901234567` → `+84901234567`).
    #[serde(default = "default_country_code")]
    pub country_code: String,
    /// `?token=` of callbacks providers do not sign (eSMS; unsigned Vonage and gateways).
    #[serde(default)]
    pub callback_token: Option<Secret>,
    /// The Twilio account.
    #[serde(default)]
    pub twilio: Option<RawTwilio>,
    /// The Vonage account.
    #[serde(default)]
    pub vonage: Option<RawVonage>,
    /// The eSMS.vn account.
    #[serde(default)]
    pub esms: Option<RawEsms>,
    /// Generic inbound gateways by name (`/v1/webhooks/sms/gateway/<tenant>/<name>`).
    #[serde(default)]
    pub gateways: BTreeMap<String, RawGateway>,
    /// Our numbers, short codes and brandnames, and the provider each sends through.
    #[serde(default)]
    pub numbers: BTreeMap<String, RawNumber>,
}

fn default_country_code() -> String {
    "84".into()
}

/// `[tenants.<id>.sms.twilio]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTwilio {
    /// `AC…`.
    pub account_sid: String,
    /// The auth token (REST API password, webhook signature key).
    pub auth_token: Secret,
}

/// `[tenants.<id>.sms.vonage]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVonage {
    /// `api_key`.
    pub api_key: String,
    /// `api_secret`.
    pub api_secret: Secret,
    /// Signed webhooks: `md5hash`, `md5`, `sha1`, `sha256` or `sha512` (the dashboard's).
    #[serde(default)]
    pub signature_method: Option<omni_sms::vonage::SignatureMethod>,
    /// The dashboard's signature secret.
    #[serde(default)]
    pub signature_secret: Option<Secret>,
    /// Refuse signed requests whose `timestamp` is further than this from now.
    #[serde(default)]
    pub signature_max_age_secs: Option<u64>,
}

/// `[tenants.<id>.sms.esms]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEsms {
    /// `ApiKey`.
    pub api_key: Secret,
    /// `SecretKey`.
    pub secret_key: Secret,
    /// `Sandbox=1`: requests are checked, nothing is delivered.
    #[serde(default)]
    pub sandbox: bool,
}

/// `[tenants.<id>.sms.gateways.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    /// Key of the mapping's HMAC-SHA256 signature header.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Where the fields are (`omni_sms::gateway::GatewayMapping`).
    pub mapping: omni_sms::gateway::GatewayMapping,
}

/// `[tenants.<id>.sms.numbers."<number>"]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNumber {
    /// `twilio`, `vonage` or `esms`.
    pub provider: String,
    /// Twilio: send from this messaging service instead of the number.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// eSMS: `2` (brandname customer care, the default) or `8` (eSMS fixed number).
    #[serde(default)]
    pub sms_type: Option<String>,
}

/// `[tenants.<id>.messenger]`: a tenant's Meta app and pages.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMessenger {
    /// The Meta app secret (signs webhooks).
    pub app_secret: Secret,
    /// The verify token typed into Meta's webhook settings.
    pub verify_token: Secret,
    /// Accept the legacy `X-Hub-Signature` (SHA-1) when the SHA-256 header is absent.
    #[serde(default)]
    pub accept_sha1: bool,
    /// Pages by page id.
    #[serde(default)]
    pub pages: BTreeMap<String, RawPage>,
}

/// `[tenants.<id>.messenger.pages.<page id>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPage {
    /// The page access token for the Send API.
    pub access_token: Secret,
    /// Send human replies 24 h–7 days after the customer's last message with `HUMAN_AGENT`.
    #[serde(default)]
    pub human_agent_tag: bool,
}

/// `[tenants.<id>.zalo]`: a tenant's Official Accounts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawZalo {
    /// OAs by OA id.
    pub oas: BTreeMap<String, RawOa>,
}

/// `[tenants.<id>.zalo.oas.<oa id>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOa {
    /// The Zalo app connected to the OA.
    pub app_id: String,
    /// The OA secret key (webhook signatures).
    pub oa_secret_key: Secret,
    /// The app secret key (token refresh).
    pub app_secret: Secret,
    /// Where the current token pair is kept (written before a new refresh token is used).
    pub token_file: std::path::PathBuf,
    /// The first refresh token, used only when `token_file` does not exist yet.
    #[serde(default)]
    pub refresh_token: Option<Secret>,
    /// An access token to start with, used only when `token_file` does not exist yet.
    #[serde(default)]
    pub access_token: Option<Secret>,
}

/// `[log]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLog {
    /// A tracing filter (`info`, `omnirouter=debug,rdkafka=warn`); `RUST_LOG` wins if set.
    pub level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

/// `[tenants.<id>]`: one routing domain and its credentials.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTenant {
    /// Bearer token for the API channel.
    pub api_token: Option<Secret>,
    /// HMAC-SHA256 key for signed API channel requests.
    pub api_hmac_secret: Option<Secret>,
    /// Bearer token of the agent/operator API (`/v1/tenants/<id>/…`).
    pub agent_api_token: Option<Secret>,
    /// Queues, rules and strategies; without it, one `default` queue, least loaded.
    pub routing: Option<omni_routing::RoutingConfig>,
    /// Facebook Messenger pages.
    pub messenger: Option<RawMessenger>,
    /// Zalo Official Accounts.
    pub zalo: Option<RawZalo>,
    /// SMS providers and numbers.
    pub sms: Option<RawSms>,
    /// E-mail mailboxes.
    pub email: Option<RawTenantEmail>,
    /// Website live chat widgets.
    pub livechat: Option<RawTenantLivechat>,
}

/// Validated settings: what the daemon runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Base URL other replicas forward reads to (`server.advertised_url`).
    pub advertised_url: Option<String>,
    /// Body limit for inbound endpoints.
    pub max_body_bytes: usize,
    /// Grace period on shutdown.
    pub shutdown_grace: Duration,
    /// Dedupe window.
    pub dedupe_window: Duration,
    /// Dedupe capacity.
    pub dedupe_capacity: usize,
    /// Kafka.
    pub kafka: BusConfig,
    /// Log filter.
    pub log_level: String,
    /// Tenants with API channel credentials.
    pub api_tenants: Vec<(TenantId, ApiCredentials)>,
    /// Agent API tokens per tenant.
    pub agent_tokens: Vec<(TenantId, Secret)>,
    /// The router, if enabled.
    pub router: Option<RouterSettings>,
    /// Response-time histogram buckets.
    pub response_buckets: Vec<f64>,
    /// Tenants with Messenger pages.
    pub messenger_tenants: Vec<(TenantId, MessengerTenant)>,
    /// Tenants with Zalo OAs.
    pub zalo_tenants: Vec<(TenantId, ZaloTenant)>,
    /// The Graph API.
    pub messenger_api: MessengerSendSettings,
    /// The Zalo OA API.
    pub zalo_api: ZaloSendSettings,
    /// Zalo token refresh.
    pub zalo_refresh: RefreshSettings,
    /// How Zalo token pairs are written to the shared tokens topic.
    pub zalo_sealing: omni_social::zalo::shared::TokenSealing,
    /// Tenants with SMS.
    pub sms_tenants: Vec<(TenantId, SmsTenant)>,
    /// The SMS providers' APIs.
    pub sms_api: SmsApiSettings,
    /// Multipart SMS reassembly.
    pub sms_concat: omni_sms::reassembly::ReassemblerConfig,
    /// Outbound dispatch, if enabled.
    pub outbound: Option<OutboundSettings>,
    /// Every tenant's e-mail mailboxes.
    pub mailboxes: Vec<omni_email::MailboxSettings>,
    /// Website live chat, when enabled and some tenant has a widget.
    pub livechat: Option<LivechatConfig>,
    /// `livechat.enabled` (live chat may be enabled yet not served: no widget).
    pub livechat_enabled: bool,
}

/// Validated live chat: shared limits and every tenant's widgets.
#[derive(Debug, Clone)]
pub struct LivechatConfig {
    /// Limits and timings.
    pub settings: omni_livechat::LivechatSettings,
    /// Widgets by (tenant, widget id).
    pub widgets: omni_livechat::Widgets,
}

/// Validated `[outbound]`.
#[derive(Debug, Clone)]
pub struct OutboundSettings {
    /// Consumer group.
    pub group_id: String,
    /// Replies in flight at most.
    pub max_in_flight: usize,
    /// Retries.
    pub policy: omni_channel::RetryPolicy,
    /// Older replies are failed as `expired`, not sent.
    pub max_age: Duration,
}

/// Validated `[router]` settings plus every tenant's routing configuration.
pub type RouterSettings = omni_router::RouterSettings;

/// Largest body limit allowed (16 MiB): attachments travel by URL, not inline.
const MAX_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// A validated config together with the merged values it came from, so a reload can tell
/// what changed.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// What the daemon runs with.
    pub settings: Settings,
    /// The file and environment merged, as written (before defaults).
    pub tree: ConfigTree,
}

/// The merged config values (file, then environment) as a tree. It holds secrets, so it never
/// prints them: compare it, do not log it.
#[derive(Clone, Default, PartialEq)]
pub struct ConfigTree(serde_json::Value);

impl std::fmt::Debug for ConfigTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigTree(..)")
    }
}

impl ConfigTree {
    /// The value at `path` (`["tenants", "acme", "email"]`), if set.
    pub fn get(&self, path: &[&str]) -> Option<&serde_json::Value> {
        path.iter().try_fold(&self.0, |v, k| v.get(k))
    }
}

/// An error with its causes, `: `-separated, for one log line or message.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // `#[error("…: {0}")]` wrappers already end with their cause.
        let text = s.to_string();
        if !msg.ends_with(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// Reads and validates the config: defaults, then `file` (if given), then `OMNI__…`
/// environment variables. Start-up, `check-config` and every reload go through this one
/// function, so a config `check-config` accepts is one a reload accepts.
pub fn load(file: Option<&Path>) -> Result<Loaded, SettingsError> {
    let config = RawSettings::sources(file).build()?;
    let tree = ConfigTree(config.clone().try_deserialize()?);
    let raw: RawSettings = config.try_deserialize()?;
    Ok(Loaded {
        settings: raw.validate()?,
        tree,
    })
}

impl RawSettings {
    /// Loads defaults, then `file` (if given), then `OMNI__…` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        Ok(Self::sources(file).build()?.try_deserialize()?)
    }

    fn sources(file: Option<&Path>) -> config::ConfigBuilder<config::builder::DefaultState> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        builder.add_source(
            config::Environment::with_prefix("OMNI")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(false),
        )
    }

    /// Checks every value and builds [`Settings`]; the error names the key to fix.
    pub fn validate(self) -> Result<Settings, SettingsError> {
        let invalid = |key: &str, reason: String| SettingsError::Invalid {
            key: key.to_owned(),
            reason,
        };
        let listen: SocketAddr = self.server.listen.parse().map_err(|e| {
            invalid(
                "server.listen",
                format!("{:?} is not host:port ({e})", self.server.listen),
            )
        })?;
        if self.server.max_body_bytes == 0 || self.server.max_body_bytes > MAX_BODY_LIMIT {
            return Err(invalid(
                "server.max_body_bytes",
                format!("must be between 1 and {MAX_BODY_LIMIT}"),
            ));
        }
        if self.ingress.dedupe_capacity == 0 {
            return Err(invalid(
                "ingress.dedupe_capacity",
                "must be at least 1".into(),
            ));
        }
        self.kafka.validate()?;
        let mut api_tenants = Vec::new();
        let mut agent_tokens = Vec::new();
        let mut routing = BTreeMap::new();
        let buckets = self.router.response_buckets_secs.clone();
        if buckets.is_empty()
            || buckets.windows(2).any(|w| w[0] >= w[1])
            || buckets.iter().any(|b| !b.is_finite() || *b <= 0.0)
        {
            return Err(invalid(
                "router.response_buckets_secs",
                "give increasing positive bounds in seconds".into(),
            ));
        }
        if self.router.tick_interval_ms == 0 {
            return Err(invalid(
                "router.tick_interval_ms",
                "must be at least 1".into(),
            ));
        }
        let mut messenger_tenants = Vec::new();
        let mut zalo_tenants = Vec::new();
        let mut sms_tenants = Vec::new();
        let mut mailboxes = Vec::new();
        let mut widgets = omni_livechat::Widgets::new();
        let mut tenant_count = 0;
        for (name, raw) in self.tenants {
            let key = format!("tenants.{name}");
            let tenant = TenantId::new(name.clone()).map_err(|e| invalid(&key, e.to_string()))?;
            tenant_count += 1;
            let token = raw.api_token.filter(|s| !s.is_empty());
            let hmac = raw.api_hmac_secret.filter(|s| !s.is_empty());
            if let Some(m) = raw.messenger {
                messenger_tenants.push((tenant.clone(), messenger_tenant(&key, m)?));
            }
            if let Some(z) = raw.zalo {
                zalo_tenants.push((tenant.clone(), zalo_tenant(&key, z)?));
            }
            if let Some(sms) = raw.sms {
                sms_tenants.push((tenant.clone(), sms_tenant(&key, sms)?));
            }
            let mut has_email = false;
            if let Some(email) = raw.email {
                let found = email_mailboxes(&key, &tenant, email, &self.email)?;
                has_email = !found.is_empty();
                mailboxes.extend(found);
            }
            let mut has_livechat = false;
            if let Some(chat) = raw.livechat {
                for (id, w) in chat.widgets {
                    let settings =
                        widget_settings(&format!("{key}.livechat.widgets.{id}"), &id, w)?;
                    widgets.insert((name.clone(), id), (tenant.clone(), settings));
                    has_livechat = true;
                }
            }
            let has_social = has_email
                || has_livechat
                || messenger_tenants.last().is_some_and(|(t, _)| *t == tenant)
                || zalo_tenants.last().is_some_and(|(t, _)| *t == tenant)
                || sms_tenants.last().is_some_and(|(t, _)| *t == tenant);
            if token.is_none() && hmac.is_none() && !has_social {
                return Err(invalid(
                    &key,
                    "give the tenant a channel: api_token and/or api_hmac_secret, messenger, zalo, sms, email or livechat"
                        .into(),
                ));
            }
            if let Some(agent) = raw.agent_api_token.filter(|s| !s.is_empty()) {
                agent_tokens.push((tenant.clone(), agent));
            }
            let config = raw.routing.unwrap_or_else(|| {
                omni_routing::RoutingConfig::single_queue(omni_routing::QueueConfig::default())
            });
            config
                .validate()
                .map_err(|e| invalid(&format!("{key}.routing.{}", e.key), e.reason.clone()))?;
            routing.insert(tenant.clone(), config);
            if token.is_some() || hmac.is_some() {
                api_tenants.push((
                    tenant,
                    ApiCredentials {
                        bearer_token: token,
                        hmac_secret: hmac,
                    },
                ));
            }
        }
        let outbound = self.outbound.enabled.then(|| OutboundSettings {
            group_id: self.outbound.group_id.clone(),
            max_in_flight: self.outbound.max_in_flight,
            policy: omni_channel::RetryPolicy {
                max_attempts: self.outbound.max_attempts,
                initial_backoff: Duration::from_millis(self.outbound.initial_backoff_ms),
                max_backoff: Duration::from_millis(self.outbound.max_backoff_ms),
                deadline: Duration::from_secs(self.outbound.deadline_secs),
            },
            max_age: Duration::from_secs(self.outbound.max_age_secs),
        });
        if self.outbound.max_in_flight == 0 || self.outbound.max_attempts == 0 {
            return Err(invalid(
                "outbound.max_in_flight / outbound.max_attempts",
                "must be at least 1".into(),
            ));
        }
        for (key, url) in [
            ("messenger.graph_base_url", &self.messenger.graph_base_url),
            ("zalo.openapi_base_url", &self.zalo.openapi_base_url),
            ("zalo.oauth_base_url", &self.zalo.oauth_base_url),
            ("sms.twilio_base_url", &self.sms.twilio_base_url),
            ("sms.vonage_base_url", &self.sms.vonage_base_url),
            ("sms.esms_base_url", &self.sms.esms_base_url),
        ] {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(invalid(key, format!("{url:?} is not an http(s) URL")));
            }
        }
        let zalo_sealing = match (&self.zalo.token_key, self.zalo.tokens_in_clear) {
            (Some(key), _) => omni_social::zalo::shared::TokenSealing::from_base64(key.expose())
                .map_err(|e| invalid("zalo.token_key", e.to_string()))?,
            (None, true) => omni_social::zalo::shared::TokenSealing::Clear,
            (None, false) if zalo_tenants.is_empty() => {
                omni_social::zalo::shared::TokenSealing::Clear
            }
            (None, false) => {
                return Err(invalid(
                    "zalo.token_key",
                    "Zalo OAs are configured: their token pairs are shared between replicas through Kafka; set a key to seal them (`openssl rand -base64 32`, e.g. in OMNI__ZALO__TOKEN_KEY) or allow clear text with zalo.tokens_in_clear = true".into(),
                ))
            }
        };
        if self.messenger.timeout_secs == 0 || self.zalo.timeout_secs == 0 {
            return Err(invalid(
                "messenger.timeout_secs / zalo.timeout_secs",
                "must be at least 1".into(),
            ));
        }
        if self.sms.timeout_secs == 0 || self.sms.concat_ttl_secs == 0 {
            return Err(invalid(
                "sms.timeout_secs / sms.concat_ttl_secs",
                "must be at least 1".into(),
            ));
        }
        if !self.sms.rate_per_number.is_finite() || self.sms.rate_per_number < 0.0 {
            return Err(invalid(
                "sms.rate_per_number",
                "must be 0 (no limit) or a positive number".into(),
            ));
        }
        if tenant_count == 0 {
            return Err(invalid("tenants", "configure at least one tenant".into()));
        }
        let livechat_enabled = self.livechat.enabled;
        let livechat = self.livechat.validate()?;
        let livechat = (livechat.is_some() && !widgets.is_empty()).then(|| LivechatConfig {
            settings: livechat.unwrap_or_default(),
            widgets,
        });
        let advertised_url = self.server.advertised_url.filter(|u| !u.trim().is_empty());
        if let Some(url) = &advertised_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    "server.advertised_url",
                    "must be an http:// or https:// base URL".into(),
                ));
            }
        }
        Ok(Settings {
            listen,
            advertised_url,
            max_body_bytes: self.server.max_body_bytes,
            shutdown_grace: Duration::from_secs(self.server.shutdown_grace_secs),
            dedupe_window: Duration::from_secs(self.ingress.dedupe_window_secs),
            dedupe_capacity: self.ingress.dedupe_capacity,
            kafka: self.kafka,
            log_level: self.log.level,
            api_tenants,
            agent_tokens,
            router: self.router.enabled.then(|| omni_router::RouterSettings {
                group_id: self.router.group_id.clone(),
                tick_interval: Duration::from_millis(self.router.tick_interval_ms),
                tenants: routing,
            }),
            response_buckets: buckets,
            messenger_tenants,
            zalo_tenants,
            messenger_api: MessengerSendSettings {
                graph_base_url: self.messenger.graph_base_url,
                api_version: self.messenger.api_version,
                rate_per_page: self.messenger.rate_per_page,
                timeout: Duration::from_secs(self.messenger.timeout_secs),
            },
            zalo_api: ZaloSendSettings {
                openapi_base_url: self.zalo.openapi_base_url,
                rate_per_oa: self.zalo.rate_per_oa,
                timeout: Duration::from_secs(self.zalo.timeout_secs),
            },
            zalo_refresh: RefreshSettings {
                oauth_base_url: self.zalo.oauth_base_url,
                refresh_before: Duration::from_secs(self.zalo.refresh_before_secs),
                timeout: Duration::from_secs(self.zalo.timeout_secs),
            },
            zalo_sealing,
            sms_tenants,
            sms_api: SmsApiSettings {
                twilio_base_url: self.sms.twilio_base_url,
                vonage_base_url: self.sms.vonage_base_url,
                esms_base_url: self.sms.esms_base_url,
                timeout: Duration::from_secs(self.sms.timeout_secs),
                rate_per_number: self.sms.rate_per_number,
            },
            sms_concat: omni_sms::reassembly::ReassemblerConfig {
                ttl: Duration::from_secs(self.sms.concat_ttl_secs),
                max_pending: self.sms.concat_max_pending.max(1),
                ..Default::default()
            },
            outbound,
            mailboxes,
            livechat,
            livechat_enabled,
        })
    }
}

fn sms_tenant(key: &str, raw: RawSms) -> Result<SmsTenant, SettingsError> {
    let invalid = |k: &str, reason: String| SettingsError::Invalid {
        key: format!("{key}.sms.{k}"),
        reason,
    };
    let base = raw.public_base_url.trim_end_matches('/').to_owned();
    let host = base
        .strip_prefix("https://")
        .or_else(|| base.strip_prefix("http://"));
    if host.is_none_or(|h| h.is_empty() || h.contains(['?', '#'])) {
        return Err(invalid(
            "public_base_url",
            format!("{base:?} is not an http(s) URL without query"),
        ));
    }
    if omni_sms::PhoneNumber::parse("0901234567", &raw.country_code).is_err() {
        return Err(invalid(
            "country_code",
            "give a country calling code such as 84".into(),
        ));
    }
    let callback_token = raw.callback_token.filter(|s| !s.is_empty());
    let twilio = match raw.twilio {
        Some(t) => {
            if t.account_sid.trim().is_empty() || t.auth_token.is_empty() {
                return Err(invalid(
                    "twilio.account_sid / twilio.auth_token",
                    "must not be empty".into(),
                ));
            }
            Some(TwilioAccount {
                account_sid: t.account_sid.trim().to_owned(),
                auth_token: t.auth_token,
            })
        }
        None => None,
    };
    let vonage = match raw.vonage {
        Some(v) => {
            if v.api_key.trim().is_empty() || v.api_secret.is_empty() {
                return Err(invalid(
                    "vonage.api_key / vonage.api_secret",
                    "must not be empty".into(),
                ));
            }
            let signature = match (
                v.signature_method,
                v.signature_secret.filter(|s| !s.is_empty()),
            ) {
                (Some(method), Some(secret)) => Some((
                    omni_sms::vonage::SignatureSettings {
                        method,
                        max_age: v.signature_max_age_secs.map(Duration::from_secs),
                    },
                    secret,
                )),
                (None, None) => None,
                _ => {
                    return Err(invalid(
                        "vonage.signature_method / vonage.signature_secret",
                        "give both for signed webhooks, or neither".into(),
                    ))
                }
            };
            if signature.is_none() && callback_token.is_none() {
                return Err(invalid(
                    "vonage",
                    "unsigned Vonage webhooks need callback_token (in their URL as ?token=)".into(),
                ));
            }
            Some(VonageAccount {
                api_key: v.api_key.trim().to_owned(),
                api_secret: v.api_secret,
                signature,
            })
        }
        None => None,
    };
    let esms = match raw.esms {
        Some(e) => {
            if e.api_key.is_empty() || e.secret_key.is_empty() {
                return Err(invalid(
                    "esms.api_key / esms.secret_key",
                    "must not be empty".into(),
                ));
            }
            Some(EsmsAccount {
                credentials: omni_sms::esms::EsmsCredentials {
                    api_key: e.api_key,
                    secret_key: e.secret_key,
                },
                sandbox: e.sandbox,
            })
        }
        None => None,
    };
    let mut gateways = std::collections::HashMap::new();
    for (name, g) in raw.gateways {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(invalid(
                &format!("gateways.{name}"),
                "a gateway name is letters, digits, '-' and '_'".into(),
            ));
        }
        let gateway = g
            .mapping
            .build()
            .map_err(|e| invalid(&format!("gateways.{name}.mapping"), e.to_string()))?;
        let secret = g.secret.filter(|s| !s.is_empty());
        if gateway.signature_header().is_some() && secret.is_none() {
            return Err(invalid(
                &format!("gateways.{name}.secret"),
                "the mapping has a signature header: give its HMAC key".into(),
            ));
        }
        if gateway.signature_header().is_none() && callback_token.is_none() {
            return Err(invalid(
                &format!("gateways.{name}"),
                "an unsigned gateway needs callback_token (in its URL as ?token=)".into(),
            ));
        }
        gateways.insert(name, GatewayAccount { gateway, secret });
    }
    let mut numbers = std::collections::HashMap::new();
    for (number, n) in raw.numbers {
        let k = format!("numbers.{number}");
        let address = omni_sms::Address::parse(&number, &raw.country_code)
            .map_err(|e| invalid(&k, e.to_string()))?;
        let route = match n.provider.as_str() {
            "twilio" if twilio.is_some() => NumberRoute::Twilio {
                messaging_service_sid: n.messaging_service_sid.filter(|s| !s.is_empty()),
            },
            "vonage" if vonage.is_some() => NumberRoute::Vonage,
            "esms" if esms.is_some() => NumberRoute::Esms {
                sms_type: match n.sms_type.as_deref().map(str::trim) {
                    None | Some("2") | Some("brandname_care") => {
                        omni_sms::esms::SmsType::BrandnameCare
                    }
                    Some("8") | Some("fixed_number") => omni_sms::esms::SmsType::FixedNumber,
                    Some(other) => {
                        return Err(invalid(
                            &format!("{k}.sms_type"),
                            format!("{other:?} is not 2 (brandname care) or 8 (fixed number)"),
                        ))
                    }
                },
            },
            p @ ("twilio" | "vonage" | "esms") => {
                return Err(invalid(
                    &format!("{k}.provider"),
                    format!("{p} is not configured: add [{key}.sms.{p}]"),
                ))
            }
            other => {
                return Err(invalid(
                    &format!("{k}.provider"),
                    format!("{other:?} is not twilio, vonage or esms"),
                ))
            }
        };
        numbers.insert(address.as_str().to_owned(), route);
    }
    Ok(SmsTenant {
        public_base_url: base,
        country_code: raw.country_code,
        twilio,
        vonage,
        esms,
        gateways,
        numbers,
        callback_token,
    })
}

fn messenger_tenant(key: &str, raw: RawMessenger) -> Result<MessengerTenant, SettingsError> {
    let invalid = |k: &str, reason: &str| SettingsError::Invalid {
        key: format!("{key}.messenger.{k}"),
        reason: reason.to_owned(),
    };
    if raw.app_secret.is_empty() {
        return Err(invalid("app_secret", "must not be empty"));
    }
    if raw.verify_token.is_empty() {
        return Err(invalid("verify_token", "must not be empty"));
    }
    let mut pages = std::collections::HashMap::new();
    for (page, p) in raw.pages {
        if page.is_empty() || !page.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(&format!("pages.{page}"), "a page id is digits"));
        }
        if p.access_token.is_empty() {
            return Err(invalid(
                &format!("pages.{page}.access_token"),
                "must not be empty",
            ));
        }
        pages.insert(
            page,
            PageSettings {
                access_token: p.access_token,
                human_agent_tag: p.human_agent_tag,
            },
        );
    }
    Ok(MessengerTenant {
        app_secret: raw.app_secret,
        verify_token: raw.verify_token,
        accept_sha1: raw.accept_sha1,
        pages,
    })
}

fn zalo_tenant(key: &str, raw: RawZalo) -> Result<ZaloTenant, SettingsError> {
    let mut oas = std::collections::HashMap::new();
    for (oa, o) in raw.oas {
        let invalid = |k: &str, reason: &str| SettingsError::Invalid {
            key: format!("{key}.zalo.oas.{oa}.{k}"),
            reason: reason.to_owned(),
        };
        if oa.is_empty() || !oa.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("", "an OA id is digits"));
        }
        if o.app_id.is_empty() {
            return Err(invalid("app_id", "must not be empty"));
        }
        if o.oa_secret_key.is_empty() || o.app_secret.is_empty() {
            return Err(invalid("oa_secret_key / app_secret", "must not be empty"));
        }
        if o.token_file.as_os_str().is_empty() {
            return Err(invalid("token_file", "must name a file"));
        }
        oas.insert(
            oa.clone(),
            OaSettings {
                app_id: o.app_id,
                oa_secret_key: o.oa_secret_key,
                app_secret: o.app_secret,
                token_file: o.token_file,
                initial_refresh_token: o.refresh_token.filter(|s| !s.is_empty()),
                initial_access_token: o.access_token.filter(|s| !s.is_empty()),
            },
        );
    }
    Ok(ZaloTenant { oas })
}

/// `[livechat]`: limits shared by every tenant's widgets.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLivechat {
    /// Serve live chat (sessions, sockets, the widget) from this daemon.
    pub enabled: bool,
    /// Lifetime of a visitor token; the widget renews it with a new session request.
    pub token_ttl_secs: u64,
    /// A token expired less than this long ago still renews into the same visitor.
    pub renew_window_secs: u64,
    /// Largest WebSocket frame/message from a widget, in bytes (larger: closed with 1009).
    pub max_frame_bytes: usize,
    /// Longest visitor message in characters.
    pub max_text_chars: usize,
    /// Visitor messages per minute per conversation, sustained…
    pub rate_per_minute: u32,
    /// …and in a burst.
    pub burst: u32,
    /// A socket silent for this long is closed (the widget pings every 25 s).
    pub idle_timeout_secs: u64,
    /// Open sockets per client IP.
    pub max_connections_per_ip: u32,
    /// How far back each instance reads inbound and outbound at start to rebuild conversations.
    pub history_window_secs: u64,
    /// Messages kept per conversation in memory (what a reconnecting widget can catch up on).
    pub log_max_messages: usize,
    /// Messages older than this are not replayed.
    pub log_ttl_secs: u64,
    /// Frames queued for one socket before it is closed as lagging.
    pub queue_cap: usize,
    /// Read buffer per socket in bytes (allocated up front for every idle socket).
    pub ws_read_buffer_bytes: usize,
    /// Count connections per IP by the first `X-Forwarded-For` entry (only behind a proxy
    /// that sets it).
    pub trust_forwarded_for: bool,
    /// Each replica republishes its per-IP socket counts this often (and at once on a change).
    pub presence_heartbeat_ms: u64,
    /// A replica not heard from for this long stops counting toward the per-IP cap.
    pub presence_expiry_ms: u64,
    /// Keys the hash of client IPs on the presence topic; the same on every replica.
    pub ip_hash_secret: Option<Secret>,
}

impl Default for RawLivechat {
    fn default() -> Self {
        let d = omni_livechat::LivechatSettings::default();
        Self {
            enabled: true,
            token_ttl_secs: d.token_ttl.as_secs(),
            renew_window_secs: d.renew_window.as_secs(),
            max_frame_bytes: d.max_frame_bytes,
            max_text_chars: d.max_text_chars,
            rate_per_minute: d.rate_per_minute,
            burst: d.burst,
            idle_timeout_secs: d.idle_timeout.as_secs(),
            max_connections_per_ip: d.max_connections_per_ip,
            history_window_secs: d.history_window.as_secs(),
            log_max_messages: d.log_max_messages,
            log_ttl_secs: d.log_ttl.as_secs(),
            queue_cap: d.queue_cap,
            ws_read_buffer_bytes: d.ws_read_buffer_bytes,
            trust_forwarded_for: d.trust_forwarded_for,
            presence_heartbeat_ms: u64::try_from(d.presence_heartbeat.as_millis())
                .unwrap_or(u64::MAX),
            presence_expiry_ms: u64::try_from(d.presence_expiry.as_millis()).unwrap_or(u64::MAX),
            ip_hash_secret: None,
        }
    }
}

impl RawLivechat {
    /// The validated limits, or `None` when live chat is disabled.
    fn validate(self) -> Result<Option<omni_livechat::LivechatSettings>, SettingsError> {
        if !self.enabled {
            return Ok(None);
        }
        for (key, value) in [
            ("livechat.token_ttl_secs", self.token_ttl_secs),
            ("livechat.max_frame_bytes", self.max_frame_bytes as u64),
            ("livechat.max_text_chars", self.max_text_chars as u64),
            ("livechat.rate_per_minute", u64::from(self.rate_per_minute)),
            ("livechat.burst", u64::from(self.burst)),
            ("livechat.idle_timeout_secs", self.idle_timeout_secs),
            (
                "livechat.max_connections_per_ip",
                u64::from(self.max_connections_per_ip),
            ),
            ("livechat.log_max_messages", self.log_max_messages as u64),
            ("livechat.queue_cap", self.queue_cap as u64),
            (
                "livechat.ws_read_buffer_bytes",
                self.ws_read_buffer_bytes as u64,
            ),
        ] {
            if value == 0 {
                return Err(SettingsError::Invalid {
                    key: key.into(),
                    reason: "must be at least 1".into(),
                });
            }
        }
        if self.presence_heartbeat_ms == 0 {
            return Err(SettingsError::Invalid {
                key: "livechat.presence_heartbeat_ms".into(),
                reason: "must be at least 1".into(),
            });
        }
        if self.presence_expiry_ms < self.presence_heartbeat_ms.saturating_mul(2) {
            return Err(SettingsError::Invalid {
                key: "livechat.presence_expiry_ms".into(),
                reason: "must be at least twice presence_heartbeat_ms (one late heartbeat must not expire a replica)".into(),
            });
        }
        if self.max_frame_bytes > MAX_BODY_LIMIT {
            return Err(SettingsError::Invalid {
                key: "livechat.max_frame_bytes".into(),
                reason: format!("must be at most {MAX_BODY_LIMIT}"),
            });
        }
        Ok(Some(omni_livechat::LivechatSettings {
            token_ttl: Duration::from_secs(self.token_ttl_secs),
            renew_window: Duration::from_secs(self.renew_window_secs),
            max_frame_bytes: self.max_frame_bytes,
            max_text_chars: self.max_text_chars,
            rate_per_minute: self.rate_per_minute,
            burst: self.burst,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            max_connections_per_ip: self.max_connections_per_ip,
            history_window: Duration::from_secs(self.history_window_secs),
            log_max_messages: self.log_max_messages,
            log_ttl: Duration::from_secs(self.log_ttl_secs),
            queue_cap: self.queue_cap,
            ws_read_buffer_bytes: self.ws_read_buffer_bytes,
            trust_forwarded_for: self.trust_forwarded_for,
            presence_heartbeat: Duration::from_millis(self.presence_heartbeat_ms),
            presence_expiry: Duration::from_millis(self.presence_expiry_ms),
            ip_hash_secret: self.ip_hash_secret,
        }))
    }
}

/// `[tenants.<id>.livechat]`: a tenant's website widgets.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTenantLivechat {
    /// Widgets by id (the live chat channel account, `data-widget` in the embed snippet).
    pub widgets: BTreeMap<String, RawWidget>,
}

/// `[tenants.<id>.livechat.widgets.<widget id>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWidget {
    /// Signs visitor tokens (long and random; rotate by changing it: visitors get new tokens).
    pub secret: Secret,
    /// Verifies `user_hash = hex(HMAC-SHA256(identity_secret, user_id))` for logged-in customers.
    #[serde(default)]
    pub identity_secret: Option<Secret>,
    /// Page origins allowed to embed the widget: a list, or a comma-separated string from the
    /// environment. `http://127.0.0.1:*` allows any port; `*` any origin.
    #[serde(deserialize_with = "list_or_csv")]
    pub allowed_origins: Vec<String>,
    /// Opening hours; outside them the widget shows an after-hours notice.
    #[serde(default)]
    pub hours: Option<RawChatHours>,
}

/// Opening hours of a widget's team.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChatHours {
    /// `mon` … `sun`.
    pub days: Vec<String>,
    /// `HH:MM` local.
    pub from: String,
    /// `HH:MM` local, after `from`.
    pub to: String,
    /// Local time's offset from UTC in minutes (Vietnam: 420).
    #[serde(default = "default_vn_offset")]
    pub utc_offset_minutes: i32,
}

fn default_vn_offset() -> i32 {
    420
}

fn list_or_csv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match ListOrCsv::deserialize(d)? {
        ListOrCsv::List(v) => v,
        ListOrCsv::Csv(s) => s
            .split(',')
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect(),
    })
}

fn widget_settings(
    key: &str,
    id: &str,
    raw: RawWidget,
) -> Result<omni_livechat::WidgetSettings, SettingsError> {
    let invalid = |k: &str, reason: &str| SettingsError::Invalid {
        key: if k.is_empty() {
            key.to_owned()
        } else {
            format!("{key}.{k}")
        },
        reason: reason.to_owned(),
    };
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(invalid(
            "",
            "a widget id is 1-64 chars of a-z, 0-9, '-', '_'",
        ));
    }
    if raw.secret.expose().len() < 16 {
        return Err(invalid("secret", "use at least 16 characters"));
    }
    if raw.allowed_origins.is_empty() {
        return Err(invalid(
            "allowed_origins",
            "list the page origins allowed to embed the widget",
        ));
    }
    for o in &raw.allowed_origins {
        let ok = o == "*" || o.starts_with("https://") || o.starts_with("http://");
        if !ok || o.trim_end_matches('/').matches('/').count() != 2 {
            return Err(invalid(
                "allowed_origins",
                &format!("{o:?} is not an origin like https://shop.example.vn"),
            ));
        }
    }
    let hours = match raw.hours {
        None => None,
        Some(h) => {
            let minute = |v: &str, k: &str| -> Result<u32, SettingsError> {
                let (hh, mm) = v.split_once(':').ok_or_else(|| invalid(k, "use HH:MM"))?;
                match (hh.parse::<u32>(), mm.parse::<u32>()) {
                    (Ok(h), Ok(m)) if h <= 24 && m < 60 && h * 60 + m <= 1440 => Ok(h * 60 + m),
                    _ => Err(invalid(k, "use HH:MM")),
                }
            };
            let open = minute(&h.from, "hours.from")?;
            let close = minute(&h.to, "hours.to")?;
            if close <= open {
                return Err(invalid("hours.to", "must be after hours.from"));
            }
            let mut days = [false; 7];
            for d in &h.days {
                let i = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                    .iter()
                    .position(|x| x.eq_ignore_ascii_case(d))
                    .ok_or_else(|| {
                        invalid("hours.days", "use mon, tue, wed, thu, fri, sat, sun")
                    })?;
                days[i] = true;
            }
            if !(-720..=840).contains(&h.utc_offset_minutes) {
                return Err(invalid(
                    "hours.utc_offset_minutes",
                    "must be between -720 and 840",
                ));
            }
            Some(omni_livechat::Hours {
                days,
                open,
                close,
                utc_offset_minutes: h.utc_offset_minutes,
            })
        }
    };
    Ok(omni_livechat::WidgetSettings {
        secret: raw.secret,
        identity_secret: raw.identity_secret.filter(|s| !s.is_empty()),
        allowed_origins: raw.allowed_origins,
        hours,
    })
}

/// `[email]`: where mail content is kept, shared by every mailbox.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawEmail {
    /// Attachments and each mail's original (`<dir>/<tenant>/<event id>/`), never in Kafka.
    pub attachment_dir: std::path::PathBuf,
    /// The URL where a file server publishes `attachment_dir`; without it events carry
    /// `file://` URLs.
    pub attachment_base_url: Option<String>,
    /// Largest attachment stored (a larger one is listed with the original's URL).
    pub max_attachment_bytes: u64,
    /// Largest mail read whole; longer mail is read up to this and marked truncated.
    pub max_message_bytes: u32,
}

impl Default for RawEmail {
    fn default() -> Self {
        Self {
            attachment_dir: "/var/lib/omnirouter/mail".into(),
            attachment_base_url: None,
            max_attachment_bytes: 20 * 1024 * 1024,
            max_message_bytes: 50 * 1024 * 1024,
        }
    }
}

/// `[tenants.<id>.email]`: the tenant's mailboxes, by a short name of your choosing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenantEmail {
    /// Mailboxes by name (`[tenants.<id>.email.mailboxes.support]`).
    pub mailboxes: BTreeMap<String, RawMailbox>,
}

/// One mailbox: read over IMAP, replied to over SMTP from the same address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMailbox {
    /// The mailbox's address (the channel account; replies come from it).
    pub address: String,
    /// The name replies are sent under.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Reading.
    pub imap: RawImap,
    /// Sending; without it replies on this mailbox fail as `account_not_configured`.
    #[serde(default)]
    pub smtp: Option<RawSmtp>,
}

/// `…mailboxes.<name>.imap`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImap {
    /// Server host.
    pub host: String,
    /// Port; default 993 for `tls`, 143 otherwise.
    #[serde(default)]
    pub port: Option<u16>,
    /// `tls` (default), `starttls`, or `plain` (127.0.0.1 only).
    #[serde(default = "default_tls")]
    pub security: String,
    /// Login; default the address.
    #[serde(default)]
    pub user: Option<String>,
    /// Password or app password.
    pub password: Secret,
    /// Folder to watch.
    #[serde(default = "default_inbox")]
    pub folder: String,
    /// Re-issue IDLE this often (at most 29 minutes).
    #[serde(default = "default_idle_refresh")]
    pub idle_refresh_secs: u64,
    /// `new` (default): only mail arriving from the first start on; `all`: import the folder.
    #[serde(default = "default_first_start")]
    pub first_start: String,
}

/// `…mailboxes.<name>.smtp`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    /// Server host.
    pub host: String,
    /// Port; default 465 for `tls`, 587 for `starttls`, 25 for `plain`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `starttls` (default), `tls`, or `plain` (127.0.0.1 only).
    #[serde(default = "default_starttls")]
    pub security: String,
    /// Login; default the address when a password is set.
    #[serde(default)]
    pub user: Option<String>,
    /// Password or app password; none for an unauthenticated relay.
    #[serde(default)]
    pub password: Option<Secret>,
}

fn default_tls() -> String {
    "tls".into()
}
fn default_starttls() -> String {
    "starttls".into()
}
fn default_inbox() -> String {
    "INBOX".into()
}
fn default_idle_refresh() -> u64 {
    25 * 60
}
fn default_first_start() -> String {
    "new".into()
}

fn email_mailboxes(
    key: &str,
    tenant: &TenantId,
    raw: RawTenantEmail,
    email: &RawEmail,
) -> Result<Vec<omni_email::MailboxSettings>, SettingsError> {
    use omni_email::{AttachmentStore, FirstStart, ImapSettings, Security, SmtpSettings};
    let mut out = Vec::new();
    for (name, m) in raw.mailboxes {
        let base = format!("{key}.email.mailboxes.{name}");
        let invalid = |k: &str, reason: String| SettingsError::Invalid {
            key: format!("{base}.{k}"),
            reason,
        };
        let security = |k: &str, v: &str| {
            Security::parse(v)
                .ok_or_else(|| invalid(k, format!("{v:?}: use tls, starttls or plain")))
        };
        let imap_security = security("imap.security", &m.imap.security)?;
        let mut imap = ImapSettings::new(
            m.imap.host,
            m.imap.port.unwrap_or(match imap_security {
                Security::Tls => 993,
                _ => 143,
            }),
            imap_security,
            m.imap.user.unwrap_or_else(|| m.address.clone()),
            m.imap.password,
        );
        imap.folder = m.imap.folder;
        if m.imap.idle_refresh_secs == 0 || m.imap.idle_refresh_secs > 29 * 60 {
            return Err(invalid(
                "imap.idle_refresh_secs",
                "between 1 and 1740 (RFC 2177: at most 29 minutes)".into(),
            ));
        }
        imap.idle_refresh = Duration::from_secs(m.imap.idle_refresh_secs);
        imap.max_message_bytes = email.max_message_bytes;
        imap.first_start = match m.imap.first_start.as_str() {
            "new" => FirstStart::New,
            "all" => FirstStart::All,
            other => {
                return Err(invalid(
                    "imap.first_start",
                    format!("{other:?}: use new or all"),
                ))
            }
        };
        let smtp = match m.smtp {
            Some(s) => {
                let sec = security("smtp.security", &s.security)?;
                Some(SmtpSettings {
                    port: s.port.unwrap_or(match sec {
                        Security::Tls => 465,
                        Security::StartTls => 587,
                        Security::Plain => 25,
                    }),
                    host: s.host,
                    security: sec,
                    user: s
                        .user
                        .or_else(|| s.password.as_ref().map(|_| m.address.clone())),
                    password: s.password,
                    timeout: Duration::from_secs(30),
                })
            }
            None => None,
        };
        let settings = omni_email::MailboxSettings {
            tenant: tenant.clone(),
            address: m.address,
            display_name: m.display_name,
            imap,
            smtp,
            attachments: AttachmentStore {
                dir: email.attachment_dir.clone(),
                base_url: email.attachment_base_url.clone(),
                max_attachment_bytes: email.max_attachment_bytes,
            },
        };
        settings.validate().map_err(|e| match e {
            omni_email::EmailError::Config { key, reason } => invalid(&key, reason),
            other => invalid("", other.to_string()),
        })?;
        out.push(settings);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_str(toml: &str) -> Result<Settings, SettingsError> {
        let mut f = tempfile_in_target();
        f.1.write_all(toml.as_bytes()).unwrap();
        let r = RawSettings::load(Some(&f.0)).and_then(RawSettings::validate);
        let _ = std::fs::remove_file(&f.0);
        r
    }

    fn tempfile_in_target() -> (std::path::PathBuf, std::fs::File) {
        let path = std::env::temp_dir().join(format!(
            "omni-settings-{}-{}.toml",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let file = std::fs::File::create(&path).unwrap();
        (path, file)
    }

    #[test]
    fn shipped_default_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/default.toml");
        let settings = RawSettings::load(Some(&path)).unwrap().validate().unwrap();
        assert!(!settings.api_tenants.is_empty());
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = load_str(
            "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n[tenants.a]\napi_token=\"t\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn invalid_values_name_their_key() {
        let err = load_str("[server]\nlisten = \"nowhere\"\n[tenants.a]\napi_token=\"t\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.listen"), "{err}");
        let err = load_str("[tenants.Bad]\napi_token=\"t\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tenants.Bad"), "{err}");
        let err = load_str("[tenants.a]\n").unwrap_err().to_string();
        assert!(err.contains("tenants.a"), "{err}");
        let err = load_str("[kafka]\npartitions = 0\n[tenants.a]\napi_token=\"t\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.partitions"), "{err}");
    }

    #[test]
    fn sms_settings_are_validated_naming_the_key() {
        let base = "[tenants.a.sms]\npublic_base_url = \"https://sms.example.vn/\"\n\
            callback_token = \"t\"\n[tenants.a.sms.twilio]\naccount_sid = \"AC1\"\n\
            auth_token = \"x\"\n";
        let ok = load_str(&format!(
            "{base}[tenants.a.sms.numbers.\"0281234567\"]\nprovider = \"twilio\"\n"
        ))
        .unwrap();
        let (_, sms) = &ok.sms_tenants[0];
        assert_eq!(sms.public_base_url, "https://sms.example.vn");
        assert!(
            sms.numbers.contains_key("+84281234567"),
            "numbers are normalized"
        );
        for (extra, key) in [
            (
                "[tenants.a.sms.numbers.\"0281234567\"]\nprovider = \"vonage\"\n",
                "tenants.a.sms.numbers.0281234567.provider",
            ),
            (
                "[tenants.a.sms.numbers.\"OMNI CARE\"]\nprovider = \"esms\"\n",
                "tenants.a.sms.numbers.OMNI CARE.provider",
            ),
            (
                "[tenants.a.sms.vonage]\napi_key = \"k\"\napi_secret = \"s\"\nsignature_method = \"sha256\"\n",
                "tenants.a.sms.vonage.signature_method",
            ),
        ] {
            let err = load_str(&format!("{base}{extra}")).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        let err = load_str(
            "[tenants.a.sms]\npublic_base_url = \"ftp://x\"\n[tenants.a.sms.twilio]\naccount_sid = \"AC1\"\nauth_token = \"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("tenants.a.sms.public_base_url"), "{err}");
    }

    #[test]
    fn secrets_do_not_appear_in_debug_output() {
        let s = load_str("[tenants.a]\napi_token=\"sup3r-s3cret\"\n").unwrap();
        assert!(!format!("{s:?}").contains("sup3r-s3cret"));
    }
}
