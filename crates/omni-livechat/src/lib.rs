//! Website live chat: visitor sessions with signed tokens, one WebSocket per visitor, visitor
//! messages to `omni.inbound.v1` (acknowledged only after Kafka did), agent replies from
//! `omni.outbound.v1` pushed by whichever daemon instance holds the visitor's socket, cursors
//! that let a reconnecting widget resume on any instance with nothing lost or repeated, and
//! the embeddable, dependency-free widget (`GET /v1/livechat/widget.js`), which shows the
//! router's wait estimate and lets the visitor end the chat (`customer_left`).
//!
//! # Layout
//! - [`token`]: visitor tokens (HMAC-signed, expiring) and identity verification.
//! - [`protocol`]: the JSON frames, their validation, and [`protocol::Cursor`].
//! - [`hub`]: per-instance state: conversation logs, attached sockets, rate limits, IP caps
//!   (with the design note on cursors).
//! - [`feed`]: the group-less Kafka tail that gives every instance every live chat message.
//! - [`routing`]: what live chat exchanges with the router over Kafka: routing events of a
//!   visitor's conversation (the wait estimate) in, the `customer_left` command out.
//! - [`presence`]: per-IP socket counts shared by every replica over a compacted topic, so the
//!   per-IP cap counts the whole deployment (with the design note).
//! - [`revocation`]: revoking a visitor's tokens on every replica over a compacted topic
//!   (with the design note).
//! - [`client_ip`]: the client's address behind trusted proxies (rightmost untrusted
//!   `X-Forwarded-For` hop; with the design note).
//! - [`throttle`]: the per-socket frame budget and the session minting limits (per client
//!   address, per widget).
//! - [`server`]: the HTTP routes (session, WebSocket, widget script) and the socket loop.
//! - [`component`]: the channel's entry point: routes and the feed's task.
//! - [`config`]: `[livechat]` and the tenants' widgets as written, and their validation.
//! - [`settings`]: validated settings: limits, widgets, allowed origins, opening hours.
//! - [`metrics`]: metric families.

pub mod client_ip;
pub mod component;
pub mod config;
pub mod feed;
pub mod hub;
pub mod metrics;
pub mod presence;
pub mod protocol;
pub mod revocation;
pub mod routing;
pub mod server;
pub mod settings;
pub mod throttle;
pub mod token;

use chrono::Utc;
use omni_bus::BusConfig;
use omni_channel::{delivery_event, EventSink, Ingress};
use omni_core::{ChannelKind, ChannelRef, DeliveryStatus, DeliveryUpdate, TenantId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

pub use hub::{Hub, HubLimits};
pub use metrics::LivechatMetrics;
pub use settings::{Hours, LivechatSettings, WidgetSettings, Widgets};

/// The widget script, served as is.
pub const WIDGET_JS: &str = include_str!("../widget/widget.js");

/// The live chat channel of one daemon instance.
pub struct Livechat {
    /// Limits and timings.
    pub settings: LivechatSettings,
    /// Widgets by (tenant, widget id); replaced whole by [`Livechat::set_widgets`], read once
    /// per request.
    widgets: RwLock<Arc<Widgets>>,
    /// Conversations and sockets on this instance.
    pub hub: Arc<Hub>,
    /// Publishes visitor messages (dedupe, acknowledgement, ingress metrics).
    pub ingress: Ingress,
    /// Where delivery reports go.
    pub sink: Arc<dyn EventSink>,
    /// Kafka, for the feed.
    pub bus: BusConfig,
    /// Metrics.
    pub metrics: LivechatMetrics,
    /// This replica's id and the other replicas' per-IP socket counts.
    pub presence: presence::Presence,
    /// Visitors whose older tokens are void, from every replica.
    pub revocations: revocation::Revocations,
    /// Session minting limits of this replica.
    sessions: std::sync::Mutex<throttle::SessionLimits>,
    /// Turns true once when the daemon shuts down: every socket closes with 1001 at once, so
    /// widgets reconnect (to another replica) instead of waiting on a socket that is going.
    closing: tokio::sync::watch::Sender<bool>,
    runtime: tokio::runtime::Handle,
}

/// Stops the feed, the presence reader and publisher, and the sweeper when dropped or stopped.
pub struct Running {
    stop: Arc<AtomicBool>,
    feed: Option<std::thread::JoinHandle<()>>,
    presence: Option<std::thread::JoinHandle<()>>,
    revocations: Option<std::thread::JoinHandle<()>>,
    /// Wakes the presence publisher to withdraw this replica's counts.
    wake: Arc<tokio::sync::Notify>,
    withdrawn: std::sync::mpsc::Receiver<()>,
}

impl Running {
    /// Stops the background work, withdraws this replica's socket counts from the presence
    /// topic (waiting at most 2 s), and waits for the reader threads. Blocking.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.notify_one();
        let _ = self
            .withdrawn
            .recv_timeout(std::time::Duration::from_secs(2));
        for t in [
            self.feed.take(),
            self.presence.take(),
            self.revocations.take(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }
}

impl Livechat {
    /// The channel. Call from within the tokio runtime (delivery reports are spawned on it).
    pub fn new(
        settings: LivechatSettings,
        widgets: Widgets,
        ingress: Ingress,
        sink: Arc<dyn EventSink>,
        bus: BusConfig,
        metrics: LivechatMetrics,
    ) -> Self {
        let hub = Arc::new(Hub::new(HubLimits {
            log_max_messages: settings.log_max_messages,
            log_ttl: settings.log_ttl,
            rate_per_minute: settings.rate_per_minute,
            burst: settings.burst,
            queue_cap: settings.queue_cap,
        }));
        let presence =
            presence::Presence::new(settings.ip_hash_secret.as_ref(), settings.presence_expiry);
        let revocations =
            revocation::Revocations::new(settings.token_ttl.saturating_add(settings.renew_window));
        let sessions = std::sync::Mutex::new(throttle::SessionLimits::new(
            settings.sessions_per_minute_per_ip,
            settings.sessions_per_minute_per_widget,
        ));
        Self {
            settings,
            widgets: RwLock::new(Arc::new(widgets)),
            hub,
            ingress,
            sink,
            bus,
            metrics,
            presence,
            revocations,
            sessions,
            closing: tokio::sync::watch::Sender::new(false),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Closes every visitor socket, open or opening, with 1001 (going away), without waiting:
    /// called once at shutdown. A message a socket was publishing is left unacknowledged, so
    /// the widget resends it (same client id) after it reconnected.
    pub fn close_sockets(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`Livechat::close_sockets`] was called (at once if it was already).
    pub(crate) fn closing(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closing = self.closing.subscribe();
        async move {
            // The sender lives as long as `self`; an error means it is gone: close as well.
            let _ = closing.wait_for(|c| *c).await;
        }
    }

    /// Charges a session request of `ip` for the widget to this replica's minting limits.
    pub(crate) fn admit_session(
        &self,
        ip: std::net::IpAddr,
        tenant: &str,
        widget: &str,
    ) -> Result<(), throttle::SessionRefusal> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(ip, tenant, widget, std::time::Instant::now())
    }

    /// Starts the Kafka feed, the presence reader and the revocations reader (a thread
    /// each), the presence publisher and the periodic sweep of expired entries.
    pub fn start(self: &Arc<Self>) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let (chat, flag) = (self.clone(), stop.clone());
        let feed = std::thread::Builder::new()
            .name("livechat-feed".into())
            .spawn(move || feed::run(chat, flag))
            .ok();
        let (chat, flag) = (self.clone(), stop.clone());
        let presence = std::thread::Builder::new()
            .name("livechat-presence".into())
            .spawn(move || presence::run_reader(chat, flag))
            .ok();
        let (chat, flag) = (self.clone(), stop.clone());
        let revocations = std::thread::Builder::new()
            .name("livechat-revocations".into())
            .spawn(move || revocation::run_reader(chat, flag))
            .ok();
        let wake = Arc::new(tokio::sync::Notify::new());
        let (done, withdrawn) = std::sync::mpsc::channel();
        self.runtime.spawn(presence::run_publisher(
            self.clone(),
            stop.clone(),
            wake.clone(),
            done,
        ));
        let (chat, flag) = (self.clone(), stop.clone());
        self.runtime.spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                chat.hub.sweep(Utc::now());
                chat.sweep_revocations().await;
            }
        });
        Running {
            stop,
            feed,
            presence,
            revocations,
            wake,
            withdrawn,
        }
    }

    /// True when the widget is configured here.
    pub fn has_widget(&self, tenant: &str, widget: &str) -> bool {
        self.widget(tenant, widget).is_some()
    }

    /// The widget's tenant and settings, if it is configured here.
    pub fn widget(&self, tenant: &str, widget: &str) -> Option<(TenantId, WidgetSettings)> {
        self.widgets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(tenant.to_owned(), widget.to_owned()))
            .cloned()
    }

    /// Replaces every widget (a reloaded config). New sessions and sockets use the new
    /// settings; sockets already open stay open until they close or their token expires.
    pub fn set_widgets(&self, widgets: Widgets) {
        *self.widgets.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(widgets);
    }

    /// Publishes what became of agent replies on the delivery topic, in the background. Ids
    /// are derived from the reply and the status, so instances reporting the same fact (two
    /// tabs on two instances) write the same event id and consumers keep one.
    pub fn report(&self, reached: Vec<hub::Reached>, status: DeliveryStatus) {
        if reached.is_empty() {
            return;
        }
        let sink = self.sink.clone();
        let topic = self.bus.topics.delivery.clone();
        self.runtime.spawn(async move {
            for r in reached {
                let now = Utc::now();
                let channel = ChannelRef::new(ChannelKind::Livechat, r.widget.clone());
                let update = DeliveryUpdate {
                    tenant: r.tenant.clone(),
                    conversation_id: r.conversation,
                    outbound_event_id: r.event_id,
                    channel: channel.clone(),
                    status,
                    provider_message_id: None,
                    reason: None,
                    detail: None,
                    segments: None,
                    occurred_at: now,
                };
                let event = delivery_event(update, now);
                let Ok(payload) = serde_json::to_vec(&event) else {
                    continue;
                };
                if let Err(e) = sink
                    .publish(&topic, r.tenant.as_str().as_bytes(), &payload)
                    .await
                {
                    tracing::warn!(tenant = %r.tenant, error = %e, "live chat delivery report not published");
                }
            }
        });
    }
}

/// Runs `tail` (a blocking reader of a compacted topic, on its own thread) until it returns
/// cleanly or `stop` is set; a failure (typically: the topic does not exist yet) is logged
/// with `what` and retried with a doubling delay of at most 10 s. Presence and revocations
/// read their topics this way.
pub(crate) fn tail_until_stopped(
    stop: &AtomicBool,
    what: &'static str,
    mut tail: impl FnMut() -> Result<(), omni_bus::BusError>,
) {
    let mut delay = std::time::Duration::from_millis(200);
    while !stop.load(Ordering::Relaxed) {
        match tail() {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = &e as &dyn std::error::Error, "{what}");
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_secs(10));
            }
        }
    }
}
