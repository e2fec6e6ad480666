//! The `[media]` configuration: raw serde structs (unknown keys refused) and their
//! validation into typed settings, with no I/O.
//!
//! ```toml
//! [media]
//! store = "s3"            # "none" (default: events keep provider URLs), "directory", "s3"
//! max_bytes = 26214400    # per-attachment limit, unless the channel's own is set:
//! channel_max_bytes = { whatsapp = 104857600, sms = 5242880 }
//! dir = "/var/lib/omnirouter/media"            # store = "directory"
//! base_url = "https://media.example.com"       # where a web server serves `dir`
//!
//! [media.s3]
//! bucket = "omnirouter-media"
//! region = "us-east-1"
//! endpoint = "https://s3.example.com"          # S3-compatible servers; absent for AWS
//! access_key_id = "…"
//! secret_access_key = "…"
//! allow_http = false
//! virtual_hosted_style = false
//! public_base_url = "https://cdn.example.com"  # default <endpoint>/<bucket>
//!
//! [media.fetch]
//! timeout_secs = 30
//! max_redirects = 3
//! allow_networks = []     # e.g. ["10.20.0.0/16"] for an internal media host
//! ```
//!
//! `store` defaults to `"none"` so existing deployments keep working unchanged; the safe
//! fetcher applies whatever the store (outbound attachments are always fetched through it).

use ipnet::IpNet;
use omni_core::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::addr::AllowedNetworks;
use crate::error::MediaError;
use crate::fetch::FetchPolicy;
use crate::s3::S3Settings;

/// Default per-attachment limit: 25 MiB, the largest attachment most channels accept.
pub const DEFAULT_MAX_BYTES: u64 = 25 * 1024 * 1024;

/// `[media]` as written by the operator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Which store keeps copies of inbound attachments.
    pub store: StoreKind,
    /// The directory of `store = "directory"`.
    pub dir: Option<PathBuf>,
    /// Where a web server serves `dir`; without it URLs are `file://` (this host only).
    pub base_url: Option<String>,
    /// Per-attachment limit for channels that set none of their own.
    pub max_bytes: u64,
    /// Per-attachment limits by channel kind (`whatsapp`, `sms`, …), over `max_bytes`.
    pub channel_max_bytes: BTreeMap<String, u64>,
    /// `[media.s3]`, required by `store = "s3"`.
    pub s3: Option<S3Config>,
    /// `[media.fetch]`: limits of every fetch, inbound and outbound.
    pub fetch: FetchConfig,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::None,
            dir: None,
            base_url: None,
            max_bytes: DEFAULT_MAX_BYTES,
            channel_max_bytes: BTreeMap::new(),
            s3: None,
            fetch: FetchConfig::default(),
        }
    }
}

/// The store backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// No copies: events carry the provider's URLs (which may expire), as before.
    #[default]
    None,
    /// A local directory.
    Directory,
    /// S3-compatible object storage.
    S3,
}

/// `[media.s3]` as written by the operator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket (created beforehand; the store never creates one).
    pub bucket: String,
    /// The signing region.
    #[serde(default = "default_region")]
    pub region: String,
    /// An S3-compatible server's URL; absent for AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: Secret,
    /// Allows a plain-http endpoint; for local servers only.
    #[serde(default)]
    pub allow_http: bool,
    /// Bucket-in-host-name addressing; path style (the default) suits every S3-compatible
    /// server.
    #[serde(default)]
    pub virtual_hosted_style: bool,
    /// The base of the URLs events carry; default `<endpoint>/<bucket>`.
    #[serde(default)]
    pub public_base_url: Option<String>,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

/// `[media.fetch]` as written by the operator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetchConfig {
    /// Bound on a whole fetch, body included, in seconds.
    pub timeout_secs: u64,
    /// Redirects followed.
    pub max_redirects: u8,
    /// Networks (CIDR, or a bare address) allowed although private, loopback, link-local…
    /// A list, or one comma-separated string (as an environment variable gives it).
    #[serde(deserialize_with = "one_or_many")]
    pub allow_networks: Vec<String>,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            timeout_secs: 30,
            max_redirects: 3,
            allow_networks: Vec::new(),
        }
    }
}

/// Validated media settings, ready for [`crate::Media::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSettings {
    /// The store backend.
    pub store: StoreSettings,
    /// The fetch policy.
    pub fetch: FetchPolicy,
    /// Per-attachment limit for channels that set none.
    pub max_bytes: u64,
    /// Per-attachment limits by channel kind's wire name.
    pub channel_max_bytes: BTreeMap<String, u64>,
}

impl MediaSettings {
    /// The per-attachment limit of a channel kind (its wire name, e.g. `whatsapp`).
    pub fn max_bytes_for(&self, channel: &str) -> u64 {
        self.channel_max_bytes
            .get(channel)
            .copied()
            .unwrap_or(self.max_bytes)
    }
}

impl Default for MediaSettings {
    /// No store, the strict fetch policy: what a channel built without `[media]` uses.
    fn default() -> Self {
        Self {
            store: StoreSettings::None,
            fetch: FetchPolicy::default(),
            max_bytes: DEFAULT_MAX_BYTES,
            channel_max_bytes: BTreeMap::new(),
        }
    }
}

/// A validated store choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSettings {
    /// Keep provider URLs.
    None,
    /// A local directory.
    Directory {
        /// The directory.
        dir: PathBuf,
        /// Where it is served, without a trailing slash.
        base_url: Option<String>,
    },
    /// S3-compatible object storage.
    S3(S3Settings),
}

impl MediaConfig {
    /// Checks the configuration and builds typed settings; no file or network is touched.
    pub fn validate(&self) -> Result<MediaSettings, MediaError> {
        let bad = |msg: String| MediaError::Config(msg);
        if self.max_bytes == 0 {
            return Err(bad("media.max_bytes must be positive".into()));
        }
        if let Some((kind, _)) = self.channel_max_bytes.iter().find(|(_, n)| **n == 0) {
            return Err(bad(format!(
                "media.channel_max_bytes.{kind} must be positive"
            )));
        }
        let fetch = self.fetch.validate()?;
        let store = match self.store {
            StoreKind::None => StoreSettings::None,
            StoreKind::Directory => {
                let dir = self
                    .dir
                    .clone()
                    .filter(|d| !d.as_os_str().is_empty())
                    .ok_or_else(|| bad("media.store = \"directory\" needs media.dir".into()))?;
                let base_url = self
                    .base_url
                    .as_deref()
                    .map(|u| http_url("media.base_url", u, true))
                    .transpose()?;
                StoreSettings::Directory { dir, base_url }
            }
            StoreKind::S3 => {
                let s3 = self
                    .s3
                    .as_ref()
                    .ok_or_else(|| bad("media.store = \"s3\" needs a [media.s3] table".into()))?;
                StoreSettings::S3(s3.validate(fetch.timeout)?)
            }
        };
        Ok(MediaSettings {
            store,
            fetch,
            max_bytes: self.max_bytes,
            channel_max_bytes: self.channel_max_bytes.clone(),
        })
    }
}

impl S3Config {
    fn validate(&self, timeout: Duration) -> Result<S3Settings, MediaError> {
        let bad = |msg: &str| MediaError::Config(msg.to_owned());
        if self.bucket.is_empty() {
            return Err(bad("media.s3.bucket is empty"));
        }
        if self.region.is_empty() {
            return Err(bad("media.s3.region is empty"));
        }
        if self.access_key_id.is_empty() || self.secret_access_key.is_empty() {
            return Err(bad(
                "media.s3.access_key_id and media.s3.secret_access_key are required",
            ));
        }
        let endpoint = self
            .endpoint
            .as_deref()
            .map(|u| http_url("media.s3.endpoint", u, self.allow_http))
            .transpose()?;
        let public_base_url = match self.public_base_url.as_deref() {
            Some(u) => http_url("media.s3.public_base_url", u, true)?,
            None => S3Settings::default_public_base_url(
                &self.bucket,
                &self.region,
                endpoint.as_deref(),
                self.virtual_hosted_style,
            ),
        };
        Ok(S3Settings {
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            endpoint,
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            allow_http: self.allow_http,
            virtual_hosted_style: self.virtual_hosted_style,
            public_base_url,
            timeout,
        })
    }
}

impl FetchConfig {
    fn validate(&self) -> Result<FetchPolicy, MediaError> {
        if self.timeout_secs == 0 {
            return Err(MediaError::Config(
                "media.fetch.timeout_secs must be positive".into(),
            ));
        }
        let networks = self
            .allow_networks
            .iter()
            .map(|s| parse_network(s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FetchPolicy {
            timeout: Duration::from_secs(self.timeout_secs),
            max_redirects: self.max_redirects,
            allowed_networks: AllowedNetworks::new(networks),
        })
    }
}

/// A list of strings, or one string of comma-separated items.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

/// A CIDR network, or a bare address as its own /32 or /128.
fn parse_network(s: &str) -> Result<IpNet, MediaError> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            MediaError::Config(format!(
                "media.fetch.allow_networks: {s:?} is not a network like \"10.0.0.0/8\""
            ))
        })
}

/// An absolute http(s) URL without a trailing slash; plain http only where allowed.
fn http_url(field: &str, value: &str, allow_http: bool) -> Result<String, MediaError> {
    let url = url::Url::parse(value)
        .map_err(|e| MediaError::Config(format!("{field}: {value:?} is not a url: {e}")))?;
    let ok = match url.scheme() {
        "https" => true,
        "http" => allow_http,
        _ => false,
    };
    if !ok || url.host().is_none() {
        let allowed = if allow_http { "http(s)" } else { "https" };
        return Err(MediaError::Config(format!(
            "{field}: {value:?} must be an {allowed} url"
        )));
    }
    Ok(value.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_like: serde_json::Value) -> Result<MediaConfig, serde_json::Error> {
        serde_json::from_value(toml_like)
    }

    #[test]
    fn the_default_keeps_provider_urls_and_refuses_special_networks() {
        let settings = MediaConfig::default().validate().unwrap();
        assert_eq!(settings.store, StoreSettings::None);
        assert_eq!(settings.fetch, FetchPolicy::default());
        assert_eq!(settings.fetch.timeout, Duration::from_secs(30));
        assert_eq!(settings.fetch.max_redirects, 3);
        assert!(settings.fetch.allowed_networks.networks().is_empty());
        assert_eq!(settings.max_bytes, DEFAULT_MAX_BYTES);
    }

    #[test]
    fn s3_settings_default_the_region_and_public_url() {
        let config = parse(serde_json::json!({
            "store": "s3",
            "s3": {
                "bucket": "media",
                "endpoint": "http://127.0.0.1:9000/",
                "access_key_id": "k",
                "secret_access_key": "s",
                "allow_http": true
            },
            "fetch": { "timeout_secs": 5, "allow_networks": ["127.0.0.1/32", "::1"] }
        }))
        .unwrap();
        let settings = config.validate().unwrap();
        let StoreSettings::S3(s3) = settings.store else {
            panic!("not s3: {:?}", settings.store)
        };
        assert_eq!(s3.region, "us-east-1");
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.public_base_url, "http://127.0.0.1:9000/media");
        assert_eq!(s3.timeout, Duration::from_secs(5));
        assert_eq!(settings.fetch.allowed_networks.networks().len(), 2);
    }

    #[test]
    fn invalid_configs_are_refused_with_the_field_named() {
        for (config, needle) in [
            (serde_json::json!({ "store": "directory" }), "media.dir"),
            (serde_json::json!({ "store": "s3" }), "[media.s3]"),
            (
                serde_json::json!({ "store": "directory", "dir": "/m", "base_url": "ftp://x" }),
                "media.base_url",
            ),
            (
                serde_json::json!({ "store": "s3", "s3": {
                    "bucket": "b", "access_key_id": "k", "secret_access_key": "s",
                    "endpoint": "http://minio:9000" } }),
                "media.s3.endpoint",
            ),
            (
                serde_json::json!({ "fetch": { "allow_networks": ["10.0.0.0/33"] } }),
                "allow_networks",
            ),
            (
                serde_json::json!({ "fetch": { "timeout_secs": 0 } }),
                "timeout_secs",
            ),
        ] {
            let err = parse(config.clone()).unwrap().validate().unwrap_err();
            assert!(err.to_string().contains(needle), "{config}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(parse(serde_json::json!({ "stor": "s3" })).is_err());
        assert!(parse(serde_json::json!({ "fetch": { "timeout": 3 } })).is_err());
        assert!(parse(serde_json::json!({ "store": "ftp" })).is_err());
    }
}
