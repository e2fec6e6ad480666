//! A channel's entry point hands the daemon one [`Component`]: the HTTP routes it serves, the
//! reply senders the outbound dispatcher calls, and the background tasks it runs (mailbox
//! readers, feeds, upkeep loops). A channel owns its config, its build and its metrics; the
//! daemon only merges routes, hands senders over, and awaits tasks at shutdown, in order.

use crate::outbound::ChannelSender;
use crate::webhook::{Ingress, WebhookAdapter};
use axum::extract::{Path, Request};
use axum::routing::{on, MethodFilter, MethodRouter};
use omni_core::ChannelKind;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::task::JoinHandle;

/// What one channel runs in the daemon.
#[derive(Default)]
pub struct Component {
    /// Routes to merge into the daemon's HTTP server (webhooks, sockets, scripts).
    pub routes: axum::Router,
    /// Reply senders for the outbound dispatcher, by the channel they send on.
    pub senders: Vec<(ChannelKind, Arc<dyn ChannelSender>)>,
    /// Background tasks; each ends once the stop signal the channel was built with fires, and
    /// the daemon awaits them (within its shutdown deadline) after the HTTP drain.
    pub tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Component")
            .field(
                "senders",
                &self.senders.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

impl Component {
    /// Adds routes.
    #[must_use]
    pub fn with_routes(mut self, routes: axum::Router) -> Self {
        self.routes = self.routes.merge(routes);
        self
    }

    /// Adds a reply sender for `channel`.
    #[must_use]
    pub fn with_sender(mut self, channel: ChannelKind, sender: Arc<dyn ChannelSender>) -> Self {
        self.senders.push((channel, sender));
        self
    }

    /// Adds a background task.
    #[must_use]
    pub fn with_task(mut self, task: JoinHandle<()>) -> Self {
        self.tasks.push(task);
        self
    }
}

/// A webhook adapter that a config reload replaces whole. A request takes the one in force
/// once and keeps it to its end, so a reload never changes a tenant's credentials halfway
/// through a request.
pub struct Swappable<A>(RwLock<Arc<A>>);

impl<A> Swappable<A> {
    /// Starts with `adapter`.
    pub fn new(adapter: A) -> Self {
        Self(RwLock::new(Arc::new(adapter)))
    }

    /// The adapter in force.
    pub fn current(&self) -> Arc<A> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Serves `adapter` from the next request on.
    pub fn replace(&self, adapter: A) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(adapter);
    }
}

/// The route of a webhook adapter: requests for `methods` go whole through the shared inbound
/// handler. The tenant is the path's `{tenant}`; other path parameters (a gateway's name) are
/// the adapter's to read from the URI.
pub fn webhook_route<A: WebhookAdapter>(
    methods: MethodFilter,
    ingress: Arc<Ingress>,
    adapter: Arc<Swappable<A>>,
) -> MethodRouter {
    on(
        methods,
        move |Path(params): Path<HashMap<String, String>>, request: Request| async move {
            // Taking the request whole avoids the header map copy the `HeaderMap` extractor
            // makes.
            let tenant = params.get("tenant").map_or("", String::as_str);
            let (parts, body) = request.into_parts();
            let adapter = adapter.current();
            ingress.handle(&*adapter, tenant, &parts, body).await
        },
    )
}
