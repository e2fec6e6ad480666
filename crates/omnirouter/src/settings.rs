//! Configuration: built-in defaults, then the file given with `--config`, then environment
//! overrides `OMNI__SECTION__KEY`. Raw serde structs with `deny_unknown_fields` are validated
//! once into [`Settings`]; after start-up nothing can be invalid.

use omni_bus::BusConfig;
use omni_channel::config::MAX_BODY_BYTES as MAX_BODY_LIMIT;
use omni_channel::{ApiCredentials, InvalidKey};
use omni_core::{Secret, TenantId};
use omni_email::config::{RawEmail, RawTenantEmail};
use omni_livechat::config::{RawLivechat, RawTenantLivechat};
use omni_sms::settings::{RawSms, RawSmsApi, SmsApiSettings, SmsTenant};
use omni_social::messenger::config::{RawMessenger, RawMessengerApi};
use omni_social::messenger::{MessengerSendSettings, MessengerTenant};
use omni_social::whatsapp::config::{RawWhatsapp, RawWhatsappApi};
use omni_social::whatsapp::{WhatsappSendSettings, WhatsappTenant};
use omni_social::zalo::config::{RawZalo, RawZaloApi};
use omni_social::zalo::token::RefreshSettings;
use omni_social::zalo::{ZaloSendSettings, ZaloTenant};
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

impl From<InvalidKey> for SettingsError {
    /// A channel's own validation names the key the same way.
    fn from(e: InvalidKey) -> Self {
        Self::Invalid {
            key: e.key,
            reason: e.reason,
        }
    }
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
    /// `[telemetry]`.
    pub telemetry: RawTelemetry,
    /// `[router]`.
    pub router: RawRouter,
    /// `[outbound]`.
    pub outbound: RawOutbound,
    /// `[messenger]`.
    pub messenger: RawMessengerApi,
    /// `[whatsapp]`.
    pub whatsapp: RawWhatsappApi,
    /// `[media]`: the store inbound attachments are copied into, and the safe fetch policy.
    pub media: omni_media::MediaConfig,
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
    /// reads are forwarded to the replica that owns it, at its agent API (the admin listener
    /// when there is one). Defaults to `http://<admin_listen or listen>` when that names one
    /// interface; with `0.0.0.0` set it, or reads of tenants owned by this replica cannot be
    /// forwarded to it.
    pub advertised_url: Option<String>,
    /// A second address for what only operators, Prometheus and the CRM should reach:
    /// `/metrics`, `/readyz` and the agent API (`/healthz` is on both). Unset: everything is on
    /// `listen`.
    pub admin_listen: Option<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            advertised_url: None,
            admin_listen: None,
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
    /// Webhook and API requests handled at once by this instance; more are answered 503
    /// with `Retry-After` (load shedding), so overload cannot grow memory without bound.
    pub max_in_flight: usize,
}

impl Default for RawIngress {
    fn default() -> Self {
        Self {
            dedupe_window_secs: 600,
            dedupe_capacity: 200_000,
            max_in_flight: 2048,
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

/// `[telemetry]`: OpenTelemetry traces.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTelemetry {
    /// OTLP/HTTP base URL of a collector (`http://otel-collector:4318`); spans are posted as
    /// JSON to `<it>/v1/traces`. Unset: nothing is exported (records still carry
    /// `traceparent`).
    pub otlp_endpoint: Option<String>,
    /// `service.name` on every span.
    pub service_name: String,
    /// How often batched spans are sent, in milliseconds.
    pub export_interval_ms: u64,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "omnirouter".into(),
            export_interval_ms: 5000,
        }
    }
}

impl RawTelemetry {
    fn validate(&self) -> Result<crate::telemetry::TelemetrySettings, SettingsError> {
        let endpoint = self
            .otlp_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty());
        if let Some(e) = endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(invalid(
                    "telemetry.otlp_endpoint",
                    "must be an http:// or https:// URL (OTLP over HTTP)".into(),
                ));
            }
        }
        if self.export_interval_ms == 0 {
            return Err(invalid(
                "telemetry.export_interval_ms",
                "must be at least 1".into(),
            ));
        }
        if self.service_name.trim().is_empty() {
            return Err(invalid(
                "telemetry.service_name",
                "must not be empty".into(),
            ));
        }
        Ok(crate::telemetry::TelemetrySettings {
            otlp_endpoint: endpoint.map(str::to_owned),
            service_name: self.service_name.clone(),
            export_interval: std::time::Duration::from_millis(self.export_interval_ms),
        })
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
    /// Replay window of `X-Omni-Timestamp` on signed API requests (default 300 s, 0 = off).
    pub api_signature_max_age_secs: Option<u64>,
    /// Refuse signed API requests with neither `X-Omni-Timestamp` nor `client_message_id`.
    pub api_strict_replay: bool,
    /// Bearer token of the agent/operator API (`/v1/tenants/<id>/…`).
    pub agent_api_token: Option<Secret>,
    /// Queues, rules and strategies; without it, one `default` queue, least loaded.
    pub routing: Option<omni_routing::RoutingConfig>,
    /// Facebook Messenger pages.
    pub messenger: Option<RawMessenger>,
    /// WhatsApp business numbers.
    pub whatsapp: Option<RawWhatsapp>,
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
    /// The admin listener (metrics, readiness, the agent API), when apart from `listen`.
    pub admin_listen: Option<SocketAddr>,
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
    /// Webhook and API requests handled at once; more are shed with 503.
    pub max_in_flight: usize,
    /// Kafka.
    pub kafka: BusConfig,
    /// Log filter.
    pub log_level: String,
    /// Traces: where they are exported, if anywhere.
    pub telemetry: crate::telemetry::TelemetrySettings,
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
    /// Tenants with WhatsApp numbers.
    pub whatsapp_tenants: Vec<(TenantId, WhatsappTenant)>,
    /// Tenants with Zalo OAs.
    pub zalo_tenants: Vec<(TenantId, ZaloTenant)>,
    /// The Graph API.
    pub messenger_api: MessengerSendSettings,
    /// The WhatsApp Cloud API.
    pub whatsapp_api: WhatsappSendSettings,
    /// The media store and the safe fetch policy.
    pub media: omni_media::MediaSettings,
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
    loaded(RawSettings::sources(file).build()?)
}

/// Reads and validates config text exactly as [`load`] reads a TOML file, without the
/// environment: public so the `config_file` fuzz target drives the same merge and checks.
pub fn load_toml(text: &str) -> Result<Loaded, SettingsError> {
    let source = config::File::from_str(text, config::FileFormat::Toml);
    loaded(config::Config::builder().add_source(source).build()?)
}

fn loaded(config: config::Config) -> Result<Loaded, SettingsError> {
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

    /// Checks every value and builds [`Settings`]; the error names the key to fix. Each
    /// channel checks its own sections (`omni_social`, `omni_sms`, `omni_email`,
    /// `omni_livechat`: their `config`); this checks the rest and puts them together.
    pub fn validate(self) -> Result<Settings, SettingsError> {
        let (listen, admin_listen) = self.server.validate()?;
        if self.ingress.max_in_flight == 0 {
            return Err(invalid(
                "ingress.max_in_flight",
                "must be at least 1".into(),
            ));
        }
        if self.ingress.dedupe_capacity == 0 {
            return Err(invalid(
                "ingress.dedupe_capacity",
                "must be at least 1".into(),
            ));
        }
        self.kafka.validate()?;
        self.router.validate()?;
        let mut tenants = Tenants::default();
        for (name, raw) in self.tenants {
            tenants.add(name, raw, &self.email)?;
        }
        let outbound = self.outbound.validate()?;
        let messenger_api = self.messenger.validate()?;
        let whatsapp_api = self.whatsapp.validate()?;
        let media = self
            .media
            .validate()
            .map_err(|e| invalid("media", e.to_string()))?;
        let zalo = self.zalo.validate(!tenants.zalo.is_empty())?;
        let (sms_api, sms_concat) = self.sms.validate()?;
        if tenants.count == 0 {
            return Err(invalid("tenants", "configure at least one tenant".into()));
        }
        let livechat_enabled = self.livechat.enabled;
        let livechat = self.livechat.validate()?;
        let livechat =
            (livechat.is_some() && !tenants.widgets.is_empty()).then(|| LivechatConfig {
                settings: livechat.unwrap_or_default(),
                widgets: tenants.widgets,
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
            admin_listen,
            advertised_url,
            max_body_bytes: self.server.max_body_bytes,
            shutdown_grace: Duration::from_secs(self.server.shutdown_grace_secs),
            dedupe_window: Duration::from_secs(self.ingress.dedupe_window_secs),
            dedupe_capacity: self.ingress.dedupe_capacity,
            max_in_flight: self.ingress.max_in_flight,
            kafka: self.kafka,
            log_level: self.log.level,
            telemetry: self.telemetry.validate()?,
            api_tenants: tenants.api,
            agent_tokens: tenants.agent_tokens,
            response_buckets: self.router.response_buckets_secs.clone(),
            router: self.router.enabled.then(|| omni_router::RouterSettings {
                group_id: self.router.group_id,
                tick_interval: Duration::from_millis(self.router.tick_interval_ms),
                tenants: tenants.routing,
            }),
            messenger_tenants: tenants.messenger,
            whatsapp_tenants: tenants.whatsapp,
            whatsapp_api,
            media,
            zalo_tenants: tenants.zalo,
            messenger_api,
            zalo_api: zalo.send,
            zalo_refresh: zalo.refresh,
            zalo_sealing: zalo.sealing,
            sms_tenants: tenants.sms,
            sms_api,
            sms_concat,
            outbound,
            mailboxes: tenants.mailboxes,
            livechat,
            livechat_enabled,
        })
    }
}

fn invalid(key: &str, reason: String) -> SettingsError {
    SettingsError::Invalid {
        key: key.to_owned(),
        reason,
    }
}

impl RawServer {
    /// The listen and admin addresses, once the section is checked.
    fn validate(&self) -> Result<(SocketAddr, Option<SocketAddr>), SettingsError> {
        let listen: SocketAddr = self.listen.parse().map_err(|e| {
            invalid(
                "server.listen",
                format!("{:?} is not host:port ({e})", self.listen),
            )
        })?;
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_BODY_LIMIT {
            return Err(invalid(
                "server.max_body_bytes",
                format!("must be between 1 and {MAX_BODY_LIMIT}"),
            ));
        }
        let admin = match self.admin_listen.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => {
                let admin: SocketAddr = text.parse().map_err(|e| {
                    invalid(
                        "server.admin_listen",
                        format!("{text:?} is not host:port ({e})"),
                    )
                })?;
                if admin.port() == listen.port() {
                    return Err(invalid(
                        "server.admin_listen",
                        format!("must use another port than server.listen ({listen})"),
                    ));
                }
                Some(admin)
            }
        };
        Ok((listen, admin))
    }
}

impl RawRouter {
    fn validate(&self) -> Result<(), SettingsError> {
        let buckets = &self.response_buckets_secs;
        if buckets.is_empty()
            || buckets.windows(2).any(|w| w[0] >= w[1])
            || buckets.iter().any(|b| !b.is_finite() || *b <= 0.0)
        {
            return Err(invalid(
                "router.response_buckets_secs",
                "give increasing positive bounds in seconds".into(),
            ));
        }
        if self.tick_interval_ms == 0 {
            return Err(invalid(
                "router.tick_interval_ms",
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

impl RawOutbound {
    /// `None` when this daemon sends no replies.
    fn validate(&self) -> Result<Option<OutboundSettings>, SettingsError> {
        if self.max_in_flight == 0 || self.max_attempts == 0 {
            return Err(invalid(
                "outbound.max_in_flight / outbound.max_attempts",
                "must be at least 1".into(),
            ));
        }
        Ok(self.enabled.then(|| OutboundSettings {
            group_id: self.group_id.clone(),
            max_in_flight: self.max_in_flight,
            policy: omni_channel::RetryPolicy {
                max_attempts: self.max_attempts,
                initial_backoff: Duration::from_millis(self.initial_backoff_ms),
                max_backoff: Duration::from_millis(self.max_backoff_ms),
                deadline: Duration::from_secs(self.deadline_secs),
            },
            max_age: Duration::from_secs(self.max_age_secs),
        }))
    }
}

/// Every tenant's validated settings, collected per channel as the tenants are read.
#[derive(Default)]
struct Tenants {
    count: usize,
    api: Vec<(TenantId, ApiCredentials)>,
    agent_tokens: Vec<(TenantId, Secret)>,
    routing: BTreeMap<TenantId, omni_routing::RoutingConfig>,
    messenger: Vec<(TenantId, MessengerTenant)>,
    whatsapp: Vec<(TenantId, WhatsappTenant)>,
    zalo: Vec<(TenantId, ZaloTenant)>,
    sms: Vec<(TenantId, SmsTenant)>,
    mailboxes: Vec<omni_email::MailboxSettings>,
    widgets: omni_livechat::Widgets,
}

impl Tenants {
    /// Checks `[tenants.<name>]`, each channel by its own crate, and adds what it configures.
    fn add(&mut self, name: String, raw: RawTenant, email: &RawEmail) -> Result<(), SettingsError> {
        let key = format!("tenants.{name}");
        let tenant = TenantId::new(name).map_err(|e| invalid(&key, e.to_string()))?;
        self.count += 1;
        let token = raw.api_token.filter(|s| !s.is_empty());
        let hmac = raw.api_hmac_secret.filter(|s| !s.is_empty());
        let mut has_channel = false;
        if let Some(m) = raw.messenger {
            self.messenger.push((tenant.clone(), m.validate(&key)?));
            has_channel = true;
        }
        if let Some(w) = raw.whatsapp {
            self.whatsapp.push((tenant.clone(), w.validate(&key)?));
            has_channel = true;
        }
        if let Some(z) = raw.zalo {
            self.zalo.push((tenant.clone(), z.validate(&key)?));
            has_channel = true;
        }
        if let Some(sms) = raw.sms {
            self.sms.push((tenant.clone(), sms.validate(&key)?));
            has_channel = true;
        }
        if let Some(mail) = raw.email {
            let found = mail.validate(&key, &tenant, email)?;
            has_channel |= !found.is_empty();
            self.mailboxes.extend(found);
        }
        if let Some(chat) = raw.livechat {
            has_channel |= chat.validate_into(&key, &tenant, &mut self.widgets)?;
        }
        if token.is_none() && hmac.is_none() && !has_channel {
            return Err(invalid(
                &key,
                "give the tenant a channel: api_token and/or api_hmac_secret, messenger, whatsapp, zalo, sms, email or livechat"
                    .into(),
            ));
        }
        if let Some(agent) = raw.agent_api_token.filter(|s| !s.is_empty()) {
            self.agent_tokens.push((tenant.clone(), agent));
        }
        let config = raw.routing.unwrap_or_else(|| {
            omni_routing::RoutingConfig::single_queue(omni_routing::QueueConfig::default())
        });
        config
            .validate()
            .map_err(|e| invalid(&format!("{key}.routing.{}", e.key), e.reason.clone()))?;
        self.routing.insert(tenant.clone(), config);
        if token.is_some() || hmac.is_some() {
            self.api.push((
                tenant,
                ApiCredentials {
                    replay_window: omni_channel::ReplayWindow::from_config_secs(
                        raw.api_signature_max_age_secs,
                    ),
                    strict_replay: raw.api_strict_replay,
                    ..ApiCredentials::new(token, hmac)
                },
            ));
        }
        Ok(())
    }
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
    fn config_text_loads_as_the_same_file_does() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/default.toml");
        let from_file = load(Some(&path)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let from_text = load_toml(&text).unwrap();
        assert_eq!(from_text.tree, from_file.tree);
        assert_eq!(
            from_text.settings.api_tenants.len(),
            from_file.settings.api_tenants.len()
        );
        let err = load_toml("[server]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(err.to_string().contains("server.listen"), "{err}");
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
    fn a_channel_error_names_the_full_key() {
        // Each channel's own validation is tested in its crate; this checks the delegation.
        let err = load_str(
            "[tenants.a.sms]\npublic_base_url = \"ftp://x\"\n[tenants.a.sms.twilio]\naccount_sid = \"AC1\"\nauth_token = \"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("invalid config key tenants.a.sms.public_base_url"),
            "{err}"
        );
        let err = load_str("[zalo]\ntimeout_secs = 0\n[tenants.a]\napi_token=\"t\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("zalo.timeout_secs"), "{err}");
    }

    #[test]
    fn secrets_do_not_appear_in_debug_output() {
        let s = load_str("[tenants.a]\napi_token=\"sup3r-s3cret\"\n").unwrap();
        assert!(!format!("{s:?}").contains("sup3r-s3cret"));
    }
}
