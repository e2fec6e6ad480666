//! Messenger's (and Instagram Direct's) entry point: the Meta webhook route (signed events of
//! both objects and Meta's `GET` handshake) and, where replies are sent, a sender per channel
//! kind; [`Messenger::set_tenants`] gives them a reloaded config's tenants.

use axum::routing::MethodFilter;
use omni_channel::{webhook_route, Component, Ingress, Swappable};
use omni_core::{ChannelKind, TenantId};
use std::sync::Arc;

use super::{MessengerChannel, MessengerSendSettings, MessengerSender, MessengerTenant};

/// The running Messenger channel, as a reload sees it.
pub struct Messenger {
    adapter: Arc<Swappable<MessengerChannel>>,
    /// The Messenger and the Instagram sender (replies where this instance sends them, and
    /// agents' sender actions everywhere).
    senders: [Arc<MessengerSender>; 2],
}

impl Messenger {
    /// Serves `tenants` from the next webhook and the next reply on.
    pub fn set_tenants(&self, tenants: &[(TenantId, MessengerTenant)]) {
        self.adapter
            .replace(MessengerChannel::new(tenants.iter().cloned()));
        for sender in &self.senders {
            sender.set_tenants(tenants.iter().map(|(t, m)| (t, m)));
        }
    }
}

impl Messenger {
    /// The senders by channel kind, for agents' typing indicators and read marks (sent from
    /// every instance, under the same per-account rate limit as this instance's replies).
    pub fn senders(&self) -> [(ChannelKind, Arc<MessengerSender>); 2] {
        let [messenger, instagram] = &self.senders;
        [
            (ChannelKind::Messenger, messenger.clone()),
            (ChannelKind::Instagram, instagram.clone()),
        ]
    }
}

/// Builds Messenger and Instagram Direct for `tenants`: the webhook at
/// `/v1/webhooks/messenger/{tenant}` (objects `page` and `instagram`) through `ingress`, and
/// the senders of channel kinds `messenger` and `instagram`, handed to the outbound
/// dispatcher when `replies` (this instance sends replies). Fails only when a sender's HTTP
/// client cannot be built.
pub fn build(
    tenants: &[(TenantId, MessengerTenant)],
    api: MessengerSendSettings,
    replies: bool,
    ingress: Arc<Ingress>,
) -> Result<(Arc<Messenger>, Component), reqwest::Error> {
    let adapter = Arc::new(Swappable::new(MessengerChannel::new(
        tenants.iter().cloned(),
    )));
    let pairs = || tenants.iter().map(|(t, m)| (t, m));
    let senders = [
        Arc::new(MessengerSender::new(pairs(), api.clone())?),
        Arc::new(MessengerSender::instagram(pairs(), api)?),
    ];
    let route = webhook_route(MethodFilter::POST, ingress.clone(), adapter.clone())
        .merge(crate::meta::handshake_route(ingress, adapter.clone()));
    let mut component = Component::default()
        .with_routes(axum::Router::new().route("/v1/webhooks/messenger/{tenant}", route));
    if replies {
        let [messenger, instagram] = &senders;
        component = component
            .with_sender(ChannelKind::Messenger, messenger.clone())
            .with_sender(ChannelKind::Instagram, instagram.clone());
    }
    Ok((Arc::new(Messenger { adapter, senders }), component))
}
