//! One attached socket's mailbox: what the hub queues for it, and its wake-up.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

use super::lock;
use crate::protocol::Position;

/// What a socket is sent.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A conversation message (filtered and stamped with the socket's cursor when written).
    Message(Position, Arc<str>),
    /// An ephemeral frame, sent as is (typing).
    Frame(Arc<str>),
}

/// One attached socket's mailbox: a small queue and a wake-up. Deliberately tiny (an idle
/// socket costs its queue's empty `VecDeque`, a `Notify` and a flag), since thousands idle.
#[derive(Debug, Default)]
pub struct Subscriber {
    queue: Mutex<VecDeque<Outgoing>>,
    notify: Notify,
    lagged: AtomicBool,
}

impl Subscriber {
    /// Takes everything queued.
    pub fn drain(&self) -> VecDeque<Outgoing> {
        std::mem::take(&mut *lock(&self.queue))
    }

    /// Waits until something is queued (or the subscriber lagged).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// True once the socket fell more than the queue cap behind: it must be closed (the
    /// widget reconnects and resumes by cursor, so nothing is lost).
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Relaxed)
    }

    pub(super) fn offer(&self, item: Outgoing, cap: usize) {
        let mut q = lock(&self.queue);
        if q.len() >= cap {
            self.lagged.store(true, Ordering::Relaxed);
        } else {
            q.push_back(item);
        }
        drop(q);
        self.notify.notify_one();
    }
}
