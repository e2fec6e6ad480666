//! Zalo OA's entry point: its webhook route and, where replies are sent, its sender with the
//! OA token upkeep and the follower of the pairs the replicas share;
//! [`Zalo::set_tenants`] gives them a reloaded config's tenants.

use omni_bus::BusConfig;
use omni_channel::{webhook_route, Component, EventSink, Ingress, Ownership, Swappable};
use omni_core::{ChannelKind, TenantId};
use prometheus::Registry;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

use super::shared::{SharedTokens, TokenSealing};
use super::token::{RefreshSettings, TokenMetrics};
use super::upkeep::TokenUpkeep;
use super::{ZaloChannel, ZaloSendSettings, ZaloSender, ZaloTenant};

/// The running Zalo channel, as a reload sees it.
pub struct Zalo {
    adapter: Arc<Swappable<ZaloChannel>>,
    sending: Option<Sending>,
}

/// The sending side: the sender, its token keepers, and the follower of the shared pairs.
struct Sending {
    sender: Arc<ZaloSender>,
    upkeep: Mutex<TokenUpkeep>,
    /// Follows the pairs the owners write while the channel lives; dropping it stops it.
    _follower: Arc<omni_bus::table::Tail>,
}

impl Zalo {
    /// Serves `tenants` from the next webhook and the next reply on; the token keepers of
    /// unchanged OAs are kept. Fails, changing nothing, when a new keeper's HTTP client cannot
    /// be built.
    pub fn set_tenants(&self, tenants: &[(TenantId, ZaloTenant)]) -> Result<(), reqwest::Error> {
        let prepared = match &self.sending {
            Some(s) => Some(lock(&s.upkeep).prepare(tenants)?),
            None => None,
        };
        self.adapter
            .replace(ZaloChannel::new(tenants.iter().cloned()));
        if let (Some(s), Some(keepers)) = (&self.sending, prepared) {
            let tokens = lock(&s.upkeep).commit(keepers);
            s.sender.set_tokens(tokens);
        }
        Ok(())
    }
}

fn lock(upkeep: &Mutex<TokenUpkeep>) -> std::sync::MutexGuard<'_, TokenUpkeep> {
    upkeep.lock().unwrap_or_else(|p| p.into_inner())
}

/// What Zalo needs to send replies from this instance.
pub struct SendDeps<'a> {
    /// The OA message API.
    pub api: ZaloSendSettings,
    /// The OAuth endpoint and when to refresh.
    pub refresh: RefreshSettings,
    /// How the pairs are sealed on the tokens topic.
    pub sealing: TokenSealing,
    /// Where the tokens topic is (`topics.zalo_tokens`).
    pub bus: &'a BusConfig,
    /// Writes the pairs this replica refreshes.
    pub sink: Arc<dyn EventSink>,
    /// The tenants this replica owns: it refreshes their OAs.
    pub ownership: Ownership,
    /// Where the token metrics go.
    pub registry: &'a Registry,
    /// Ends the upkeep (a refresh in progress finishes first).
    pub stop: watch::Receiver<bool>,
    /// Reads replies' attachments to upload them.
    pub media: Arc<omni_media::Media>,
}

/// Why Zalo could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An HTTP client (sender or OAuth) could not be built.
    #[error("building the Zalo HTTP clients: {0}")]
    Http(#[from] reqwest::Error),
    /// The token metrics could not be registered.
    #[error("registering the Zalo token metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Builds Zalo for `tenants`: the webhook at `/v1/webhooks/zalo/{tenant}` through `ingress`,
/// and, with `sending`, the sender and the token upkeep. Every replica follows the pairs the
/// owners write; no pair is seeded or refreshed before what the topic held at start has been
/// read.
pub fn build(
    tenants: &[(TenantId, ZaloTenant)],
    sending: Option<SendDeps<'_>>,
    ingress: Arc<Ingress>,
) -> Result<(Arc<Zalo>, Component), BuildError> {
    let adapter = Arc::new(Swappable::new(ZaloChannel::new(tenants.iter().cloned())));
    let route = webhook_route(axum::routing::MethodFilter::POST, ingress, adapter.clone());
    let mut component = Component::default()
        .with_routes(axum::Router::new().route("/v1/webhooks/zalo/{tenant}", route));
    let sending = match sending {
        Some(deps) => {
            let sending = start_sending(tenants, deps)?;
            component = component.with_sender(ChannelKind::Zalo, sending.sender.clone());
            Some(sending)
        }
        None => None,
    };
    Ok((Arc::new(Zalo { adapter, sending }), component))
}

fn start_sending(
    tenants: &[(TenantId, ZaloTenant)],
    deps: SendDeps<'_>,
) -> Result<Sending, BuildError> {
    let (shared, follower) = follow_shared_tokens(&deps);
    let mut upkeep = TokenUpkeep::new(
        deps.refresh,
        TokenMetrics::register(deps.registry)?,
        deps.stop,
    )
    .shared(shared, deps.ownership);
    let keepers = upkeep.prepare(tenants)?;
    let sender =
        Arc::new(ZaloSender::new(upkeep.commit(keepers), deps.api)?.with_media(deps.media));
    Ok(Sending {
        sender,
        upkeep: Mutex::new(upkeep),
        _follower: follower,
    })
}

/// The pairs shared between replicas, and the tail that keeps them current.
fn follow_shared_tokens(deps: &SendDeps<'_>) -> (Arc<SharedTokens>, Arc<omni_bus::table::Tail>) {
    let topic = &deps.bus.topics.zalo_tokens;
    let shared = Arc::new(SharedTokens::new(
        topic.clone(),
        deps.sink.clone(),
        deps.sealing.clone(),
    ));
    let follower = {
        let store = shared.clone();
        Arc::new(omni_bus::table::tail(deps.bus, topic, move |r| {
            store.apply(r.key.as_bytes(), r.value.as_deref());
        }))
    };
    let (tx, rx) = watch::channel(false);
    shared.followed(rx);
    let tail = Arc::downgrade(&follower);
    tokio::spawn(async move {
        while let Some(tail) = tail.upgrade() {
            if tail.caught_up(Duration::from_secs(5)).await {
                let _ = tx.send(true);
                return;
            }
        }
    });
    (shared, follower)
}
