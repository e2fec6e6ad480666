//! Every channel, each built by its own entry point, in one list: live chat, e-mail,
//! Messenger, WhatsApp, Zalo and SMS. Each returns a [`Component`] (its routes, its reply senders, its
//! background tasks) and, where a reload gives it new tenants, a handle for that.

use anyhow::Context as _;
use omni_bus::{BusConfig, Ownership, Producer};
use omni_channel::{ChannelSender, Component, Ingress};
use omni_core::ChannelKind;
use omni_sms::component::{Sms, SmsDeps};
use omni_social::messenger::component::Messenger;
use omni_social::whatsapp::component::Whatsapp;
use omni_social::zalo::component::{SendDeps, Zalo};
use prometheus::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use crate::settings::Settings;

/// How many mails the e-mail thread index keeps in memory (the newest; the topic keeps all).
const THREAD_INDEX_CAPACITY: usize = 100_000;

/// What the channels are built from besides the config.
pub struct ChannelDeps<'a> {
    /// Publishes every channel's events.
    pub producer: &'a Producer,
    /// Where every channel's metrics go.
    pub registry: &'a Registry,
    /// The webhook path every webhook channel shares (one dedupe cache).
    pub ingress: Arc<Ingress>,
    /// The media store and safe fetcher: replies' attachments are read through it.
    pub media: Arc<omni_media::Media>,
    /// A new ingress for a channel that dedupes on its own (e-mail) or takes bodies of
    /// another size (live chat frames).
    pub own_ingress: &'a dyn Fn(usize) -> Ingress,
    /// The tenants this instance owns: their mailboxes, Zalo refreshes and SMS reassembly
    /// happen here.
    pub ownership: Ownership,
    /// Whether other replicas share the work (a router runs here): a mailbox taken over from
    /// another instance waits for its last publishes first.
    pub replicated: bool,
    /// Ends the channels' background tasks; fired after the HTTP drain.
    pub stop: watch::Receiver<bool>,
    /// Ends the Zalo token upkeep; fired with the reply senders' stop.
    pub senders_stop: watch::Receiver<bool>,
}

/// The built channels.
pub struct Channels {
    /// Each channel's component, named for the shutdown log, in the order they stop.
    pub components: Vec<(&'static str, Component)>,
    /// Live chat, when some tenant has a widget and live chat is enabled.
    pub livechat: Option<Arc<omni_livechat::Livechat>>,
    /// Messenger.
    pub messenger: Arc<Messenger>,
    /// WhatsApp.
    pub whatsapp: Arc<Whatsapp>,
    /// Zalo (its handle also keeps the shared token follower alive).
    pub zalo: Arc<Zalo>,
    /// SMS.
    pub sms: Arc<Sms>,
}

impl Channels {
    /// Builds every channel of `settings`.
    pub fn build(settings: &Settings, deps: ChannelDeps<'_>) -> anyhow::Result<Self> {
        let mut components = Vec::new();
        let livechat = match livechat(settings, &deps)? {
            Some((chat, component)) => {
                components.push(("live chat feed", component));
                Some(chat)
            }
            None => None,
        };
        let email = email(settings, &deps).context("building the e-mail channel")?;
        components.push(("mailbox reader", email));
        let (messenger, component) = omni_social::messenger::component::build(
            &settings.messenger_tenants,
            settings.messenger_api.clone(),
            settings.outbound.is_some(),
            deps.ingress.clone(),
        )
        .context("building the Messenger HTTP client")?;
        components.push(("messenger", component));
        let (whatsapp, component) = omni_social::whatsapp::component::build(
            &settings.whatsapp_tenants,
            settings.whatsapp_api.clone(),
            settings.outbound.is_some(),
            deps.ingress.clone(),
        )
        .context("building the WhatsApp HTTP client")?;
        components.push(("whatsapp", component));
        let (zalo, component) = zalo(settings, &deps)?;
        components.push(("zalo", component));
        let (sms, component) = sms(settings, &deps)?;
        components.push(("multipart SMS upkeep", component));
        Ok(Self {
            components,
            livechat,
            messenger,
            whatsapp,
            zalo,
            sms,
        })
    }

    /// Every channel's routes, taken out of the components.
    pub fn take_routes(&mut self) -> axum::Router {
        self.components
            .iter_mut()
            .fold(axum::Router::new(), |app, (_, c)| {
                app.merge(std::mem::take(&mut c.routes))
            })
    }

    /// Every channel's reply senders, taken out of the components.
    pub fn take_senders(&mut self) -> Vec<(ChannelKind, Arc<dyn ChannelSender>)> {
        self.components
            .iter_mut()
            .flat_map(|(_, c)| std::mem::take(&mut c.senders))
            .collect()
    }
}

/// The agent API's live chat revocations, made by live chat.
pub struct LivechatRevoker(pub Arc<omni_livechat::Livechat>);

impl omni_router::api::VisitorRevoker for LivechatRevoker {
    fn revoke<'a>(
        &'a self,
        tenant: &'a omni_core::TenantId,
        visitor: &'a str,
    ) -> omni_router::api::RevokeFuture<'a> {
        use omni_livechat::revocation::RevokeError;
        use omni_router::api::RevokeFailure;
        Box::pin(async move {
            self.0
                .revoke(tenant.as_str(), visitor)
                .await
                .map_err(|e| match e {
                    RevokeError::InvalidVisitor => RevokeFailure::InvalidVisitor(e.to_string()),
                    RevokeError::Unavailable(source) => {
                        tracing::warn!(tenant = %tenant, error = %source, "live chat revocation not stored");
                        RevokeFailure::Unavailable
                    }
                })
        })
    }
}

/// Live chat's entry point, when some tenant has a widget and live chat is enabled.
fn livechat(
    settings: &Settings,
    deps: &ChannelDeps<'_>,
) -> anyhow::Result<Option<(Arc<omni_livechat::Livechat>, Component)>> {
    let Some(chat) = &settings.livechat else {
        return Ok(None);
    };
    let built = omni_livechat::component::build(
        (chat.settings.clone(), chat.widgets.clone()),
        (deps.own_ingress)(chat.settings.max_frame_bytes),
        Arc::new(deps.producer.clone()),
        settings.kafka.clone(),
        deps.registry,
        deps.stop.clone(),
    )?;
    Ok(Some(built))
}

/// The e-mail channel: a reader per mailbox this instance owns, the SMTP sender if it sends.
/// Mail takes the inbound path every channel takes (dedupe, `omni_messages_received_total`),
/// with its own dedupe cache: mail and webhook event ids never meet.
fn email(
    settings: &Settings,
    deps: &ChannelDeps<'_>,
) -> Result<Component, omni_email::component::BuildError> {
    omni_email::component::build(
        &settings.mailboxes,
        omni_email::component::EmailDeps {
            kafka: &settings.kafka,
            sink: Arc::new(deps.producer.clone()),
            ingress: Arc::new((deps.own_ingress)(settings.max_body_bytes)),
            registry: deps.registry,
            threads: thread_index(settings, deps.producer),
            ownership: deps.ownership.clone(),
            takeover_grace: if deps.replicated {
                settings.kafka.publish_timeout() + Duration::from_secs(1)
            } else {
                Duration::ZERO
            },
            send: settings.outbound.is_some(),
            media: deps.media.clone(),
            stop: deps.stop.clone(),
        },
    )
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

/// Zalo: the webhook, and where replies are sent, the sender with the OA token upkeep shared
/// between replicas.
fn zalo(settings: &Settings, deps: &ChannelDeps<'_>) -> anyhow::Result<(Arc<Zalo>, Component)> {
    let sending = settings.outbound.as_ref().map(|_| SendDeps {
        api: settings.zalo_api.clone(),
        refresh: settings.zalo_refresh.clone(),
        sealing: settings.zalo_sealing.clone(),
        bus: &settings.kafka,
        sink: Arc::new(deps.producer.clone()),
        ownership: deps.ownership.clone(),
        registry: deps.registry,
        stop: deps.senders_stop.clone(),
        media: deps.media.clone(),
    });
    Ok(omni_social::zalo::component::build(
        &settings.zalo_tenants,
        sending,
        deps.ingress.clone(),
    )?)
}

/// SMS: every provider's webhooks, the multipart upkeep, and the sender where replies are
/// sent.
fn sms(settings: &Settings, deps: &ChannelDeps<'_>) -> anyhow::Result<(Arc<Sms>, Component)> {
    let bus: &BusConfig = &settings.kafka;
    Ok(omni_sms::component::build(
        &settings.sms_tenants,
        SmsDeps {
            bus,
            concat: settings.sms_concat.clone(),
            api: settings.outbound.as_ref().map(|_| settings.sms_api.clone()),
            ownership: deps.ownership.clone(),
            registry: deps.registry,
            stop: deps.stop.clone(),
        },
        deps.ingress.clone(),
    )?)
}
