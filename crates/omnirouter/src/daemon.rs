//! Start-up and shutdown: build the producer, create topics, serve HTTP, reload tenants on
//! SIGHUP or a changed config file ([`crate::reload`]), and on SIGTERM/SIGINT stop accepting,
//! drain in-flight requests, stop the readers, senders and router, and flush the producer,
//! all within one deadline (`server.shutdown_grace_secs`); what is left is purged and counted
//! ([`crate::shutdown`]).

use anyhow::Context as _;
use omni_bus::{BusMetrics, Producer};
use omni_channel::{DedupeCache, Ingress, IngressMetrics};
use prometheus::{IntGauge, Opts, Registry};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::channels::{ChannelDeps, Channels};
use crate::reload::{agent_tokens, Live, ReloadMetrics, Reloader};
use crate::server::AppState;
use crate::settings::{Loaded, Settings};
use crate::shutdown::{Leftovers, Pending, WATCHDOG_MARGIN};

/// Runs the daemon until a shutdown signal, then shuts down within the grace period and says
/// what it could not finish. `config` is the file `loaded` was read from (with the
/// environment): it is read again on SIGHUP and when its content changes.
///
/// Once the signal arrived a watchdog guarantees the process ends (see [`crate::shutdown`]);
/// the caller ends it with [`crate::shutdown::exit`] when this returns, never by dropping the
/// runtime (blocked librdkafka handles would hold it).
pub async fn run(loaded: Loaded, config: Option<PathBuf>) -> anyhow::Result<Leftovers> {
    // Before anything slow: SIGHUP's default action ends the process.
    let hangup = listen_for_hangup();
    let settings = &loaded.settings;
    raise_open_file_limit();
    let traces = crate::telemetry::install(&settings.telemetry);
    let metrics = Metrics::register()?;
    let producer =
        Producer::new(&settings.kafka, metrics.bus.clone()).context("creating kafka producer")?;
    create_topics_in_background(settings, &metrics);
    let media = Arc::new(
        omni_media::Media::new(&settings.media).context("building the media store and fetcher")?,
    );
    // One bound on requests in flight for every ingress of this instance (load shedding).
    let admission = Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight));
    let ingress_for = |max_body_bytes| {
        ingress_for(settings, &producer, max_body_bytes, &metrics).with_admission(admission.clone())
    };
    let mut webhooks = ingress_for(settings.max_body_bytes);
    if media.store().is_some() {
        let inbound = omni_channel::InboundMedia::new(
            media.clone(),
            settings.media.clone(),
            &metrics.registry,
        )
        .context("registering the media metrics")?;
        webhooks = webhooks.with_media(Arc::new(inbound));
    }
    let ingress = Arc::new(webhooks);
    let routing = RouterTask::start(settings, &producer, &metrics)?;
    let agent_api = agent_api(settings, &producer, &routing)?;
    // Every channel's background tasks end on this, after the HTTP drain; the reply senders
    // (and the Zalo token upkeep) on the other, after them.
    let (channels_stop_tx, channels_stop) = watch::channel(false);
    let (outbound_stop_tx, outbound_stop) = watch::channel(false);
    let mut channels = Channels::build(
        settings,
        ChannelDeps {
            producer: &producer,
            registry: &metrics.registry,
            ingress: ingress.clone(),
            media: media.clone(),
            own_ingress: &ingress_for,
            // Per-tenant channel state (Zalo refreshes, SMS reassembly, mailboxes) lives where
            // the router owns the tenant; without a router this instance is the only one.
            ownership: routing.handle.as_ref().map_or_else(
                || omni_bus::Ownership::fixed(omni_bus::Owned::everything()),
                |r| r.ownership(),
            ),
            replicated: routing.handle.is_some(),
            stop: channels_stop,
            senders_stop: outbound_stop.clone(),
        },
    )?;
    let signals = crate::signals::MetaSignals::new(
        channels.messenger.senders(),
        channels.whatsapp.sender(),
        &metrics.registry,
    )
    .context("registering the agent signal metrics")?;
    // Set once, here: the API was built before the channels.
    let _ = agent_api.signals.set(Arc::new(signals));
    if let Some(chat) = &channels.livechat {
        let _ = agent_api
            .livechat
            .set(Arc::new(crate::channels::LivechatRevoker(chat.clone())));
    }
    let (outbound_task, replies) = match &settings.outbound {
        Some(outbound) => {
            let (task, replies) = crate::outbound::start(
                settings,
                outbound,
                &metrics.registry,
                (producer.clone(), metrics.bus.clone()),
                channels.take_senders(),
                outbound_stop,
            )?;
            (Some(task), Some(replies))
        }
        None => (None, None),
    };
    let state = Arc::new(AppState::new(
        settings,
        ingress,
        producer.clone(),
        metrics.registry.clone(),
        routing.handle.clone(),
    ));
    let public = crate::server::public(&state).merge(channels.take_routes());
    let admin =
        crate::server::admin(state.clone()).merge(omni_router::api::routes(agent_api.clone()));
    let tracked = |app: axum::Router| {
        app.route_layer(axum::middleware::from_fn_with_state(
            metrics.http.clone(),
            crate::observe::track,
        ))
    };
    let servers = match settings.admin_listen {
        None => vec![
            serve(
                settings,
                settings.listen,
                "public and admin",
                tracked(public.merge(admin)),
            )
            .await?,
        ],
        Some(admin_listen) => vec![
            serve(
                settings,
                settings.listen,
                "public",
                tracked(public.merge(crate::server::liveness())),
            )
            .await?,
            serve(settings, admin_listen, "admin", tracked(admin)).await?,
        ],
    };
    let (reload_stop_tx, reload_stop_rx) = watch::channel(false);
    let live = Live {
        app: state,
        agent_api,
        router: routing.handle.clone(),
        livechat: channels.livechat.clone(),
        messenger: channels.messenger.clone(),
        whatsapp: channels.whatsapp.clone(),
        zalo: channels.zalo.clone(),
        sms: channels.sms.clone(),
    };
    let grace = settings.shutdown_grace;
    let reloader = Reloader::new(config, loaded, live, metrics.reload);
    let reload_task = tokio::spawn(reloader.run(hangup, reload_stop_rx));

    shutdown_signal().await;
    let running = Running {
        producer,
        replies,
        reload: (reload_stop_tx, reload_task),
        servers,
        router: routing,
        channels: (channels_stop_tx, channels),
        outbound: (outbound_stop_tx, outbound_task),
        traces,
    };
    Ok(running.shut_down(grace).await)
}

/// Every live chat visitor holds a socket: take the hard limit on open files, not the
/// (often 1024) soft one.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
}

/// The registry every metric family goes into, and the families the daemon itself holds.
struct Metrics {
    registry: Registry,
    bus: Arc<BusMetrics>,
    ingress: IngressMetrics,
    reload: ReloadMetrics,
    http: crate::observe::HttpMetrics,
}

impl Metrics {
    fn register() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let build_info = IntGauge::with_opts(
            Opts::new("omni_build_info", "Build information; always 1.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        build_info.set(1);
        registry.register(Box::new(build_info))?;
        crate::observe::register_process(&registry)?;
        crate::observe::register_runtime(&registry, tokio::runtime::Handle::current())?;
        Ok(Self {
            http: crate::observe::HttpMetrics::register(&registry)?,
            bus: Arc::new(BusMetrics::register(&registry)?),
            ingress: IngressMetrics::register(&registry)?,
            reload: ReloadMetrics::register(&registry)?,
            registry,
        })
    }
}

/// The shared webhook handler over Kafka, with bodies up to `max_body_bytes`.
fn ingress_for(
    settings: &Settings,
    producer: &Producer,
    max_body_bytes: usize,
    metrics: &Metrics,
) -> Ingress {
    Ingress::new(
        Arc::new(producer.clone()),
        settings.kafka.topics.inbound.clone(),
        settings.kafka.topics.delivery.clone(),
        DedupeCache::new(settings.dedupe_window, settings.dedupe_capacity),
        max_body_bytes,
        metrics.ingress.clone(),
    )
}

fn listen_for_hangup() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: reload by editing the config file");
            None
        }
    }
}

/// The router task, if the router runs here, and what stops it.
struct RouterTask {
    handle: Option<Arc<omni_router::Router>>,
    task: Option<JoinHandle<Result<(), omni_router::runner::RouterError>>>,
    shared: Option<Arc<Mutex<omni_router::SharedState>>>,
    metrics: Option<omni_router::RouterMetrics>,
    stop_tx: watch::Sender<bool>,
    /// Also ends the multipart SMS upkeep: after the HTTP drain, no part arrives after it.
    stop_rx: watch::Receiver<bool>,
}

impl RouterTask {
    fn start(settings: &Settings, producer: &Producer, metrics: &Metrics) -> anyhow::Result<Self> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut this = Self {
            handle: None,
            task: None,
            shared: None,
            metrics: None,
            stop_tx,
            stop_rx,
        };
        let Some(router_settings) = settings.router.clone() else {
            return Ok(this);
        };
        let router_metrics =
            omni_router::RouterMetrics::register(&metrics.registry, &settings.response_buckets)?;
        this.metrics = Some(router_metrics.clone());
        let router = Arc::new(omni_router::Router::new(
            router_settings,
            settings.kafka.clone(),
            producer.clone(),
            router_metrics,
            metrics.bus.clone(),
        ));
        // Forwarded reads go to the agent API, on the admin listener when it is apart.
        router.set_advertised_url(advertised_url(
            settings.advertised_url.as_deref(),
            settings.admin_listen.unwrap_or(settings.listen),
        ));
        this.shared = Some(router.shared());
        this.handle = Some(router.clone());
        let mut stop = this.stop_rx.clone();
        this.task = Some(tokio::spawn(async move {
            let result = router
                .run(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "router stopped: conversations are not being routed");
            }
            result
        }));
        Ok(this)
    }
}

/// The agent/operator API over the router's state (or forwarding, without a router here).
fn agent_api(
    settings: &Settings,
    producer: &Producer,
    router: &RouterTask,
) -> anyhow::Result<Arc<omni_router::api::ApiState>> {
    Ok(Arc::new(omni_router::api::ApiState {
        shared: router.shared.clone(),
        producer: producer.clone(),
        topics: settings.kafka.topics.clone(),
        tokens: std::sync::RwLock::new(agent_tokens(settings)),
        max_body_bytes: settings.max_body_bytes,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client for forwarded reads")?,
        metrics: router.metrics.clone(),
        signals: std::sync::OnceLock::new(),
        livechat: std::sync::OnceLock::new(),
    }))
}

/// A listener being served: the sender stops it (then it drains), the task ends with it.
type Server = (
    tokio::sync::oneshot::Sender<()>,
    JoinHandle<std::io::Result<()>>,
);

/// Binds `listen` and serves `app` (the `role` side) until the returned sender fires.
async fn serve(
    settings: &Settings,
    listen: std::net::SocketAddr,
    role: &'static str,
    app: axum::Router,
) -> anyhow::Result<Server> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, role, kafka = %settings.kafka.bootstrap_servers,
        "omnirouter listening");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // Connection info: live chat caps sockets per client IP.
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stop_rx.await;
    });
    Ok((stop_tx, tokio::spawn(async move { server.await })))
}

/// Everything running once the daemon serves, stopped in one order by [`Running::shut_down`].
struct Running {
    producer: Producer,
    replies: Option<omni_bus::Unfinished>,
    reload: (watch::Sender<bool>, JoinHandle<()>),
    /// Every listener (one, or public and admin apart).
    servers: Vec<Server>,
    router: RouterTask,
    /// The trace provider: what it still batches is sent at the end.
    traces: opentelemetry_sdk::trace::SdkTracerProvider,
    /// Stops every channel's tasks; the components (named for the log) are awaited in order,
    /// and the channel handles (the Zalo token follower) live until the end.
    channels: (watch::Sender<bool>, Channels),
    outbound: (watch::Sender<bool>, Option<JoinHandle<()>>),
}

impl Running {
    /// Stops accepting, drains in-flight requests, then stops the readers, the multipart
    /// upkeep, the senders and the router, and flushes the producer, all within one deadline
    /// (`grace`), so an orchestrator's grace period a little above it always covers it; the
    /// watchdog ends the process shortly after it whatever still blocks.
    async fn shut_down(self, grace: Duration) -> Leftovers {
        let deadline = tokio::time::Instant::now() + grace;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        let pending = Pending {
            producer: self.producer.clone(),
            replies: self.replies,
        };
        crate::shutdown::arm_watchdog(grace + WATCHDOG_MARGIN, pending.clone());
        tracing::info!(
            grace_secs = grace.as_secs(),
            "shutdown requested: draining in-flight requests"
        );
        // No reload while shutting down.
        let _ = self.reload.0.send(true);
        let mut servers = Vec::new();
        for (stop, task) in self.servers {
            let _ = stop.send(());
            servers.push(task);
        }
        // Upgraded sockets are not part of the HTTP drain: close them now (1001), so widgets
        // reconnect elsewhere at once rather than when the process is gone.
        if let Some(chat) = &self.channels.1.livechat {
            chat.close_sockets();
        }
        if tokio::time::timeout_at(deadline, self.reload.1)
            .await
            .is_err()
        {
            tracing::warn!("a reload did not finish within the grace period");
        }
        for server in servers {
            match tokio::time::timeout_at(deadline, server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::error!(error = %e, "http server failed while draining"),
                Ok(Err(e)) => tracing::error!(error = %e, "http server task failed"),
                Err(_) => {
                    tracing::warn!("in-flight requests did not finish within the grace period");
                }
            }
        }
        let _ = self.router.stop_tx.send(true);
        // The live chat feed first, then the mailbox readers, then the multipart SMS upkeep.
        let (channels_stop, mut channels) = self.channels;
        let _ = channels_stop.send(true);
        for (name, component) in std::mem::take(&mut channels.components) {
            for task in component.tasks {
                if tokio::time::timeout_at(deadline, task).await.is_err() {
                    tracing::warn!(
                        task = name,
                        "a channel task did not stop within the grace period"
                    );
                }
            }
        }
        stop_senders_and_router(self.outbound, self.router.task, deadline).await;
        // Replies still running now are abandoned: count them before the flush gives them time.
        let replies_unfinished = pending.count().replies_unfinished;
        let records_unflushed = self
            .producer
            .flush_or_purge(left().max(Duration::from_millis(100)))
            .await;
        crate::telemetry::shutdown(self.traces, left().min(Duration::from_secs(2))).await;
        drop(channels);
        Leftovers {
            records_unflushed,
            replies_unfinished,
        }
    }
}

/// Stops the outbound dispatch (its sends finish), then waits for the router, by `deadline`.
async fn stop_senders_and_router(
    (outbound_stop_tx, outbound_task): (watch::Sender<bool>, Option<JoinHandle<()>>),
    router_task: Option<JoinHandle<Result<(), omni_router::runner::RouterError>>>,
    deadline: tokio::time::Instant,
) {
    let _ = outbound_stop_tx.send(true);
    if let Some(task) = outbound_task {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "outbound task failed"),
            Err(_) => tracing::warn!("outbound sends did not finish within the grace period"),
        }
    }
    if let Some(task) = router_task {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(_))) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "router task failed"),
            Err(_) => tracing::warn!("router did not stop within the grace period"),
        }
    }
}

/// With `kafka.create_topics`, creates the topics in the background, retrying until the
/// broker accepts.
fn create_topics_in_background(settings: &Settings, metrics: &Metrics) {
    if settings.kafka.create_topics {
        tokio::spawn(create_topics_until_done(
            settings.kafka.clone(),
            metrics.bus.clone(),
        ));
    }
}

async fn create_topics_until_done(kafka: omni_bus::BusConfig, metrics: Arc<BusMetrics>) {
    let mut delay = Duration::from_millis(500);
    loop {
        match omni_bus::ensure_topics(&kafka, metrics.clone(), Duration::from_secs(10)).await {
            Ok(()) => {
                tracing::info!("kafka topics present");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(0),
                    "cannot create topics yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(15));
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// The base URL other instances forward tenant reads to: `router.advertised_url` when set,
/// else the listen address when it names one interface (`0.0.0.0` names none: set the URL,
/// e.g. from the pod IP in Kubernetes).
fn advertised_url(configured: Option<&str>, listen: std::net::SocketAddr) -> Option<String> {
    match configured {
        Some(url) => Some(url.trim_end_matches('/').to_owned()),
        None if listen.ip().is_unspecified() => None,
        None => Some(format!("http://{listen}")),
    }
}
