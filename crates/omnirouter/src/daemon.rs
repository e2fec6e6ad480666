//! Start-up and shutdown: build the producer, create topics, serve HTTP, reload tenants on
//! SIGHUP or a changed config file ([`crate::reload`]), and on SIGTERM/SIGINT stop accepting,
//! drain in-flight requests, stop the readers, senders and router, and flush the producer,
//! all within one deadline (`server.shutdown_grace_secs`); what is left is purged and counted
//! ([`crate::shutdown`]).

use anyhow::Context as _;
use omni_bus::{BusMetrics, Producer};
use omni_channel::{Component, DedupeCache, Ingress, IngressMetrics};
use prometheus::{IntGauge, Opts, Registry};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::reload::{agent_tokens, ConcatUpkeep, Live, ReloadMetrics, Reloader};
use crate::server::{router, AppState, Channels};
use crate::settings::{Loaded, Settings};
use crate::shutdown::{Leftovers, Pending, WATCHDOG_MARGIN};
use omni_sms::vonage::concat_store::{ConcatMetrics, ConcatStore};
use omni_sms::webhook::{Endpoint, SmsWebhook};

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
    let metrics = Metrics::register()?;
    let producer =
        Producer::new(&settings.kafka, metrics.bus.clone()).context("creating kafka producer")?;
    create_topics_in_background(settings, &metrics);
    // Every channel's background tasks end on this, after the HTTP drain.
    let (channels_stop_tx, channels_stop_rx) = watch::channel(false);
    let channels_stop = channels_stop_rx.clone();
    let mut components = Vec::new();
    let livechat = match build_livechat(settings, &producer, &metrics, &channels_stop_rx)? {
        Some((chat, component)) => {
            components.push(("live chat feed", component));
            Some(chat)
        }
        None => None,
    };
    let ingress = ingress(settings, &producer, settings.max_body_bytes, &metrics);
    let routing = RouterTask::start(settings, &producer, &metrics)?;
    let agent_api = agent_api(settings, &producer, &routing)?;
    // Per-tenant channel state (Zalo refreshes, SMS reassembly, mailboxes) lives where the
    // router owns the tenant; without a router this instance is the only one.
    let ownership = routing.handle.as_ref().map_or_else(
        || omni_bus::Ownership::fixed(omni_bus::Owned::everything()),
        |r| r.ownership(),
    );
    let (zalo_shared, zalo_tail) = follow_zalo_tokens(settings, &producer);
    let mut email = build_email(
        settings,
        &producer,
        &metrics,
        (&ownership, &routing),
        channels_stop,
    )
    .context("building the e-mail channel")?;
    let (outbound_stop_tx, outbound_stop_rx) = watch::channel(false);
    let (outbound_task, senders, replies) = match &settings.outbound {
        Some(outbound) => {
            let (task, senders, replies) = crate::outbound::start(
                settings,
                outbound,
                &metrics.registry,
                (producer.clone(), metrics.bus.clone()),
                std::mem::take(&mut email.senders),
                (zalo_shared.clone(), ownership.clone()),
                outbound_stop_rx,
            )?;
            (Some(task), Some(senders), Some(replies))
        }
        None => (None, None, None),
    };
    components.push(("mailbox reader", email));
    let (state, concat) = app_state(settings, ingress, &producer, metrics.registry)?;
    let concat_upkeep = concat_upkeep(&state, concat, settings, &ownership, &routing.stop_rx);
    concat_upkeep.ensure(settings);
    let concat_task = concat_upkeep.task.clone();
    let mut app = router(state.clone()).merge(omni_router::api::routes(agent_api.clone()));
    for (_, component) in &mut components {
        app = app.merge(std::mem::take(&mut component.routes));
    }
    let (stop_tx, server) = serve(settings, app).await?;
    let (reload_stop_tx, reload_stop_rx) = watch::channel(false);
    let live = Live {
        app: state,
        agent_api,
        router: routing.handle.clone(),
        livechat: livechat.clone(),
        senders,
        concat: concat_upkeep,
    };
    let grace = settings.shutdown_grace;
    let reloader = Reloader::new(config, loaded, live, metrics.reload);
    let reload_task = tokio::spawn(reloader.run(hangup, reload_stop_rx));

    shutdown_signal().await;
    let running = Running {
        producer,
        replies,
        reload: (reload_stop_tx, reload_task),
        server: (stop_tx, server),
        livechat,
        router: routing,
        channels: (channels_stop_tx, components),
        concat_task,
        outbound: (outbound_stop_tx, outbound_task),
        zalo_tail,
    };
    Ok(running.shut_down(grace).await)
}

/// The e-mail channel: a reader per mailbox this instance owns, the SMTP sender if it sends.
/// Mail takes the inbound path every channel takes (dedupe, `omni_messages_received_total`),
/// with its own dedupe cache: mail and webhook event ids never meet.
fn build_email(
    settings: &Settings,
    producer: &Producer,
    metrics: &Metrics,
    (ownership, routing): (&omni_bus::Ownership, &RouterTask),
    stop: watch::Receiver<bool>,
) -> Result<Component, omni_email::component::BuildError> {
    omni_email::component::build(
        &settings.mailboxes,
        omni_email::component::EmailDeps {
            kafka: &settings.kafka,
            sink: Arc::new(producer.clone()),
            ingress: Arc::new(ingress(
                settings,
                producer,
                settings.max_body_bytes,
                metrics,
            )),
            registry: &metrics.registry,
            threads: thread_index(settings, producer),
            ownership: ownership.clone(),
            takeover_grace: takeover_grace(settings, routing),
            send: settings.outbound.is_some(),
            stop,
        },
    )
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
        Ok(Self {
            bus: Arc::new(BusMetrics::register(&registry)?),
            ingress: IngressMetrics::register(&registry)?,
            reload: ReloadMetrics::register(&registry)?,
            registry,
        })
    }
}

/// The shared webhook handler over Kafka, with bodies up to `max_body_bytes`.
fn ingress(
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

/// Live chat's entry point, when some tenant has a widget and live chat is enabled.
fn build_livechat(
    settings: &Settings,
    producer: &Producer,
    metrics: &Metrics,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Option<(Arc<omni_livechat::Livechat>, Component)>> {
    let Some(chat) = &settings.livechat else {
        return Ok(None);
    };
    let built = omni_livechat::component::build(
        (chat.settings.clone(), chat.widgets.clone()),
        ingress(settings, producer, chat.settings.max_frame_bytes, metrics),
        Arc::new(producer.clone()),
        settings.kafka.clone(),
        &metrics.registry,
        stop.clone(),
    )?;
    Ok(Some(built))
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
        router.set_advertised_url(advertised_url(
            settings.advertised_url.as_deref(),
            settings.listen,
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
    }))
}

/// The tail that keeps a shared table up to date; dropping it stops it.
type Tail = Arc<omni_bus::table::Tail>;

/// Every replica follows the Zalo token pairs the owners write; no pair is seeded or
/// refreshed before what the topic held at start has been read.
fn follow_zalo_tokens(
    settings: &Settings,
    producer: &Producer,
) -> (Arc<omni_social::zalo::shared::SharedTokens>, Tail) {
    let zalo_shared = Arc::new(omni_social::zalo::shared::SharedTokens::new(
        settings.kafka.topics.zalo_tokens.clone(),
        Arc::new(producer.clone()),
        settings.zalo_sealing.clone(),
    ));
    let zalo_tail = {
        let store = zalo_shared.clone();
        Arc::new(omni_bus::table::tail(
            &settings.kafka,
            &settings.kafka.topics.zalo_tokens,
            move |r| store.apply(r.key.as_bytes(), r.value.as_deref()),
        ))
    };
    let (tx, rx) = watch::channel(false);
    zalo_shared.followed(rx);
    let tail = Arc::downgrade(&zalo_tail);
    tokio::spawn(async move {
        while let Some(tail) = tail.upgrade() {
            if tail.caught_up(Duration::from_secs(5)).await {
                let _ = tx.send(true);
                return;
            }
        }
    });
    (zalo_shared, zalo_tail)
}

/// Readers and senders record e-mail threads on the thread topic; every replica follows it,
/// so the sender finds a thread's chain whichever replica read or answered its mail.
fn thread_index(settings: &Settings, producer: &Producer) -> Arc<omni_email::ThreadIndex> {
    Arc::new(if settings.mailboxes.is_empty() {
        omni_email::ThreadIndex::default()
    } else {
        omni_email::ThreadIndex::durable(
            &settings.kafka,
            Arc::new(producer.clone()),
            THREAD_INDEX_CAPACITY,
            settings.kafka.publish_timeout(),
        )
    })
}

/// How long a mailbox reader taking over from another instance waits first; without a router
/// this instance is the only one.
fn takeover_grace(settings: &Settings, router: &RouterTask) -> Duration {
    match &router.handle {
        Some(_) => settings.kafka.publish_timeout() + Duration::from_secs(1),
        None => Duration::ZERO,
    }
}

/// The webhook routes' state, and the multipart SMS store behind Vonage's message endpoint.
fn app_state(
    settings: &Settings,
    ingress: Ingress,
    producer: &Producer,
    registry: Registry,
) -> anyhow::Result<(Arc<AppState>, Arc<ConcatStore>)> {
    let channels = Channels::new(settings);
    let concat = Arc::new(ConcatStore::new(
        SmsWebhook::new(
            channels.sms.twilio_message.tenants(),
            Endpoint::VonageMessage,
        ),
        settings.kafka.topics.sms_parts.clone(),
        settings.sms_concat.clone(),
        ConcatMetrics::register(&registry)?,
    ));
    let state = Arc::new(AppState::new(
        ingress,
        channels,
        concat.clone(),
        producer.clone(),
        registry,
    ));
    Ok((state, concat))
}

/// The multipart SMS upkeep, started when a tenant first has Vonage; it ends with the
/// router, after the HTTP drain: no part arrives after it.
fn concat_upkeep(
    state: &Arc<AppState>,
    concat: Arc<ConcatStore>,
    settings: &Settings,
    ownership: &omni_bus::Ownership,
    stop: &watch::Receiver<bool>,
) -> ConcatUpkeep {
    let (state, kafka) = (state.clone(), settings.kafka.clone());
    let (ownership, stop) = (ownership.clone(), stop.clone());
    ConcatUpkeep::new(move || {
        tokio::spawn(run_concat(
            state.clone(),
            concat.clone(),
            kafka.clone(),
            ownership.clone(),
            stop.clone(),
        ))
    })
}

/// Binds and serves `app` until the returned sender fires (then drains).
async fn serve(
    settings: &Settings,
    app: axum::Router,
) -> anyhow::Result<(
    tokio::sync::oneshot::Sender<()>,
    JoinHandle<std::io::Result<()>>,
)> {
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, kafka = %settings.kafka.bootstrap_servers,
        "omnirouter listening: POST /v1/inbound/{{tenant}}, GET /metrics /healthz /readyz");
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
    server: (
        tokio::sync::oneshot::Sender<()>,
        JoinHandle<std::io::Result<()>>,
    ),
    livechat: Option<Arc<omni_livechat::Livechat>>,
    router: RouterTask,
    /// Stops every channel's tasks; the components (named for the log) are awaited in order.
    channels: (watch::Sender<bool>, Vec<(&'static str, Component)>),
    concat_task: Arc<Mutex<Option<JoinHandle<()>>>>,
    outbound: (watch::Sender<bool>, Option<JoinHandle<()>>),
    zalo_tail: Tail,
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
        let _ = self.server.0.send(());
        // Upgraded sockets are not part of the HTTP drain: close them now (1001), so widgets
        // reconnect elsewhere at once rather than when the process is gone.
        if let Some(chat) = &self.livechat {
            chat.close_sockets();
        }
        if tokio::time::timeout_at(deadline, self.reload.1)
            .await
            .is_err()
        {
            tracing::warn!("a reload did not finish within the grace period");
        }
        match tokio::time::timeout_at(deadline, self.server.1).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "http server failed while draining"),
            Ok(Err(e)) => tracing::error!(error = %e, "http server task failed"),
            Err(_) => tracing::warn!("in-flight requests did not finish within the grace period"),
        }
        let _ = self.router.stop_tx.send(true);
        // The live chat feed first, then the mailbox readers.
        let _ = self.channels.0.send(true);
        for (name, component) in self.channels.1 {
            for task in component.tasks {
                if tokio::time::timeout_at(deadline, task).await.is_err() {
                    tracing::warn!(
                        task = name,
                        "a channel task did not stop within the grace period"
                    );
                }
            }
        }
        let concat_task = self
            .concat_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = concat_task {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        stop_senders_and_router(self.outbound, self.router.task, deadline).await;
        // Replies still running now are abandoned: count them before the flush gives them time.
        let replies_unfinished = pending.count().replies_unfinished;
        let records_unflushed = self
            .producer
            .flush_or_purge(left().max(Duration::from_millis(100)))
            .await;
        drop(self.zalo_tail);
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

/// How many mails the e-mail thread index keeps in memory (the newest; the topic keeps all).
const THREAD_INDEX_CAPACITY: usize = 100_000;

/// The multipart SMS upkeep: follows the parts topic (every replica) and reassembles the
/// tenants this replica owns until `stop`.
async fn run_concat(
    state: Arc<AppState>,
    concat: Arc<ConcatStore>,
    kafka: omni_bus::BusConfig,
    ownership: omni_bus::Ownership,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let follower = {
        let concat = concat.clone();
        omni_bus::table::tail(&kafka, &kafka.topics.sms_parts, move |r| {
            concat.apply(r.key.as_bytes(), r.value.as_deref());
        })
    };
    concat.run(&state.ingress, ownership, stop).await;
    drop(follower);
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
