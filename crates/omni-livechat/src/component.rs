//! The live chat channel's entry point: its routes (session, WebSocket, widget script) and
//! its background work (the Kafka feed, presence), stopped when the daemon's channels stop.

use omni_bus::BusConfig;
use omni_channel::component::Component;
use omni_channel::{EventSink, Ingress};
use prometheus::Registry;
use std::sync::Arc;
use tokio::sync::watch;

use crate::{Livechat, LivechatMetrics, LivechatSettings, Widgets};

/// Builds and starts live chat. The returned [`Livechat`] is what a reload gives new widgets
/// and what shutdown closes sockets on; the component's task stops the feed once `stop`
/// turns true (the feed notices within one poll, 100 ms).
pub fn build(
    (settings, widgets): (LivechatSettings, Widgets),
    ingress: Ingress,
    sink: Arc<dyn EventSink>,
    bus: BusConfig,
    registry: &Registry,
    mut stop: watch::Receiver<bool>,
) -> prometheus::Result<(Arc<Livechat>, Component)> {
    let chat = Arc::new(Livechat::new(
        settings,
        widgets,
        ingress,
        sink,
        bus,
        LivechatMetrics::register(registry)?,
    ));
    let running = chat.start();
    let feed = tokio::spawn(async move {
        let _ = stop.wait_for(|s| *s).await;
        let _ = tokio::task::spawn_blocking(move || running.stop()).await;
    });
    let component = Component::default()
        .with_routes(crate::server::routes(chat.clone()))
        .with_task(feed);
    Ok((chat, component))
}
