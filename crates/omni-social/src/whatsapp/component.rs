//! WhatsApp's entry point: the webhook route (signed changes and Meta's `GET` handshake) and,
//! where replies are sent, the sender; [`Whatsapp::set_tenants`] gives them a reloaded
//! config's tenants.

use axum::routing::MethodFilter;
use omni_channel::{webhook_route, Component, Ingress, Swappable};
use omni_core::{ChannelKind, TenantId};
use std::sync::Arc;

use super::{WhatsappChannel, WhatsappSendSettings, WhatsappSender, WhatsappTenant};

/// The running WhatsApp channel, as a reload and the agent API see it.
pub struct Whatsapp {
    adapter: Arc<Swappable<WhatsappChannel>>,
    /// Replies (where this instance sends them) and agents' read marks (everywhere).
    sender: Arc<WhatsappSender>,
    /// Where media ids' URLs point.
    media_base: String,
}

impl Whatsapp {
    /// Serves `tenants` from the next webhook and the next reply on.
    pub fn set_tenants(&self, tenants: &[(TenantId, WhatsappTenant)]) {
        self.adapter.replace(WhatsappChannel::new(
            tenants.iter().cloned(),
            self.media_base.clone(),
        ));
        self.sender.set_tenants(tenants.iter().map(|(t, w)| (t, w)));
    }

    /// The sender, for agents' read marks and typing indicators.
    pub fn sender(&self) -> Arc<WhatsappSender> {
        self.sender.clone()
    }
}

/// Builds WhatsApp for `tenants`: the webhook at `/v1/webhooks/whatsapp/{tenant}` through
/// `ingress`, and the sender of channel kind `whatsapp`, handed to the outbound dispatcher
/// when `replies` (this instance sends replies). Fails only when the sender's HTTP client
/// cannot be built.
pub fn build(
    tenants: &[(TenantId, WhatsappTenant)],
    api: WhatsappSendSettings,
    replies: bool,
    ingress: Arc<Ingress>,
) -> Result<(Arc<Whatsapp>, Component), reqwest::Error> {
    let media_base = api.api_root();
    let adapter = Arc::new(Swappable::new(WhatsappChannel::new(
        tenants.iter().cloned(),
        media_base.clone(),
    )));
    let sender = Arc::new(WhatsappSender::new(
        tenants.iter().map(|(t, w)| (t, w)),
        api,
    )?);
    let route = webhook_route(MethodFilter::POST, ingress.clone(), adapter.clone())
        .merge(crate::meta::handshake_route(ingress, adapter.clone()));
    let mut component = Component::default()
        .with_routes(axum::Router::new().route("/v1/webhooks/whatsapp/{tenant}", route));
    if replies {
        component = component.with_sender(ChannelKind::Whatsapp, sender.clone());
    }
    Ok((
        Arc::new(Whatsapp {
            adapter,
            sender,
            media_base,
        }),
        component,
    ))
}
