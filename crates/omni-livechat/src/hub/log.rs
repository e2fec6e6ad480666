//! One conversation's messages as every instance holds them, and the cursors that resume them.
//!
//! # Design note: cursors without coordination
//! Visitor messages of a conversation live in one partition of the inbound topic and its
//! agent replies in one partition of the outbound topic (both are keyed by tenant). A message's
//! [`Position`] is (topic, offset): the same on every instance. A [`Cursor`] is the highest
//! offset seen per topic; since every instance appends each partition in offset order, "the
//! messages after a cursor" is the same set everywhere, whatever order the two topics were
//! interleaved in locally. Each socket keeps its own cursor (max-merged as it is sent
//! messages), so a message is sent to a socket at most once, and a reconnecting widget that
//! presents its last cursor to any instance gets exactly what it has not seen.

use chrono::{DateTime, Utc};
use omni_core::EventId;
use std::collections::VecDeque;
use std::sync::Arc;

use crate::protocol::{Cursor, Position};

/// One message of a conversation, as every instance holds it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Where it lives on Kafka.
    pub position: Position,
    /// Its CloudEvent id (inbound: the visitor message; outbound: the `omni.message.send`).
    pub event_id: EventId,
    /// When it was written.
    pub at: DateTime<Utc>,
    /// The frame's fields after `type`, `cursor` and `seq` (JSON, starting after `{`).
    pub body: Arc<str>,
    /// `sent` was already reported from this instance (agent replies only).
    pub reported_sent: bool,
    /// `read` was already reported from this instance (agent replies only).
    pub reported_read: bool,
}

/// A bounded, time-limited log of one conversation's messages, in local arrival order.
#[derive(Debug, Default)]
pub struct ConvLog {
    entries: VecDeque<Entry>,
    high: Cursor,
}

impl ConvLog {
    /// Appends `entry` unless its position is already covered (a record read twice) or its
    /// event is already held (a resend published again after the dedupe window). Keeps at most
    /// `max` entries. Returns whether it was added.
    pub fn push(&mut self, entry: Entry, max: usize) -> bool {
        if self.high.covers(entry.position)
            || self.entries.iter().any(|e| e.event_id == entry.event_id)
        {
            self.high.advance(entry.position);
            return false;
        }
        self.high.advance(entry.position);
        self.entries.push_back(entry);
        while self.entries.len() > max {
            self.entries.pop_front();
        }
        true
    }

    /// The entries a socket at `cursor` has not seen, in log order.
    pub fn after(&self, cursor: Cursor) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(move |e| !cursor.covers(e.position))
    }

    /// Drops entries written before `oldest`.
    pub fn expire(&mut self, oldest: DateTime<Utc>) {
        while self.entries.front().is_some_and(|e| e.at < oldest) {
            self.entries.pop_front();
        }
    }

    /// Everything held.
    pub fn entries(&self) -> &VecDeque<Entry> {
        &self.entries
    }

    /// Mutable access, for marking reported deliveries.
    pub fn entries_mut(&mut self) -> &mut VecDeque<Entry> {
        &mut self.entries
    }

    /// The highest positions seen (even of entries since evicted).
    pub fn high(&self) -> Cursor {
        self.high
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::protocol::Stream;
    use proptest::prelude::*;

    pub(in crate::hub) fn entry(stream: Stream, offset: i64) -> Entry {
        Entry {
            position: Position { stream, offset },
            event_id: EventId::new_random(),
            at: Utc::now(),
            body: Arc::from(format!("\"n\":{offset}}}")),
            reported_sent: false,
            reported_read: false,
        }
    }

    #[test]
    fn resume_gives_exactly_what_is_newer_per_stream() {
        let mut log = ConvLog::default();
        for e in [
            entry(Stream::Inbound, 3),
            entry(Stream::Outbound, 10),
            entry(Stream::Inbound, 7),
            entry(Stream::Outbound, 12),
        ] {
            assert!(log.push(e, 100));
        }
        let after: Vec<_> = log
            .after("3.10".parse().unwrap())
            .map(|e| e.position.offset)
            .collect();
        assert_eq!(after, [7, 12]);
        assert_eq!(log.after(Cursor::START).count(), 4);
        assert_eq!(log.after(log.high()).count(), 0);
        // A record read twice (rebuild, rebalance) is not added again.
        assert!(!log.push(entry(Stream::Inbound, 7), 100));
    }

    #[test]
    fn the_log_is_bounded_and_expires() {
        let mut log = ConvLog::default();
        for i in 0..10 {
            log.push(entry(Stream::Outbound, i), 4);
        }
        assert_eq!(log.entries().len(), 4);
        assert_eq!(log.high().outbound, 9);
        log.expire(Utc::now() + chrono::Duration::seconds(1));
        assert!(log.entries().is_empty());
    }

    proptest! {
        /// Whatever the interleaving of the two topics on an instance, and wherever a widget
        /// disconnects, resuming from its cursor on another instance (another interleaving)
        /// yields exactly the messages it has not seen: none lost, none repeated.
        #[test]
        fn resume_across_instances_loses_and_repeats_nothing(
            ins in 0usize..8, outs in 0usize..8,
            order_a in proptest::collection::vec(any::<bool>(), 16),
            order_b in proptest::collection::vec(any::<bool>(), 16),
            cut in 0usize..17,
        ) {
            let interleave = |order: &[bool]| {
                let (mut i, mut o, mut out) = (0, 0, Vec::new());
                for &pick_in in order.iter().chain(std::iter::repeat_n(&true, 16)) {
                    if pick_in && i < ins { out.push(Position { stream: Stream::Inbound, offset: i as i64 * 2 }); i += 1; }
                    else if o < outs { out.push(Position { stream: Stream::Outbound, offset: o as i64 * 3 }); o += 1; }
                    else if i < ins { out.push(Position { stream: Stream::Inbound, offset: i as i64 * 2 }); i += 1; }
                }
                out
            };
            let a = interleave(&order_a);
            let b = interleave(&order_b);
            // The widget saw a prefix of instance A's order.
            let seen: Vec<_> = a.iter().take(cut).copied().collect();
            let mut cursor = Cursor::START;
            for p in &seen { cursor.advance(*p); }
            let mut log = ConvLog::default();
            for p in &b {
                let mut e = entry(p.stream, p.offset);
                e.position = *p;
                log.push(e, 100);
            }
            let mut got: Vec<_> = log.after(cursor).map(|e| e.position).collect();
            got.extend(seen.iter().copied());
            let mut want = b.clone();
            let key = |p: &Position| (p.stream == Stream::Outbound, p.offset);
            got.sort_by_key(key);
            want.sort_by_key(key);
            prop_assert_eq!(got, want);
        }
    }
}
