//! Sending agents' replies: every channel's sender behind one dispatcher, over the outbound
//! consumer group, with the ownership and liveness that make each reply go out once.

use anyhow::Context as _;
use omni_bus::{BusMetrics, Producer};
use omni_channel::{ChannelSender, DispatchMetrics, Dispatcher};
use omni_core::ChannelKind;
use prometheus::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::settings::{OutboundSettings, Settings};

/// Starts sending replies from the outbound topic: `senders` (each channel's, built by its
/// entry point) behind the dispatcher, over a consumer group. Ends when `stop` turns true.
/// Also returns the live count of replies taken and not finished (for the shutdown summary).
pub fn start(
    settings: &Settings,
    outbound: &OutboundSettings,
    registry: &Registry,
    (producer, bus_metrics): (Producer, Arc<BusMetrics>),
    senders: Vec<(ChannelKind, Arc<dyn ChannelSender>)>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(JoinHandle<()>, omni_bus::Unfinished)> {
    let metrics = DispatchMetrics::register(registry)?;
    let dispatcher = Dispatcher::new(
        Arc::new(producer.clone()),
        settings.kafka.topics.delivery.clone(),
        outbound.policy,
        metrics,
        stop.clone(),
    )
    .with_max_age(outbound.max_age)
    // Live chat replies reach visitors through the sockets: every instance reads them itself.
    .delivered_elsewhere(ChannelKind::Livechat);
    let dispatcher = senders
        .into_iter()
        .fold(dispatcher, |d, (kind, sender)| d.with_sender(kind, sender));
    let consumer = omni_bus::Consumer::new(
        &settings.kafka,
        &outbound.group_id,
        &[settings.kafka.topics.outbound.as_str()],
        bus_metrics.clone(),
    )
    .context("joining the outbound consumer group")?
    // A reply that cannot be read is kept, with why, rather than dropped.
    .with_dead_letters(omni_bus::DeadLetters::new(
        producer.clone(),
        settings.kafka.topics.dead_letter.clone(),
        bus_metrics,
    ));
    let replies = consumer.unfinished();
    let task = dispatch(settings, outbound, producer, consumer, dispatcher, stop);
    Ok((task, replies))
}

/// The dispatch task: once the outbound topic's partitions are known, sends replies from the
/// partitions this instance owns, keeping every partition owned (see `omni_bus::liveness`).
fn dispatch(
    settings: &Settings,
    outbound: &OutboundSettings,
    producer: Producer,
    consumer: omni_bus::Consumer,
    dispatcher: Dispatcher,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let max_in_flight = outbound.max_in_flight;
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
    tokio::spawn(async move {
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
    })
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
