//! Configuration: built-in defaults, then the file given with `--config`, then environment
//! overrides `OMNI__SECTION__KEY`. Raw serde structs with `deny_unknown_fields` are validated
//! once into [`Settings`]; after start-up nothing can be invalid.

use omni_bus::BusConfig;
use omni_channel::ApiCredentials;
use omni_core::{Secret, TenantId};
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
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
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
}

/// Validated settings: what the daemon runs with.
#[derive(Debug)]
pub struct Settings {
    /// HTTP listen address.
    pub listen: SocketAddr,
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
}

/// Validated `[router]` settings plus every tenant's routing configuration.
pub type RouterSettings = omni_router::RouterSettings;

/// Largest body limit allowed (16 MiB): attachments travel by URL, not inline.
const MAX_BODY_LIMIT: usize = 16 * 1024 * 1024;

impl RawSettings {
    /// Loads defaults, then `file` (if given), then `OMNI__…` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("OMNI")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(false),
        );
        Ok(builder.build()?.try_deserialize()?)
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
        for (name, raw) in self.tenants {
            let key = format!("tenants.{name}");
            let tenant = TenantId::new(name.clone()).map_err(|e| invalid(&key, e.to_string()))?;
            let token = raw.api_token.filter(|s| !s.is_empty());
            let hmac = raw.api_hmac_secret.filter(|s| !s.is_empty());
            if token.is_none() && hmac.is_none() {
                return Err(invalid(
                    &key,
                    "set api_token and/or api_hmac_secret (or remove the tenant)".into(),
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
            api_tenants.push((
                tenant,
                ApiCredentials {
                    bearer_token: token,
                    hmac_secret: hmac,
                },
            ));
        }
        if api_tenants.is_empty() {
            return Err(invalid("tenants", "configure at least one tenant".into()));
        }
        Ok(Settings {
            listen,
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
        })
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
    fn secrets_do_not_appear_in_debug_output() {
        let s = load_str("[tenants.a]\napi_token=\"sup3r-s3cret\"\n").unwrap();
        assert!(!format!("{s:?}").contains("sup3r-s3cret"));
    }
}
