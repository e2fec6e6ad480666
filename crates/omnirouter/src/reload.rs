//! Config reload without a restart.
//!
//! On SIGHUP, and when the content of the `--config` file changes (polled every second; a
//! change is acted on once the content held still for one poll, so a file caught half-written
//! is not refused), the daemon reads its config again with [`settings::load`], the function
//! `check-config` and start-up use. A config that does not validate is refused: an `error!`
//! naming the bad key, and the config in force keeps running. A valid one is applied:
//!
//! - **In place:** tenants added, changed or removed, and with them the API channel
//!   credentials, agent API tokens, routing (queues, rules, strategies: the router takes them
//!   between two batches), Messenger pages, WhatsApp numbers, Zalo OAs (token keepers of unchanged OAs are kept),
//!   SMS accounts, numbers and gateways, and live chat widgets: both for webhooks and for the
//!   senders of replies. Every request reads the tenants once, at its start.
//! - **Needs a restart** (a `warn!` "needs a restart: <keys>", the rest still applied): what
//!   running tasks, sockets and Kafka clients were built with: `server.*`, `ingress.*`,
//!   `log.level`, `kafka.*`, `router.*` but tenants' routing, `outbound.*`, the provider API
//!   sections `messenger.*`, `whatsapp.*`, `media.*`, `zalo.*`, `sms.*`, `email.*` and any tenant's mailboxes, and
//!   `livechat.*` limits, or live chat's first widget when it was not served at start.
//!   This is decided against the config the daemon started with, so it is said again on every
//!   reload until the restart.
//!
//! Metrics: `omni_config_reloads_total{result="applied"|"rejected"}`,
//! `omni_config_last_reload_successful` and `omni_config_last_reload_success_timestamp_seconds`
//! (start-up counts as a successful load).

use anyhow::Context as _;
use omni_core::{Secret, TenantId};
use omni_sms::component::Sms;
use omni_social::messenger::component::Messenger;
use omni_social::whatsapp::component::Whatsapp;
use omni_social::zalo::component::Zalo;
use prometheus::{Gauge, IntCounterVec, IntGauge, Opts, Registry};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

use crate::server::AppState;
use crate::settings::{self, error_chain, Loaded, Settings};

/// How often the config file is looked at.
const POLL: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// The decision (pure)
// ---------------------------------------------------------------------------------------------

/// What a new config changes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Change {
    /// Tenants the config in force does not have.
    pub added: Vec<String>,
    /// Tenants of the config in force that are gone.
    pub removed: Vec<String>,
    /// Tenants whose settings differ (credentials, routing, channels).
    pub changed: Vec<String>,
    /// Keys that differ from the config the daemon started with and take effect only after a
    /// restart.
    pub needs_restart: Vec<String>,
}

impl Change {
    /// The change from `current` (in force) to `new`, with what needs a restart judged against
    /// `started` (what the running tasks were built with).
    pub fn between(started: &Loaded, current: &Loaded, new: &Loaded) -> Self {
        let before = tenants(current);
        let after = tenants(new);
        let mut change = Self {
            needs_restart: needs_restart(started, new),
            ..Self::default()
        };
        for (id, value) in &after {
            match before.get(id) {
                None => change.added.push(id.clone()),
                Some(old) if old != value => change.changed.push(id.clone()),
                Some(_) => {}
            }
        }
        change.removed = before
            .keys()
            .filter(|id| !after.contains_key(*id))
            .cloned()
            .collect();
        change
    }
}

/// Every tenant's merged values, by id.
fn tenants(loaded: &Loaded) -> BTreeMap<String, serde_json::Value> {
    loaded
        .tree
        .get(&["tenants"])
        .and_then(serde_json::Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// Compares by `Debug`, for settings without `PartialEq` (none of them holds a secret).
fn differs<T: Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

/// The keys whose new value the running daemon cannot take without a restart.
fn needs_restart(started: &Loaded, new: &Loaded) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut check = |key: &str, changed: bool| {
        if changed {
            keys.push(key.to_owned());
        }
    };
    server_and_kafka(started, new, &mut check);
    router_and_outbound(&started.settings, &new.settings, &mut check);
    channels(started, new, &mut check);
    keys
}

/// `server.*`, `ingress.*`, `log.level` and `kafka.*`: what the listener and the Kafka
/// clients were built with.
fn server_and_kafka(started: &Loaded, new: &Loaded, check: &mut impl FnMut(&str, bool)) {
    let (a, b) = (&started.settings, &new.settings);
    check("server.listen", a.listen != b.listen);
    let advertised = ["server", "advertised_url"];
    check(
        "server.advertised_url",
        started.tree.get(&advertised) != new.tree.get(&advertised),
    );
    check(
        "server.max_body_bytes",
        a.max_body_bytes != b.max_body_bytes,
    );
    check(
        "server.shutdown_grace_secs",
        a.shutdown_grace != b.shutdown_grace,
    );
    check(
        "ingress.dedupe_window_secs",
        a.dedupe_window != b.dedupe_window,
    );
    check(
        "ingress.dedupe_capacity",
        a.dedupe_capacity != b.dedupe_capacity,
    );
    check("log.level", a.log_level != b.log_level);
    let (ka, kb) = (&a.kafka, &b.kafka);
    check(
        "kafka.bootstrap_servers",
        ka.bootstrap_servers != kb.bootstrap_servers,
    );
    check("kafka.client_id", ka.client_id != kb.client_id);
    check("kafka.topics", ka.topics != kb.topics);
    check("kafka.partitions", ka.partitions != kb.partitions);
    check(
        "kafka.replication_factor",
        ka.replication_factor != kb.replication_factor,
    );
    check("kafka.create_topics", ka.create_topics != kb.create_topics);
    check(
        "kafka.publish_timeout_ms",
        ka.publish_timeout_ms != kb.publish_timeout_ms,
    );
    check("kafka.linger_ms", ka.linger_ms != kb.linger_ms);
    check(
        "kafka.fetch_wait_max_ms",
        ka.fetch_wait_max_ms != kb.fetch_wait_max_ms,
    );
    check(
        "kafka.statistics_interval_ms",
        ka.statistics_interval_ms != kb.statistics_interval_ms,
    );
    check("kafka.librdkafka", ka.librdkafka != kb.librdkafka);
    check("kafka.producer", ka.producer != kb.producer);
    check("kafka.consumer", ka.consumer != kb.consumer);
}

/// `router.*` but tenants' routing, and `outbound.*`: what the running tasks were built with.
fn router_and_outbound(a: &Settings, b: &Settings, check: &mut impl FnMut(&str, bool)) {
    match (&a.router, &b.router) {
        (Some(ra), Some(rb)) => {
            check("router.group_id", ra.group_id != rb.group_id);
            check(
                "router.tick_interval_ms",
                ra.tick_interval != rb.tick_interval,
            );
        }
        (None, None) => {}
        _ => check("router.enabled", true),
    }
    check(
        "router.response_buckets_secs",
        a.response_buckets != b.response_buckets,
    );
    match (&a.outbound, &b.outbound) {
        (Some(oa), Some(ob)) => {
            check("outbound.group_id", oa.group_id != ob.group_id);
            check(
                "outbound.max_in_flight",
                oa.max_in_flight != ob.max_in_flight,
            );
            check(
                "outbound.max_attempts/initial_backoff_ms/max_backoff_ms/deadline_secs",
                oa.policy != ob.policy,
            );
            check("outbound.max_age_secs", oa.max_age != ob.max_age);
        }
        (None, None) => {}
        _ => check("outbound.enabled", true),
    }
}

/// The provider API sections, mailboxes (they have reader tasks of their own) and live chat's
/// limits.
fn channels(started: &Loaded, new: &Loaded, check: &mut impl FnMut(&str, bool)) {
    let (a, b) = (&started.settings, &new.settings);
    check("messenger", differs(&a.messenger_api, &b.messenger_api));
    check("whatsapp", differs(&a.whatsapp_api, &b.whatsapp_api));
    check("media", a.media != b.media);
    check(
        "zalo",
        differs(&a.zalo_api, &b.zalo_api) || differs(&a.zalo_refresh, &b.zalo_refresh),
    );
    check(
        "sms",
        differs(&a.sms_api, &b.sms_api) || a.sms_concat != b.sms_concat,
    );
    check(
        "email",
        started.tree.get(&["email"]) != new.tree.get(&["email"]),
    );
    // Mailboxes have reader tasks of their own: any tenant's mailbox change waits for a restart.
    let mailbox_tenants: std::collections::BTreeSet<&str> = a
        .mailboxes
        .iter()
        .chain(&b.mailboxes)
        .map(|m| m.tenant.as_str())
        .collect();
    for tenant in mailbox_tenants {
        let of = |s: &Settings| {
            s.mailboxes
                .iter()
                .filter(|m| m.tenant.as_str() == tenant)
                .map(|m| format!("{m:?}"))
                .collect::<Vec<_>>()
        };
        let path = ["tenants", tenant, "email"];
        check(
            &format!("tenants.{tenant}.email"),
            of(a) != of(b) || started.tree.get(&path) != new.tree.get(&path),
        );
    }
    match (&a.livechat, &b.livechat) {
        (Some(la), Some(lb)) => check("livechat", differs(&la.settings, &lb.settings)),
        // Served at start, no widget left: the widgets go, the server stays.
        (Some(_), None) => check("livechat.enabled", !b.livechat_enabled),
        (None, Some(_)) => check(
            "livechat (not served at start: no widget or disabled)",
            true,
        ),
        (None, None) => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// The reload metric families.
#[derive(Clone)]
pub struct ReloadMetrics {
    reloads: IntCounterVec,
    last_successful: IntGauge,
    last_success: Gauge,
}

impl ReloadMetrics {
    /// Creates the families, registers them into `registry`, and counts start-up as a
    /// successful load.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let reloads = IntCounterVec::new(
            Opts::new(
                "omni_config_reloads_total",
                "Config reloads (SIGHUP or a changed config file), by result (applied, rejected).",
            ),
            &["result"],
        )?;
        let last_successful = IntGauge::with_opts(Opts::new(
            "omni_config_last_reload_successful",
            "1 if the last config reload was applied (or none was tried), 0 if it was rejected.",
        ))?;
        let last_success = Gauge::with_opts(Opts::new(
            "omni_config_last_reload_success_timestamp_seconds",
            "When the config in force was loaded (start-up or the last applied reload), in Unix seconds.",
        ))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(last_successful.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        for result in ["applied", "rejected"] {
            reloads.with_label_values(&[result]);
        }
        let metrics = Self {
            reloads,
            last_successful,
            last_success,
        };
        metrics.succeeded();
        Ok(metrics)
    }

    fn succeeded(&self) {
        self.last_successful.set(1);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_success.set(now);
    }

    fn applied(&self) {
        self.reloads.with_label_values(&["applied"]).inc();
        self.succeeded();
    }

    fn rejected(&self) {
        self.reloads.with_label_values(&["rejected"]).inc();
        self.last_successful.set(0);
    }
}

// ---------------------------------------------------------------------------------------------
// What a reload swaps
// ---------------------------------------------------------------------------------------------

/// Agent API tokens by tenant, as the agent API looks them up.
pub fn agent_tokens(settings: &Settings) -> HashMap<String, (TenantId, Secret)> {
    settings
        .agent_tokens
        .iter()
        .map(|(t, s)| (t.as_str().to_owned(), (t.clone(), s.clone())))
        .collect()
}

/// Everything a reload swaps in the running daemon: each channel's handle from its entry
/// point, the API channel, agent tokens and the router's tenants.
pub struct Live {
    /// The daemon's own routes (the API channel).
    pub app: Arc<AppState>,
    /// Agent API tokens.
    pub agent_api: Arc<omni_router::api::ApiState>,
    /// The router, if it runs here.
    pub router: Option<Arc<omni_router::Router>>,
    /// Live chat, if it is served here.
    pub livechat: Option<Arc<omni_livechat::Livechat>>,
    /// Messenger pages (webhook and sender).
    pub messenger: Arc<Messenger>,
    /// WhatsApp numbers (webhook and sender).
    pub whatsapp: Arc<Whatsapp>,
    /// Zalo OAs (webhook, sender and token keepers).
    pub zalo: Arc<Zalo>,
    /// SMS accounts, numbers and gateways (webhooks, multipart store and sender).
    pub sms: Arc<Sms>,
}

impl Live {
    /// Applies every tenant of `settings`. What can fail (Zalo's new token keepers) comes
    /// first and changes nothing when it fails.
    pub fn apply(&mut self, settings: &Settings) -> anyhow::Result<()> {
        self.zalo
            .set_tenants(&settings.zalo_tenants)
            .context("building the Zalo OAuth HTTP client")?;
        self.app.set_tenants(settings);
        *self
            .agent_api
            .tokens
            .write()
            .unwrap_or_else(|p| p.into_inner()) = agent_tokens(settings);
        if let (Some(router), Some(routing)) = (&self.router, &settings.router) {
            router.set_tenants(routing.tenants.clone());
        }
        if let Some(chat) = &self.livechat {
            chat.set_widgets(
                settings
                    .livechat
                    .as_ref()
                    .map(|l| l.widgets.clone())
                    .unwrap_or_default(),
            );
        }
        self.messenger.set_tenants(&settings.messenger_tenants);
        self.whatsapp.set_tenants(&settings.whatsapp_tenants);
        self.sms.set_tenants(&settings.sms_tenants);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The loop
// ---------------------------------------------------------------------------------------------

/// Watches for SIGHUP and config file changes and applies what validates.
pub struct Reloader {
    path: Option<PathBuf>,
    started: Loaded,
    current: Loaded,
    live: Live,
    metrics: ReloadMetrics,
}

/// The file's content hash, `None` when it cannot be read.
fn fingerprint(path: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

impl Reloader {
    /// A reloader of the config at `path` (and the environment), which the daemon started with
    /// as `started`.
    pub fn new(path: Option<PathBuf>, started: Loaded, live: Live, metrics: ReloadMetrics) -> Self {
        Self {
            path,
            current: started.clone(),
            started,
            live,
            metrics,
        }
    }

    /// Reloads on `hangup` and on file changes until `stop` turns true.
    pub async fn run(
        mut self,
        mut hangup: Option<tokio::signal::unix::Signal>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut seen = self.path.as_deref().map(fingerprint);
        let mut settling = None;
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let signal = async {
                match &mut hangup {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                received = signal => {
                    if received.is_none() {
                        hangup = None;
                        continue;
                    }
                    // What is read now is what is in force: the poll need not act on it again.
                    seen = self.path.as_deref().map(fingerprint);
                    settling = None;
                    self.reload("SIGHUP");
                }
                _ = poll.tick() => {
                    let Some(path) = self.path.as_deref() else { continue };
                    let now = Some(fingerprint(path));
                    if now == seen {
                        settling = None;
                    } else if settling == now {
                        seen = now;
                        settling = None;
                        self.reload("config file changed");
                    } else {
                        settling = now;
                    }
                }
            }
        }
    }

    /// Reads, validates and applies the config once, or refuses it.
    pub fn reload(&mut self, trigger: &str) {
        let file = self
            .path
            .as_deref()
            .map_or_else(|| "(none)".into(), |p| p.display().to_string());
        let new = match settings::load(self.path.as_deref()) {
            Ok(new) => new,
            Err(e) => return self.refuse(trigger, &file, &error_chain(&e)),
        };
        let change = Change::between(&self.started, &self.current, &new);
        if let Err(e) = self.live.apply(&new.settings) {
            return self.refuse(trigger, &file, &format!("{e:#}"));
        }
        self.metrics.applied();
        self.current = new;
        if !change.needs_restart.is_empty() {
            let keys = change.needs_restart.join(", ");
            tracing::warn!(trigger, config = %file, keys = %keys,
                "config reloaded, but some changes wait for a restart; needs a restart: {keys}");
        }
        tracing::info!(trigger, config = %file, added = ?change.added, removed = ?change.removed,
            changed = ?change.changed, "config reloaded: tenants applied");
    }

    fn refuse(&self, trigger: &str, file: &str, error: &str) {
        self.metrics.rejected();
        tracing::error!(trigger, config = %file, error = %error,
            "config reload refused, the config in force keeps running");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const BASE: &str = "[tenants.acme]\napi_token = \"acme-token\"\n";

    fn load(toml: &str) -> Loaded {
        let mut file = tempfile();
        file.1.write_all(toml.as_bytes()).unwrap();
        let loaded = settings::load(Some(&file.0));
        let _ = std::fs::remove_file(&file.0);
        loaded.unwrap()
    }

    fn tempfile() -> (PathBuf, std::fs::File) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "omni-reload-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let file = std::fs::File::create(&path).unwrap();
        (path, file)
    }

    #[test]
    fn tenants_added_removed_and_changed_are_told_apart() {
        let old = load(&format!(
            "{BASE}[tenants.gone]\napi_token = \"g\"\n[tenants.same]\napi_token = \"s\"\n"
        ));
        let new = load(
            "[tenants.acme]\napi_token = \"rotated\"\n[tenants.same]\napi_token = \"s\"\n\
             [tenants.t2]\napi_token = \"t2\"\n",
        );
        let change = Change::between(&old, &old, &new);
        assert_eq!(change.added, ["t2"]);
        assert_eq!(change.removed, ["gone"]);
        assert_eq!(change.changed, ["acme"], "a rotated secret is a change");
        assert!(change.needs_restart.is_empty(), "{change:?}");
    }

    #[test]
    fn routing_changes_apply_without_a_restart() {
        let old = load(BASE);
        let new = load(&format!(
            "{BASE}[tenants.acme.routing]\ndefault_queue = \"general\"\n\
             [tenants.acme.routing.queues.general]\npriority = 5\n"
        ));
        let change = Change::between(&old, &old, &new);
        assert_eq!(change.changed, ["acme"]);
        assert!(change.needs_restart.is_empty(), "{change:?}");
    }

    #[test]
    fn listener_kafka_and_subsystem_switches_need_a_restart() {
        let old = load(BASE);
        let new = load(&format!(
            "[server]\nlisten = \"127.0.0.1:9999\"\n\
             [kafka]\nbootstrap_servers = \"kafka-1:9092\"\n[kafka.topics]\ninbound = \"x.v1\"\n\
             [router]\nenabled = false\n[outbound]\ngroup_id = \"other\"\n{BASE}"
        ));
        let change = Change::between(&old, &old, &new);
        assert_eq!(
            change.needs_restart,
            [
                "server.listen",
                "kafka.bootstrap_servers",
                "kafka.topics",
                "router.enabled",
                "outbound.group_id"
            ]
        );
        assert!(change.added.is_empty() && change.changed.is_empty());
    }

    #[test]
    fn what_needs_a_restart_is_judged_against_the_config_at_start() {
        let started = load(BASE);
        let moved = load(&format!("[server]\nlisten = \"127.0.0.1:9999\"\n{BASE}"));
        let plus_tenant = load(&format!(
            "[server]\nlisten = \"127.0.0.1:9999\"\n{BASE}[tenants.t2]\napi_token = \"t\"\n"
        ));
        // Reloaded once already (`moved` in force): the listener still waits for a restart.
        let change = Change::between(&started, &moved, &plus_tenant);
        assert_eq!(change.needs_restart, ["server.listen"]);
        assert_eq!(change.added, ["t2"]);
    }

    #[test]
    fn a_first_live_chat_widget_needs_a_restart_but_more_widgets_do_not() {
        let widget = |id: &str| {
            format!(
                "[tenants.acme.livechat.widgets.{id}]\nsecret = \"0123456789abcdef\"\n\
                 allowed_origins = [\"https://shop.example.vn\"]\n"
            )
        };
        let none = load(BASE);
        let one = load(&format!("{BASE}{}", widget("web")));
        let two = load(&format!("{BASE}{}{}", widget("web"), widget("app")));
        assert_eq!(
            Change::between(&none, &none, &one).needs_restart,
            ["livechat (not served at start: no widget or disabled)"]
        );
        assert!(Change::between(&one, &one, &two).needs_restart.is_empty());
        assert!(Change::between(&one, &one, &none).needs_restart.is_empty());
    }

    #[test]
    fn mailbox_changes_need_a_restart_naming_the_tenant() {
        let mailbox = |host: &str| {
            format!(
                "[tenants.acme.email.mailboxes.support]\naddress = \"cskh@example.vn\"\n\
                 [tenants.acme.email.mailboxes.support.imap]\nhost = \"{host}\"\npassword = \"p\"\n"
            )
        };
        let old = load(&format!("{BASE}{}", mailbox("imap.example.vn")));
        let new = load(&format!("{BASE}{}", mailbox("imap2.example.vn")));
        assert_eq!(
            Change::between(&old, &old, &new).needs_restart,
            ["tenants.acme.email"]
        );
    }

    #[test]
    fn the_loaded_config_never_prints_its_secrets() {
        let loaded = load("[tenants.acme]\napi_token = \"sup3r-s3cret\"\n");
        assert!(!format!("{loaded:?}").contains("sup3r-s3cret"));
    }

    #[test]
    fn an_identical_config_changes_nothing() {
        let old = load(BASE);
        let new = load(BASE);
        assert_eq!(Change::between(&old, &old, &new), Change::default());
    }
}
