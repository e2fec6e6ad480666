//! Start-up and shutdown: build the producer, create topics, serve HTTP, reload tenants on
//! SIGHUP or a changed config file ([`crate::reload`]), and on SIGTERM/SIGINT stop accepting,
//! drain in-flight requests, stop the readers, senders and router, and flush the producer,
//! all within one deadline (`server.shutdown_grace_secs`); what is left is purged and counted
//! ([`crate::shutdown`]).

use anyhow::Context as _;
use omni_bus::{BusMetrics, Producer};
use omni_channel::{DedupeCache, DispatchMetrics, Dispatcher, Ingress, IngressMetrics};
use omni_core::ChannelKind;
use omni_social::messenger::MessengerSender;
use omni_social::zalo::token::TokenMetrics;
use omni_social::zalo::ZaloSender;
use prometheus::{IntGauge, Opts, Registry};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

use crate::reload::{
    agent_tokens, ConcatUpkeep, Live, ReloadMetrics, Reloader, Senders, ZaloTokens,
};
use crate::server::{router, AppState, Channels};
use crate::settings::{Loaded, OutboundSettings, Settings};
use crate::shutdown::{Leftovers, Pending, WATCHDOG_MARGIN};
use omni_sms::send::SmsSender;
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
    let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: reload by editing the config file");
            None
        }
    };
    let settings = &loaded.settings;
    // Every live chat visitor holds a socket: take the hard limit on open files, not the
    // (often 1024) soft one.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    let registry = Registry::new();
    let build_info = IntGauge::with_opts(
        Opts::new("omni_build_info", "Build information; always 1.")
            .const_label("version", env!("CARGO_PKG_VERSION")),
    )?;
    build_info.set(1);
    registry.register(Box::new(build_info))?;
    let bus_metrics = Arc::new(BusMetrics::register(&registry)?);
    let ingress_metrics = IngressMetrics::register(&registry)?;
    let reload_metrics = ReloadMetrics::register(&registry)?;

    let producer =
        Producer::new(&settings.kafka, bus_metrics.clone()).context("creating kafka producer")?;

    if settings.kafka.create_topics {
        let kafka = settings.kafka.clone();
        let metrics = bus_metrics.clone();
        tokio::spawn(async move { create_topics_until_done(kafka, metrics).await });
    }

    let livechat = match &settings.livechat {
        Some(chat) => {
            let ingress = Ingress::new(
                Arc::new(producer.clone()),
                settings.kafka.topics.inbound.clone(),
                settings.kafka.topics.delivery.clone(),
                DedupeCache::new(settings.dedupe_window, settings.dedupe_capacity),
                chat.settings.max_frame_bytes,
                ingress_metrics.clone(),
            );
            Some(Arc::new(omni_livechat::Livechat::new(
                chat.settings.clone(),
                chat.widgets.clone(),
                ingress,
                Arc::new(producer.clone()),
                settings.kafka.clone(),
                omni_livechat::LivechatMetrics::register(&registry)?,
            )))
        }
        None => None,
    };
    let livechat_running = livechat.as_ref().map(|chat| chat.start());
    let ingress = Ingress::new(
        Arc::new(producer.clone()),
        settings.kafka.topics.inbound.clone(),
        settings.kafka.topics.delivery.clone(),
        DedupeCache::new(settings.dedupe_window, settings.dedupe_capacity),
        settings.max_body_bytes,
        ingress_metrics.clone(),
    );
    let (router_stop_tx, router_stop_rx) = tokio::sync::watch::channel(false);
    let mut router_task = None;
    let mut shared = None;
    let mut router_metrics = None;
    let mut router_handle = None;
    if let Some(router_settings) = settings.router.clone() {
        let metrics = omni_router::RouterMetrics::register(&registry, &settings.response_buckets)?;
        router_metrics = Some(metrics.clone());
        let router = Arc::new(omni_router::Router::new(
            router_settings,
            settings.kafka.clone(),
            producer.clone(),
            metrics,
            bus_metrics.clone(),
        ));
        router.set_advertised_url(advertised_url(
            settings.advertised_url.as_deref(),
            settings.listen,
        ));
        shared = Some(router.shared());
        router_handle = Some(router.clone());
        let mut stop = router_stop_rx.clone();
        router_task = Some(tokio::spawn(async move {
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
    }
    let agent_api = Arc::new(omni_router::api::ApiState {
        shared,
        producer: producer.clone(),
        topics: settings.kafka.topics.clone(),
        tokens: std::sync::RwLock::new(agent_tokens(settings)),
        max_body_bytes: settings.max_body_bytes,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client for forwarded reads")?,
        metrics: router_metrics,
    });
    // Per-tenant channel state (Zalo refreshes, SMS reassembly) lives where the router owns
    // the tenant; without a router this instance is the only one.
    let ownership = router_handle.as_ref().map_or_else(
        || omni_bus::Ownership::fixed(omni_bus::Owned::everything()),
        |r| r.ownership(),
    );
    // Every replica follows the Zalo token pairs the owners write.
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
    {
        // No pair is seeded or refreshed before what the topic held at start has been read.
        let (tx, rx) = tokio::sync::watch::channel(false);
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
    }
    // Readers and senders record e-mail threads on the thread topic; every replica follows it,
    // so the sender finds a thread's chain whichever replica read or answered its mail.
    let threads = Arc::new(if settings.mailboxes.is_empty() {
        omni_email::ThreadIndex::default()
    } else {
        omni_email::ThreadIndex::durable(
            &settings.kafka,
            Arc::new(producer.clone()),
            THREAD_INDEX_CAPACITY,
            settings.kafka.publish_timeout(),
        )
    });
    // Mailboxes are read where the router group puts their checkpoint's partition; without a
    // router this instance is the only one and reads them all.
    let (mailbox_ownership, takeover_grace) = match &router_handle {
        Some(_) => (
            ownership.clone(),
            settings.kafka.publish_timeout() + Duration::from_secs(1),
        ),
        None => (ownership.clone(), Duration::ZERO),
    };
    let (outbound_stop_tx, outbound_stop_rx) = tokio::sync::watch::channel(false);
    let (outbound_task, senders, replies) = match &settings.outbound {
        Some(outbound) => {
            let (task, senders, replies) = start_outbound(
                settings,
                outbound,
                &registry,
                (producer.clone(), bus_metrics.clone()),
                threads.clone(),
                (zalo_shared.clone(), ownership.clone()),
                outbound_stop_rx,
            )?;
            (Some(task), Some(senders), Some(replies))
        }
        None => (None, None, None),
    };
    let (email_stop_tx, email_stop_rx) = tokio::sync::watch::channel(false);
    // Mail takes the inbound path every channel takes (dedupe, `omni_messages_received_total`).
    let mail_ingress = Arc::new(Ingress::new(
        Arc::new(producer.clone()),
        settings.kafka.topics.inbound.clone(),
        settings.kafka.topics.delivery.clone(),
        DedupeCache::new(settings.dedupe_window, settings.dedupe_capacity),
        settings.max_body_bytes,
        ingress_metrics,
    ));
    let email_tasks = start_mailboxes(
        settings,
        &registry,
        (&producer, mail_ingress),
        threads,
        (mailbox_ownership, takeover_grace),
        email_stop_rx,
    )?;
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

    let concat_upkeep = {
        let (state, kafka) = (state.clone(), settings.kafka.clone());
        let ownership = ownership.clone();
        // Ends with the router, after the HTTP drain: no part arrives after it.
        let stop = router_stop_rx.clone();
        ConcatUpkeep::new(move || {
            tokio::spawn(run_concat(
                state.clone(),
                concat.clone(),
                kafka.clone(),
                ownership.clone(),
                stop.clone(),
            ))
        })
    };
    concat_upkeep.ensure(settings);
    let concat_task = concat_upkeep.task.clone();

    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, kafka = %settings.kafka.bootstrap_servers,
        "omnirouter listening: POST /v1/inbound/{{tenant}}, GET /metrics /healthz /readyz");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut app = router(state.clone()).merge(omni_router::api::routes(agent_api.clone()));
    if let Some(chat) = &livechat {
        app = app.merge(omni_livechat::server::routes(chat.clone()));
    }
    // Connection info: live chat caps sockets per client IP.
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stop_rx.await;
    });
    let server = tokio::spawn(async move { server.await });

    let (reload_stop_tx, reload_stop_rx) = tokio::sync::watch::channel(false);
    let live = Live {
        app: state,
        agent_api,
        router: router_handle,
        livechat: livechat.clone(),
        senders,
        concat: concat_upkeep,
    };
    let grace = settings.shutdown_grace;
    let reloader = Reloader::new(config, loaded, live, reload_metrics);
    let reload_task = tokio::spawn(reloader.run(hangup, reload_stop_rx));

    shutdown_signal().await;
    // One deadline for the whole shutdown (drain, readers, senders, router, flush), so an
    // orchestrator's grace period a little above `server.shutdown_grace_secs` always covers it;
    // the watchdog ends the process shortly after it whatever still blocks.
    let deadline = tokio::time::Instant::now() + grace;
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    let pending = Pending {
        producer: producer.clone(),
        replies,
    };
    crate::shutdown::arm_watchdog(grace + WATCHDOG_MARGIN, pending.clone());
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutdown requested: draining in-flight requests"
    );
    // No reload while shutting down.
    let _ = reload_stop_tx.send(true);
    let _ = stop_tx.send(());
    // Upgraded sockets are not part of the HTTP drain: close them now (1001), so widgets
    // reconnect elsewhere at once rather than when the process is gone.
    if let Some(chat) = &livechat {
        chat.close_sockets();
    }
    if tokio::time::timeout_at(deadline, reload_task)
        .await
        .is_err()
    {
        tracing::warn!("a reload did not finish within the grace period");
    }
    match tokio::time::timeout_at(deadline, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "http server failed while draining"),
        Ok(Err(e)) => tracing::error!(error = %e, "http server task failed"),
        Err(_) => tracing::warn!("in-flight requests did not finish within the grace period"),
    }
    let _ = router_stop_tx.send(true);
    let _ = email_stop_tx.send(true);
    if let Some(running) = livechat_running {
        // The feed thread notices within one poll (100 ms).
        let stopped = tokio::task::spawn_blocking(move || running.stop());
        if tokio::time::timeout_at(deadline, stopped).await.is_err() {
            tracing::warn!("the live chat feed did not stop within the grace period");
        }
    }
    for task in email_tasks {
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            tracing::warn!("a mailbox reader did not stop within the grace period");
        }
    }
    let concat_task = concat_task.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(task) = concat_task {
        let _ = tokio::time::timeout_at(deadline, task).await;
    }
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
    // Replies still running now are abandoned: count them before the flush gives them time.
    let replies_unfinished = pending.count().replies_unfinished;
    let records_unflushed = producer
        .flush_or_purge(left().max(Duration::from_millis(100)))
        .await;
    drop(zalo_tail);
    Ok(Leftovers {
        records_unflushed,
        replies_unfinished,
    })
}

/// How many mails the e-mail thread index keeps in memory (the newest; the topic keeps all).
const THREAD_INDEX_CAPACITY: usize = 100_000;

/// Keeps one IMAP reader running for each configured mailbox this instance owns (`ownership`:
/// the router group's partition of the mailbox's checkpoint key), until `stop`. A reader that
/// starts here after another instance read the mailbox waits `takeover_grace` first, then
/// resumes from the latest checkpoint (see `omni_email::reader`).
fn start_mailboxes(
    settings: &Settings,
    registry: &Registry,
    (producer, ingress): (&Producer, Arc<Ingress>),
    threads: Arc<omni_email::ThreadIndex>,
    (ownership, takeover_grace): (omni_bus::Ownership, Duration),
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    if settings.mailboxes.is_empty() {
        return Ok(Vec::new());
    }
    let metrics = omni_email::Metrics::register(registry)?;
    let sink: Arc<dyn omni_channel::EventSink> = Arc::new(producer.clone());
    let checkpoints: Arc<dyn omni_email::CheckpointStore> = Arc::new(
        omni_email::KafkaCheckpoints::new(&settings.kafka, sink.clone()),
    );
    let mut readers = std::collections::BTreeMap::new();
    for mailbox in &settings.mailboxes {
        let address = mailbox.address.clone();
        let reader = omni_email::MailboxReader::new(
            mailbox.clone(),
            settings.kafka.topics.inbound.clone(),
            sink.clone(),
            checkpoints.clone(),
            metrics.clone(),
            threads.clone(),
        )
        .with_context(|| format!("mailbox {address}"))?
        .with_ingress(ingress.clone())
        .with_takeover_grace(takeover_grace);
        if readers
            .insert(mailbox.checkpoint_key(), (address, reader))
            .is_some()
        {
            anyhow::bail!(
                "two mailboxes read the same folder ({}): configure each once",
                mailbox.checkpoint_key()
            );
        }
    }
    let keys: Vec<String> = readers.keys().cloned().collect();
    let readers = Arc::new(readers);
    let supervisor = omni_bus::ownership::run_per_owned_key(
        ownership,
        keys,
        move |key, stop| {
            let reader = readers.get(&key).cloned();
            async move {
                let Some((address, reader)) = reader else {
                    return;
                };
                if let Err(e) = reader.run(stop).await {
                    tracing::error!(mailbox = %address, error = %e, "mailbox reader stopped");
                }
            }
        },
        stop,
    );
    Ok(vec![tokio::spawn(supervisor)])
}

/// Starts sending replies from the outbound topic: a sender per channel (Messenger, SMS and
/// Zalo always, so a reload can give them tenants; e-mail when mailboxes are configured), the
/// Zalo token upkeep, and the dispatcher over a consumer group. Ends when `stop` turns true.
/// Also returns the live count of replies taken and not finished (for the shutdown summary).
fn start_outbound(
    settings: &Settings,
    outbound: &OutboundSettings,
    registry: &Registry,
    (producer, bus_metrics): (Producer, Arc<BusMetrics>),
    threads: Arc<omni_email::ThreadIndex>,
    zalo_shared: (
        Arc<omni_social::zalo::shared::SharedTokens>,
        omni_bus::Ownership,
    ),
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, Senders, omni_bus::Unfinished)> {
    let metrics = DispatchMetrics::register(registry)?;
    let mut dispatcher = Dispatcher::new(
        Arc::new(producer.clone()),
        settings.kafka.topics.delivery.clone(),
        outbound.policy,
        metrics,
        stop.clone(),
    )
    .with_max_age(outbound.max_age)
    // Live chat replies reach visitors through the sockets: every instance reads them itself.
    .delivered_elsewhere(ChannelKind::Livechat);
    let messenger = Arc::new(
        MessengerSender::new(
            settings.messenger_tenants.iter().map(|(t, m)| (t, m)),
            settings.messenger_api.clone(),
        )
        .context("building the Messenger HTTP client")?,
    );
    dispatcher = dispatcher.with_sender(ChannelKind::Messenger, messenger.clone());
    if !settings.mailboxes.is_empty() {
        let sender = omni_email::EmailSender::new(
            &settings.mailboxes,
            omni_email::EmailSendSettings::default(),
            threads,
        )
        .context("building the e-mail senders")?;
        dispatcher = dispatcher.with_sender(ChannelKind::Email, Arc::new(sender));
    }
    let sms = Arc::new(
        SmsSender::new(settings.sms_tenants.clone(), settings.sms_api.clone())
            .context("building the SMS HTTP client")?,
    );
    dispatcher = dispatcher.with_sender(ChannelKind::Sms, sms.clone());
    let mut zalo_tokens = ZaloTokens::new(
        settings.zalo_refresh.clone(),
        TokenMetrics::register(registry)?,
        stop.clone(),
    )
    .shared(zalo_shared.0, zalo_shared.1);
    let keepers = zalo_tokens
        .prepare(&settings.zalo_tenants)
        .context("building the Zalo OAuth HTTP client")?;
    let zalo = Arc::new(
        ZaloSender::new(zalo_tokens.commit(keepers), settings.zalo_api.clone())
            .context("building the Zalo HTTP client")?,
    );
    dispatcher = dispatcher.with_sender(ChannelKind::Zalo, zalo.clone());
    let senders = Senders {
        messenger,
        sms,
        zalo,
        zalo_tokens,
    };
    let consumer = omni_bus::Consumer::new(
        &settings.kafka,
        &outbound.group_id,
        &[settings.kafka.topics.outbound.as_str()],
        bus_metrics,
    )
    .context("joining the outbound consumer group")?;
    let replies = consumer.unfinished();
    let max_in_flight = outbound.max_in_flight;
    let mut stop = stop;
    let ownership = OutboundOwnership {
        producer: producer.clone(),
        outbound_topic: settings.kafka.topics.outbound.clone(),
        progress_topic: settings.kafka.topics.outbound_progress.clone(),
        max_age: outbound.max_age,
        // The router forwards misrouted records of its inputs already: one copy is enough.
        forward_misrouted: settings.router.is_none(),
        gate: consumer.gate(),
    };
    // Every outbound partition keeps a live owner even where the broker leaves a dead
    // member's partitions with nobody (tansu 0.6; see omni_bus::liveness).
    let liveness = omni_bus::Liveness {
        bus: settings.kafka.clone(),
        producer: producer.clone(),
        registry: settings.kafka.topics.router_owners.clone(),
        prefix: format!("{}/", outbound.group_id),
        member: format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "omnirouter".into()),
            std::process::id()
        ),
        topic: settings.kafka.topics.outbound.clone(),
        partitions: 0,
        gate: consumer.gate(),
        rejoin: consumer.rejoin_handle(),
        patience: omni_bus::liveness::session_timeout(&settings.kafka) + Duration::from_secs(5),
    };
    let task = tokio::spawn(async move {
        let Some(ownership) = ownership.build(&mut stop).await else {
            return;
        };
        let liveness = omni_bus::Liveness {
            partitions: ownership.partitions,
            ..liveness
        };
        let live = tokio::spawn(liveness.run(stop.clone()));
        let dispatcher = Arc::new(dispatcher.with_ownership(ownership));
        let result = consumer
            .run_concurrent(
                max_in_flight,
                |r| Dispatcher::order_key(r.payload.as_deref()),
                move |r| {
                    let dispatcher = dispatcher.clone();
                    async move { dispatcher.handle(&r).await }
                },
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            )
            .await;
        live.abort();
        if let Err(e) = result {
            tracing::error!(error = %e, "outbound dispatch stopped: replies are not being sent");
        }
    });
    Ok((task, senders, replies))
}

/// What the outbound dispatcher needs to send each reply once, from its tenant's partition
/// (see `omni_channel::outbound`): built once the outbound topic's partition count is known.
struct OutboundOwnership {
    producer: Producer,
    outbound_topic: String,
    progress_topic: String,
    max_age: Duration,
    forward_misrouted: bool,
    gate: Arc<omni_bus::PartitionGate>,
}

impl OutboundOwnership {
    /// Waits for the outbound topic's partition count (the topics may still be being
    /// created); `None` if asked to stop first.
    async fn build(
        self,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<omni_channel::SendOwnership> {
        let mut delay = Duration::from_millis(500);
        let wanted = [self.outbound_topic.clone(), self.progress_topic.clone()];
        let partitions = loop {
            match self
                .producer
                .partition_counts(&wanted, Duration::from_secs(10))
                .await
            {
                Ok(counts) => {
                    let outbound = counts.get(&self.outbound_topic).copied().unwrap_or(0);
                    let progress = counts.get(&self.progress_topic).copied().unwrap_or(0);
                    if progress < outbound {
                        tracing::error!(outbound, progress, topic = %self.progress_topic,
                            "the outbound progress topic needs as many partitions as the outbound topic: replies are not being sent");
                        return None;
                    }
                    break outbound;
                }
                Err(e) => tracing::warn!(error = %e, "outbound dispatch waiting for its topics"),
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return None,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        };
        let store: Arc<dyn omni_channel::PartitionedStore> =
            Arc::new(omni_channel::KafkaStore::new(self.producer));
        Some(omni_channel::SendOwnership {
            partitions,
            store: store.clone(),
            forward_misrouted: self.forward_misrouted,
            gate: self.gate,
            progress: Arc::new(omni_channel::ProgressLog::new(
                store,
                self.progress_topic,
                self.max_age,
            )),
        })
    }
}

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
