//! The SMS channel's entry point: every provider's webhook route, the multipart upkeep behind
//! Vonage's message endpoint and, where replies are sent, the sender; [`Sms::set_tenants`]
//! gives them a reloaded config's tenants.

use axum::extract::{Path, Request};
use axum::routing::{on, MethodFilter};
use omni_bus::BusConfig;
use omni_channel::{webhook_route, Component, Ingress, Ownership, Swappable};
use omni_core::{ChannelKind, TenantId};
use prometheus::Registry;
use std::sync::Arc;
use tokio::sync::watch;

use crate::reassembly::ReassemblerConfig;
use crate::send::SmsSender;
use crate::settings::{SmsApiSettings, SmsTenant};
use crate::vonage::concat_store::{ConcatMetrics, ConcatStore};
use crate::webhook::{tenants as by_id, Endpoint, SmsWebhook};

/// The running SMS channel, as a reload sees it.
pub struct Sms {
    /// Every endpoint but Vonage's messages, over the same tenants.
    endpoints: Vec<Arc<Swappable<SmsWebhook>>>,
    /// Vonage's messages, multipart reassembled (its tenants are swapped in place: it holds
    /// parts waiting for their siblings).
    concat: Arc<ConcatStore>,
    /// Turns true once some tenant has Vonage: the multipart upkeep starts then.
    vonage: watch::Sender<bool>,
    sender: Option<Arc<SmsSender>>,
}

impl Sms {
    /// Serves `tenants` from the next webhook and the next reply on; starts the multipart
    /// upkeep if a tenant has Vonage for the first time.
    pub fn set_tenants(&self, tenants: &[(TenantId, SmsTenant)]) {
        let shared = by_id(tenants.iter().cloned());
        for endpoint in &self.endpoints {
            let served = endpoint.current().endpoint();
            endpoint.replace(SmsWebhook::new(shared.clone(), served));
        }
        self.concat.set_tenants(shared.clone());
        if let Some(sender) = &self.sender {
            sender.set_tenants(shared);
        }
        if tenants.iter().any(|(_, s)| s.vonage.is_some()) {
            self.vonage.send_replace(true);
        }
    }
}

/// What SMS needs besides its tenants.
pub struct SmsDeps<'a> {
    /// Where the multipart parts topic is (`topics.sms_parts`).
    pub bus: &'a BusConfig,
    /// How parts are reassembled and expired.
    pub concat: ReassemblerConfig,
    /// The provider APIs, when this instance sends replies.
    pub api: Option<SmsApiSettings>,
    /// The tenants this replica owns: it reassembles their messages.
    pub ownership: Ownership,
    /// Where the multipart metrics go.
    pub registry: &'a Registry,
    /// Ends the multipart upkeep; fired after the HTTP drain, so no part arrives after it.
    pub stop: watch::Receiver<bool>,
}

/// Why SMS could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The sender's HTTP client could not be built.
    #[error("building the SMS HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// The multipart metrics could not be registered.
    #[error("registering the multipart SMS metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The routes of every endpoint but Vonage's messages, with the methods each provider uses.
const ENDPOINTS: [(&str, Endpoint, bool); 5] = [
    (
        "/v1/webhooks/sms/twilio/{tenant}",
        Endpoint::TwilioMessage,
        false,
    ),
    (
        "/v1/webhooks/sms/twilio/{tenant}/status",
        Endpoint::TwilioStatus,
        false,
    ),
    (
        "/v1/webhooks/sms/vonage/{tenant}/dlr",
        Endpoint::VonageDlr,
        true,
    ),
    (
        "/v1/webhooks/sms/esms/{tenant}/callback",
        Endpoint::EsmsCallback,
        true,
    ),
    (
        "/v1/webhooks/sms/gateway/{tenant}/{gateway}",
        Endpoint::Gateway,
        false,
    ),
];

/// Builds SMS for `tenants`: every webhook through `ingress`, the multipart upkeep (started
/// once some tenant has Vonage, ended by `deps.stop`) and, with `deps.api`, the sender.
pub fn build(
    tenants: &[(TenantId, SmsTenant)],
    deps: SmsDeps<'_>,
    ingress: Arc<Ingress>,
) -> Result<(Arc<Sms>, Component), BuildError> {
    let shared = by_id(tenants.iter().cloned());
    let mut routes = axum::Router::new();
    let mut endpoints = Vec::new();
    for (path, endpoint, get_too) in ENDPOINTS {
        let adapter = Arc::new(Swappable::new(SmsWebhook::new(shared.clone(), endpoint)));
        let methods = if get_too {
            MethodFilter::GET.or(MethodFilter::POST)
        } else {
            MethodFilter::POST
        };
        routes = routes.route(
            path,
            webhook_route(methods, ingress.clone(), adapter.clone()),
        );
        endpoints.push(adapter);
    }
    let concat = Arc::new(ConcatStore::new(
        SmsWebhook::new(shared.clone(), Endpoint::VonageMessage),
        deps.bus.topics.sms_parts.clone(),
        deps.concat.clone(),
        ConcatMetrics::register(deps.registry)?,
    ));
    routes = routes.route(
        "/v1/webhooks/sms/vonage/{tenant}",
        vonage_message(concat.clone(), ingress.clone()),
    );
    let (vonage, upkeep) = multipart_upkeep(concat.clone(), ingress, &deps);
    let mut component = Component::default().with_routes(routes).with_task(upkeep);
    let sender = match deps.api {
        Some(api) => {
            let sender = Arc::new(SmsSender::new(tenants.iter().cloned(), api)?);
            component = component.with_sender(ChannelKind::Sms, sender.clone());
            Some(sender)
        }
        None => None,
    };
    let sms = Arc::new(Sms {
        endpoints,
        concat,
        vonage,
        sender,
    });
    sms.set_tenants(tenants);
    Ok((sms, component))
}

/// Vonage messages go through the multipart store (parts made durable before they are
/// acknowledged, then reassembled).
fn vonage_message(concat: Arc<ConcatStore>, ingress: Arc<Ingress>) -> axum::routing::MethodRouter {
    on(
        MethodFilter::GET.or(MethodFilter::POST),
        move |Path(params): Path<std::collections::HashMap<String, String>>, request: Request| async move {
            let tenant = params.get("tenant").map_or("", String::as_str);
            let (parts, body) = request.into_parts();
            concat.handle(&ingress, tenant, &parts, body).await
        },
    )
}

/// The multipart upkeep task: once some tenant has Vonage (the returned sender turns true),
/// follows the parts topic (every replica) and reassembles the tenants this replica owns,
/// until `deps.stop`.
fn multipart_upkeep(
    concat: Arc<ConcatStore>,
    ingress: Arc<Ingress>,
    deps: &SmsDeps<'_>,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (vonage, mut needed) = watch::channel(false);
    let (bus, ownership, mut stop) = (deps.bus.clone(), deps.ownership.clone(), deps.stop.clone());
    let task = tokio::spawn(async move {
        tokio::select! {
            _ = needed.wait_for(|n| *n) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let follower = {
            let concat = concat.clone();
            omni_bus::table::tail(&bus, &bus.topics.sms_parts, move |r| {
                concat.apply(r.key.as_bytes(), r.value.as_deref());
            })
        };
        concat.run(&ingress, ownership, stop).await;
        drop(follower);
    });
    (vonage, task)
}
