//! A channel's entry point hands the daemon one [`Component`]: the HTTP routes it serves, the
//! reply senders the outbound dispatcher calls, and the background tasks it runs (mailbox
//! readers, feeds, upkeep loops). A channel owns its config, its build and its metrics; the
//! daemon only merges routes, hands senders over, and awaits tasks at shutdown, in order.

use crate::outbound::ChannelSender;
use omni_core::ChannelKind;
use std::sync::Arc;
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
