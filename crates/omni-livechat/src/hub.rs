//! What one daemon instance knows about live chat conversations: a bounded log per
//! conversation (rebuilt from Kafka, so every instance holds the same entries at the same
//! positions; `hub/log.rs`, with the design note on cursors), the sockets attached to each
//! (`hub/mailbox.rs`), per-conversation rate limits, whether the conversation waits for an
//! agent (from the routing topic), and connection counts per client IP.

use chrono::{DateTime, Utc};
use omni_core::{ConversationId, EventId, TenantId};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use crate::protocol::{Cursor, Position, Stream};
use crate::routing::QueueUpdate;

pub use log::{ConvLog, Entry};
pub use mailbox::{Outgoing, Subscriber};

mod log;
mod mailbox;

/// Messages a socket has not seen, in log order: their positions and frame bodies.
pub type Backlog = Vec<(Position, Arc<str>)>;

struct Conv {
    tenant: TenantId,
    widget: String,
    log: ConvLog,
    subscribers: Vec<Arc<Subscriber>>,
    tokens: f64,
    refilled: Instant,
    /// Visitor messages admitted (and charged) on this instance that the feed has not read
    /// back yet: reading them back charges nothing more.
    charged: VecDeque<EventId>,
    /// The router's last word on the conversation while it waits for an agent (a `queued`
    /// update), shown to sockets that attach later; `None` once an agent took it or it ended.
    waiting: Option<QueueUpdate>,
}

/// At most this many admitted messages wait to be read back per conversation.
const CHARGED_MAX: usize = 64;

/// Limits the hub enforces.
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    /// Entries kept per conversation.
    pub log_max_messages: usize,
    /// Entries older than this are dropped.
    pub log_ttl: Duration,
    /// Visitor messages per minute per conversation, sustained.
    pub rate_per_minute: u32,
    /// Visitor messages allowed in a burst.
    pub burst: u32,
    /// Frames queued per socket before it counts as lagging.
    pub queue_cap: usize,
}

/// The instance's live chat state.
pub struct Hub {
    limits: HubLimits,
    convs: Mutex<HashMap<ConversationId, Conv>>,
    /// Open sockets per client IP, with the IP's key on the presence topic.
    ips: Mutex<HashMap<IpAddr, (u32, u64)>>,
    /// Wakes the presence publisher when a socket opens or closes.
    ips_changed: Notify,
}

/// Holds one connection slot of an IP; gives it back on drop.
pub struct IpSlot {
    hub: Arc<Hub>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut ips = lock(&self.hub.ips);
        if let Some((n, _)) = ips.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                ips.remove(&self.ip);
            }
        }
        drop(ips);
        self.hub.ips_changed.notify_one();
    }
}

/// A reply that reached a visitor (or was read), to report on the delivery topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reached {
    /// The tenant.
    pub tenant: TenantId,
    /// The widget.
    pub widget: String,
    /// The conversation.
    pub conversation: ConversationId,
    /// The `omni.message.send` event.
    pub event_id: EventId,
}

impl Hub {
    /// An empty hub.
    pub fn new(limits: HubLimits) -> Self {
        Self {
            limits,
            convs: Mutex::new(HashMap::new()),
            ips: Mutex::new(HashMap::new()),
            ips_changed: Notify::new(),
        }
    }

    /// Takes a connection slot for `ip` (whose presence key is `key`), or `None` when its
    /// sockets here plus `elsewhere` (other replicas' count) already reach `cap`.
    pub fn acquire_ip(
        self: &Arc<Self>,
        ip: IpAddr,
        key: u64,
        cap: u32,
        elsewhere: u32,
    ) -> Option<IpSlot> {
        let mut ips = lock(&self.ips);
        let (n, _) = ips.entry(ip).or_insert((0, key));
        if n.saturating_add(elsewhere) >= cap {
            if *n == 0 {
                ips.remove(&ip);
            }
            return None;
        }
        *n += 1;
        drop(ips);
        self.ips_changed.notify_one();
        Some(IpSlot {
            hub: self.clone(),
            ip,
        })
    }

    /// Open sockets per IP key, for the presence topic.
    pub fn ip_counts(&self) -> Vec<(u64, u32)> {
        lock(&self.ips).values().map(|&(n, key)| (key, n)).collect()
    }

    /// Resolves when a socket opened or closed since the last call (changes coalesce).
    pub async fn ips_changed(&self) {
        self.ips_changed.notified().await;
    }

    /// Records a message read from Kafka and queues it to the conversation's sockets.
    /// Returns the reply if it reached at least one socket and was not reported yet.
    pub fn record(
        &self,
        tenant: &TenantId,
        widget: &str,
        conversation: ConversationId,
        entry: Entry,
        now: DateTime<Utc>,
    ) -> Option<Reached> {
        let oldest = now - chrono::Duration::from_std(self.limits.log_ttl).unwrap_or_default();
        if entry.at < oldest {
            return None;
        }
        let mut convs = lock(&self.convs);
        let conv = convs
            .entry(conversation)
            .or_insert_with(|| self.new_conv(tenant, widget));
        let (position, body, event_id, at) =
            (entry.position, entry.body.clone(), entry.event_id, entry.at);
        if !conv.log.push(entry, self.limits.log_max_messages) {
            return None;
        }
        conv.log.expire(oldest);
        if position.stream == Stream::Inbound {
            self.charge_logged(conv, event_id, now - at, Instant::now());
        }
        if conv.subscribers.is_empty() {
            return None;
        }
        for s in &conv.subscribers {
            s.offer(
                Outgoing::Message(position, body.clone()),
                self.limits.queue_cap,
            );
        }
        if position.stream == Stream::Outbound {
            if let Some(e) = conv.log.entries_mut().back_mut() {
                e.reported_sent = true;
            }
            return Some(Reached {
                tenant: conv.tenant.clone(),
                widget: conv.widget.clone(),
                conversation,
                event_id,
            });
        }
        None
    }

    /// Attaches a socket to `conversation` and returns what it has not seen after `cursor`,
    /// atomically (nothing recorded in between is missed; the socket's cursor drops repeats),
    /// with the replies that reach a visitor for the first time from this instance.
    pub fn attach(
        &self,
        tenant: &TenantId,
        widget: &str,
        conversation: ConversationId,
        cursor: Cursor,
    ) -> (Arc<Subscriber>, Backlog, Vec<Reached>) {
        let subscriber = Arc::new(Subscriber::default());
        let mut convs = lock(&self.convs);
        let conv = convs
            .entry(conversation)
            .or_insert_with(|| self.new_conv(tenant, widget));
        conv.subscribers.push(subscriber.clone());
        // Queued behind the backlog: the socket writes its mailbox once the backlog is out.
        // Only a wait with an estimate: without one the widget has nothing to show.
        if let Some(waiting) = conv.waiting.as_ref().filter(|w| w.has_estimate()) {
            let frame = Arc::from(waiting.frame_at(Utc::now()));
            subscriber.offer(Outgoing::Frame(frame), self.limits.queue_cap);
        }
        let (backlog, reached) = Self::collect_after(conv, conversation, cursor);
        (subscriber, backlog, reached)
    }

    /// True when the conversation is held here (a live chat conversation with messages in
    /// the log or a socket attached): only those follow routing events.
    pub fn knows(&self, conversation: ConversationId) -> bool {
        lock(&self.convs).contains_key(&conversation)
    }

    /// Applies the router's news about a conversation held here (of `tenant`): remembers
    /// whether it waits, and sends the matching frame to its sockets on this instance.
    /// Returns `false` (and does nothing) for a conversation not held here.
    pub fn queue_update(
        &self,
        tenant: &TenantId,
        conversation: ConversationId,
        update: QueueUpdate,
    ) -> bool {
        let mut convs = lock(&self.convs);
        let Some(conv) = convs.get_mut(&conversation).filter(|c| c.tenant == *tenant) else {
            return false;
        };
        let frame: Arc<str> = Arc::from(update.frame());
        conv.waiting = matches!(update, QueueUpdate::Queued { .. }).then_some(update);
        for s in &conv.subscribers {
            s.offer(Outgoing::Frame(frame.clone()), self.limits.queue_cap);
        }
        true
    }

    /// What a socket at `cursor` has not seen (for a `resume` frame on an open socket).
    pub fn replay(&self, conversation: ConversationId, cursor: Cursor) -> (Backlog, Vec<Reached>) {
        let mut convs = lock(&self.convs);
        match convs.get_mut(&conversation) {
            Some(conv) => Self::collect_after(conv, conversation, cursor),
            None => (Vec::new(), Vec::new()),
        }
    }

    fn collect_after(
        conv: &mut Conv,
        conversation: ConversationId,
        cursor: Cursor,
    ) -> (Backlog, Vec<Reached>) {
        let backlog = conv
            .log
            .after(cursor)
            .map(|e| (e.position, e.body.clone()))
            .collect();
        let mut reached = Vec::new();
        for e in conv.log.entries_mut() {
            if e.position.stream == Stream::Outbound && !e.reported_sent {
                e.reported_sent = true;
                reached.push(Reached {
                    tenant: conv.tenant.clone(),
                    widget: conv.widget.clone(),
                    conversation,
                    event_id: e.event_id,
                });
            }
        }
        (backlog, reached)
    }

    /// The replies up to `cursor` not yet reported read from this instance.
    pub fn mark_read(&self, conversation: ConversationId, cursor: Cursor) -> Vec<Reached> {
        let mut convs = lock(&self.convs);
        let Some(conv) = convs.get_mut(&conversation) else {
            return Vec::new();
        };
        let (tenant, widget) = (conv.tenant.clone(), conv.widget.clone());
        let mut read = Vec::new();
        for e in conv.log.entries_mut() {
            if e.position.stream == Stream::Outbound
                && cursor.covers(e.position)
                && !std::mem::replace(&mut e.reported_read, true)
            {
                read.push(Reached {
                    tenant: tenant.clone(),
                    widget: widget.clone(),
                    conversation,
                    event_id: e.event_id,
                });
            }
        }
        read
    }

    /// Detaches a socket.
    pub fn detach(&self, conversation: ConversationId, subscriber: &Arc<Subscriber>) {
        let mut convs = lock(&self.convs);
        if let Some(conv) = convs.get_mut(&conversation) {
            conv.subscribers.retain(|s| !Arc::ptr_eq(s, subscriber));
            if conv.subscribers.is_empty() && conv.log.entries().is_empty() {
                convs.remove(&conversation);
            }
        }
    }

    /// Takes one token from the conversation's message bucket; `false` when rate limited.
    /// Follow an admitted message with [`Hub::admitted`].
    ///
    /// The bucket holds for the whole deployment: every instance reads every visitor message
    /// back from the inbound topic (the feed) and charges it to the conversation's bucket, so
    /// messages sent through a socket on another replica use up this one's tokens too. A
    /// message admitted here is charged once, at admission.
    pub fn allow_message(&self, conversation: ConversationId, now: Instant) -> bool {
        let mut convs = lock(&self.convs);
        let Some(conv) = convs.get_mut(&conversation) else {
            return true;
        };
        self.refill(conv, now);
        if conv.tokens >= 1.0 {
            conv.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// What became of a message [`Hub::allow_message`] admitted: `Some((event, duplicate))`
    /// once Kafka has it, `None` when it was not published. A failed publish and a duplicate
    /// (paid for when it was first sent) give the token back, and so does a message the feed
    /// already read back (and charged) before the publish returned.
    pub fn admitted(&self, conversation: ConversationId, outcome: Option<(EventId, bool)>) {
        let mut convs = lock(&self.convs);
        let Some(conv) = convs.get_mut(&conversation) else {
            return;
        };
        let refund = match outcome {
            None | Some((_, true)) => true,
            Some((event_id, false)) => {
                let logged = conv.log.entries().iter().any(|e| e.event_id == event_id);
                if !logged {
                    conv.charged.push_back(event_id);
                    if conv.charged.len() > CHARGED_MAX {
                        conv.charged.pop_front();
                    }
                }
                logged
            }
        };
        if refund {
            let burst = f64::from(self.limits.burst.max(1));
            conv.tokens = (conv.tokens + 1.0).min(burst);
        }
    }

    /// Charges a visitor message read from the log, unless it was charged when admitted here
    /// or is older (`age`) than a full refill (history read at start-up: it no longer weighs
    /// on the bucket). The bucket never goes below empty.
    fn charge_logged(
        &self,
        conv: &mut Conv,
        event_id: EventId,
        age: chrono::Duration,
        now: Instant,
    ) {
        if let Some(i) = conv.charged.iter().position(|e| *e == event_id) {
            conv.charged.remove(i);
            return;
        }
        let rate = f64::from(self.limits.rate_per_minute.max(1)) / 60.0;
        let full_refill = f64::from(self.limits.burst.max(1)) / rate;
        if age.num_milliseconds() as f64 / 1000.0 >= full_refill {
            return;
        }
        self.refill(conv, now);
        conv.tokens = (conv.tokens - 1.0).max(0.0);
    }

    fn refill(&self, conv: &mut Conv, now: Instant) {
        let rate = f64::from(self.limits.rate_per_minute) / 60.0;
        let burst = f64::from(self.limits.burst.max(1));
        let elapsed = now.saturating_duration_since(conv.refilled).as_secs_f64();
        conv.tokens = (conv.tokens + elapsed * rate).min(burst);
        conv.refilled = now.max(conv.refilled);
    }

    /// Sends an ephemeral frame to every socket of the conversation on this instance.
    pub fn broadcast(&self, conversation: ConversationId, frame: Arc<str>) {
        let convs = lock(&self.convs);
        if let Some(conv) = convs.get(&conversation) {
            for s in &conv.subscribers {
                s.offer(Outgoing::Frame(frame.clone()), self.limits.queue_cap);
            }
        }
    }

    /// Drops expired entries and conversations with neither entries nor sockets.
    pub fn sweep(&self, now: DateTime<Utc>) {
        let oldest = now - chrono::Duration::from_std(self.limits.log_ttl).unwrap_or_default();
        let mut convs = lock(&self.convs);
        convs.retain(|_, c| {
            c.log.expire(oldest);
            !(c.log.entries().is_empty() && c.subscribers.is_empty())
        });
    }

    /// Conversations held, and sockets attached.
    pub fn counts(&self) -> (usize, usize) {
        let convs = lock(&self.convs);
        let sockets = convs.values().map(|c| c.subscribers.len()).sum();
        (convs.len(), sockets)
    }

    fn new_conv(&self, tenant: &TenantId, widget: &str) -> Conv {
        Conv {
            tenant: tenant.clone(),
            widget: widget.to_owned(),
            log: ConvLog::default(),
            subscribers: Vec::new(),
            tokens: f64::from(self.limits.burst.max(1)),
            refilled: Instant::now(),
            charged: VecDeque::new(),
            waiting: None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::log::tests::entry;
    use super::*;

    fn limits() -> HubLimits {
        HubLimits {
            log_max_messages: 100,
            log_ttl: Duration::from_secs(3600),
            rate_per_minute: 60,
            burst: 3,
            queue_cap: 8,
        }
    }

    fn conv() -> (TenantId, ConversationId) {
        let t = TenantId::new("demo").unwrap();
        let c = ConversationId::derive(
            &t,
            &omni_core::ChannelRef::new(omni_core::ChannelKind::Livechat, "web"),
            "v1",
            None,
        );
        (t, c)
    }

    #[test]
    fn sockets_get_live_messages_and_replies_are_reported_once() {
        let hub = Hub::new(limits());
        let (t, c) = conv();
        hub.record(&t, "web", c, entry(Stream::Outbound, 1), Utc::now());
        let (sub, backlog, reached) = hub.attach(&t, "web", c, Cursor::START);
        assert_eq!(backlog.len(), 1);
        assert_eq!(
            reached.len(),
            1,
            "a stored reply reaches the visitor on connect"
        );
        let live = hub.record(&t, "web", c, entry(Stream::Outbound, 2), Utc::now());
        assert!(live.is_some());
        assert_eq!(sub.drain().len(), 1);
        let (_, again) = hub.replay(c, Cursor::START);
        assert!(again.is_empty(), "reported once per instance");
        assert_eq!(hub.mark_read(c, "-1.1".parse().unwrap()).len(), 1);
        assert_eq!(hub.mark_read(c, "-1.2".parse().unwrap()).len(), 1);
        assert!(hub.mark_read(c, "-1.2".parse().unwrap()).is_empty());
        hub.detach(c, &sub);
        assert_eq!(hub.counts(), (1, 0));
    }

    #[test]
    fn a_slow_socket_is_marked_lagged_not_buffered_forever() {
        let hub = Hub::new(limits());
        let (t, c) = conv();
        let (sub, _, _) = hub.attach(&t, "web", c, Cursor::START);
        for i in 0..20 {
            hub.record(&t, "web", c, entry(Stream::Inbound, i), Utc::now());
        }
        assert!(sub.lagged());
        assert_eq!(sub.drain().len(), 8);
    }

    #[test]
    fn rate_limit_allows_a_burst_then_the_sustained_rate() {
        let hub = Hub::new(limits());
        let (t, c) = conv();
        let _ = hub.attach(&t, "web", c, Cursor::START);
        let t0 = Instant::now();
        assert!((0..3).all(|_| hub.allow_message(c, t0)));
        assert!(!hub.allow_message(c, t0));
        assert!(hub.allow_message(c, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn messages_sent_through_other_replicas_use_up_the_same_bucket() {
        let hub = Hub::new(limits());
        let (t, c) = conv();
        let _ = hub.attach(&t, "web", c, Cursor::START);
        let t0 = Instant::now();
        // One admitted here: charged once, even when the feed reads it back.
        assert!(hub.allow_message(c, t0));
        let mine = entry(Stream::Inbound, 0);
        hub.admitted(c, Some((mine.event_id, false)));
        hub.record(&t, "web", c, mine, Utc::now());
        // Two sent through another replica's socket, read from the log: charged here too.
        hub.record(&t, "web", c, entry(Stream::Inbound, 1), Utc::now());
        hub.record(&t, "web", c, entry(Stream::Inbound, 2), Utc::now());
        assert!(
            !hub.allow_message(c, t0),
            "burst of 3 used up over replicas"
        );
        // History older than a full refill (3 messages at 1/s) weighs nothing.
        let mut old = entry(Stream::Inbound, 3);
        old.at = Utc::now() - chrono::Duration::seconds(10);
        let later = t0 + Duration::from_millis(2500);
        hub.record(&t, "web", c, old, Utc::now());
        assert!(hub.allow_message(c, later));
        // Agent replies are not visitor messages.
        hub.record(&t, "web", c, entry(Stream::Outbound, 1), Utc::now());
        assert!(hub.allow_message(c, later));
        assert!(!hub.allow_message(c, later));
    }

    #[test]
    fn failed_duplicate_or_already_read_back_messages_give_their_token_back() {
        let hub = Hub::new(limits());
        let (t, c) = conv();
        let _ = hub.attach(&t, "web", c, Cursor::START);
        let t0 = Instant::now();
        assert!(hub.allow_message(c, t0));
        hub.admitted(c, None);
        assert!(hub.allow_message(c, t0));
        hub.admitted(c, Some((EventId::new_random(), true)));
        // The feed read it back (and charged it) before the publish returned.
        assert!(hub.allow_message(c, t0));
        let fast = entry(Stream::Inbound, 0);
        let id = fast.event_id;
        hub.record(&t, "web", c, fast, Utc::now());
        hub.admitted(c, Some((id, false)));
        // Charged once: two tokens of three are left.
        assert!((0..2).all(|_| hub.allow_message(c, t0)));
        assert!(!hub.allow_message(c, t0));
    }

    #[test]
    fn a_waiting_conversation_tells_its_sockets_and_those_that_attach_later() {
        let hub = Hub::new(limits());
        let (t, c) = conv();
        let queued = QueueUpdate::Queued {
            estimated_wait_secs: Some(120),
            at: Utc::now(),
        };
        assert!(
            !hub.queue_update(&t, c, queued.clone()),
            "a conversation not held here (maybe not live chat) is ignored"
        );
        assert!(!hub.knows(c));
        let (live, _, _) = hub.attach(&t, "web", c, Cursor::START);
        assert!(live.drain().is_empty());
        let other = TenantId::new("other").unwrap();
        assert!(!hub.queue_update(&other, c, queued.clone()));
        assert!(hub.queue_update(&t, c, queued));
        let frames = |s: &Subscriber| -> Vec<String> {
            s.drain()
                .into_iter()
                .map(|o| match o {
                    Outgoing::Frame(f) => f.to_string(),
                    Outgoing::Message(..) => "message".into(),
                })
                .collect()
        };
        assert_eq!(
            frames(&live),
            [r#"{"type":"queued","estimated_wait_secs":120}"#]
        );
        // A second tab (or a reconnect) is told at once.
        let (late, _, _) = hub.attach(&t, "web", c, Cursor::START);
        assert!(frames(&late)[0].starts_with(r#"{"type":"queued","estimated_wait_secs":1"#));
        // Once an agent took it, both hear so and a new socket hears nothing.
        assert!(hub.queue_update(&t, c, QueueUpdate::Assigned));
        assert_eq!(frames(&live), [r#"{"type":"assigned"}"#]);
        assert_eq!(frames(&late), [r#"{"type":"assigned"}"#]);
        let (fresh, _, _) = hub.attach(&t, "web", c, Cursor::START);
        assert!(frames(&fresh).is_empty());
        // Waiting without an estimate: nothing worth a frame to a socket attaching later.
        let unknown = QueueUpdate::Queued {
            estimated_wait_secs: None,
            at: Utc::now(),
        };
        assert!(hub.queue_update(&t, c, unknown));
        assert_eq!(frames(&live), [r#"{"type":"queued"}"#]);
        let (later, _, _) = hub.attach(&t, "web", c, Cursor::START);
        assert!(frames(&later).is_empty());
    }

    #[test]
    fn ip_slots_are_capped_and_returned() {
        let hub = Arc::new(Hub::new(limits()));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = hub.acquire_ip(ip, 7, 2, 0).unwrap();
        let _b = hub.acquire_ip(ip, 7, 2, 0).unwrap();
        assert!(hub.acquire_ip(ip, 7, 2, 0).is_none());
        assert_eq!(hub.ip_counts(), [(7, 2)]);
        drop(a);
        assert!(hub.acquire_ip(ip, 7, 2, 1).is_none(), "one held elsewhere");
        assert!(hub.acquire_ip(ip, 7, 2, 0).is_some());
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(hub.acquire_ip(other, 8, 2, 2).is_none());
        assert_eq!(hub.ip_counts().len(), 1, "a refused IP holds no entry");
    }
}
