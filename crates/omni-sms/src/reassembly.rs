//! Reassembly of multipart (concatenated) SMS, so a customer's long message is published as
//! one message rather than as fragments.
//!
//! Design (pure: the caller owns the [`Reassembler`], passes `now`, and calls
//! [`Reassembler::expire`] from a timer):
//! - A message is identified by [`ConcatKey`] = (sender, recipient, concatenation reference);
//!   its parts are numbered `1..=total` and may arrive in any order, and more than once.
//! - A repeated part number is ignored ([`Offer::Duplicate`]; the first copy wins). A part
//!   whose `total` differs from the one its message started with, or whose number is outside
//!   `1..=total`, is refused with a [`ConcatError`].
//! - When the last missing part arrives the parts are joined in order and returned as
//!   [`Assembled`] with every part's message id. The ids of a completed message are remembered
//!   for one TTL (at most `max_remembered_ids` of them), so a provider resending a part of an
//!   already-published message gets [`Offer::Duplicate`] instead of opening a new message.
//! - A message still incomplete one TTL after its first part arrived is expired: [`expire`]
//!   returns it as a [`Partial`] so the caller publishes what arrived rather than lose it.
//!   The same happens to the oldest incomplete message when a new one would exceed
//!   `max_pending` (returned in [`Offer::Stored::evicted`]). A part arriving after its message
//!   was expired opens a new message (and so a second partial), which is the price of never
//!   holding text forever.
//!
//! [`expire`]: Reassembler::expire

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use thiserror::Error;

/// Why a part was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConcatError {
    /// `total` is 0 or above the configured maximum.
    #[error("a multipart message of {total} parts is outside 1..={max}")]
    InvalidTotal {
        /// The total the part announced.
        total: u16,
        /// The configured maximum.
        max: u16,
    },
    /// The part number is 0 or above `total`.
    #[error("part {part} is outside 1..={total}")]
    PartOutOfRange {
        /// The part number.
        part: u16,
        /// The total it announced.
        total: u16,
    },
    /// The part announces a different total than the message's first part did.
    #[error("part {part} announces {got} parts but the message has {expected}")]
    TotalMismatch {
        /// The part number.
        part: u16,
        /// The total of the message so far.
        expected: u16,
        /// The total this part announced.
        got: u16,
    },
}

/// Limits of a [`Reassembler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReassemblerConfig {
    /// How long a message may wait for its missing parts after its first part arrived.
    pub ttl: Duration,
    /// Incomplete messages held at once; at least 1 is always allowed.
    pub max_pending: usize,
    /// The most parts a message may announce (255 is the UDH limit).
    pub max_parts: u16,
    /// Part ids of completed messages remembered to recognize resent parts.
    pub max_remembered_ids: usize,
}

impl Default for ReassemblerConfig {
    /// 15 minutes, 10 000 pending messages, 255 parts, 50 000 remembered ids.
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(15 * 60),
            max_pending: 10_000,
            max_parts: 255,
            max_remembered_ids: 50_000,
        }
    }
}

/// What makes parts belong to one message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConcatKey {
    /// The sender's address.
    pub sender: String,
    /// The recipient (our number).
    pub to: String,
    /// The concatenation reference the handset chose (Vonage `concat-ref`).
    pub reference: String,
}

/// One received part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The message it belongs to.
    pub key: ConcatKey,
    /// Its number, from 1.
    pub number: u16,
    /// How many parts the message has.
    pub total: u16,
    /// The provider's id of this part (each part has its own).
    pub message_id: String,
    /// Its text.
    pub text: String,
}

/// A part as kept inside a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedPart {
    /// Its number, from 1.
    pub number: u16,
    /// The provider's id of this part.
    pub message_id: String,
    /// Its text.
    pub text: String,
}

/// A complete message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    /// The message.
    pub key: ConcatKey,
    /// Every part's text, joined in order.
    pub text: String,
    /// Every part's id in part order: the first is a natural dedupe key for the whole message.
    pub message_ids: Vec<String>,
    /// When the first part arrived.
    pub first_received_at: DateTime<Utc>,
}

/// Why an incomplete message was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartialReason {
    /// Its TTL passed.
    Expired,
    /// Room was needed for a newer message.
    Evicted,
}

/// An incomplete message given up, for the caller to publish as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    /// The message.
    pub key: ConcatKey,
    /// The parts it should have had.
    pub total: u16,
    /// The parts that arrived, in part order.
    pub parts: Vec<ReceivedPart>,
    /// When the first part arrived.
    pub first_received_at: DateTime<Utc>,
    /// Why it was given up.
    pub reason: PartialReason,
}

impl Partial {
    /// The text of the parts that arrived, joined in order without any gap marker (use
    /// [`Partial::missing`] to say that something is missing).
    pub fn text(&self) -> String {
        self.parts.iter().map(|p| p.text.as_str()).collect()
    }

    /// The part numbers that never arrived.
    pub fn missing(&self) -> Vec<u16> {
        (1..=self.total)
            .filter(|n| !self.parts.iter().any(|p| p.number == *n))
            .collect()
    }

    /// The ids of the parts that arrived, in part order.
    pub fn message_ids(&self) -> Vec<String> {
        self.parts.iter().map(|p| p.message_id.clone()).collect()
    }
}

/// What became of an offered part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// It was the last missing part: here is the whole message.
    Complete(Assembled),
    /// Kept; the message still misses parts.
    Stored {
        /// Distinct parts held for its message.
        received: u16,
        /// Parts the message has.
        total: u16,
        /// An older incomplete message pushed out to make room, to publish as partial.
        evicted: Option<Partial>,
    },
    /// Already held, or part of a message already completed: nothing to do.
    Duplicate,
}

struct Pending {
    total: u16,
    first_received_at: DateTime<Utc>,
    /// Arrival order, to evict deterministically among equal times.
    sequence: u64,
    parts: BTreeMap<u16, ReceivedPart>,
}

/// Holds incomplete multipart messages until they complete, expire or are evicted.
pub struct Reassembler {
    config: ReassemblerConfig,
    ttl: TimeDelta,
    pending: BTreeMap<ConcatKey, Pending>,
    next_sequence: u64,
    remembered: HashSet<String>,
    remembered_order: VecDeque<(DateTime<Utc>, String)>,
}

impl Reassembler {
    /// An empty reassembler with these limits.
    pub fn new(config: ReassemblerConfig) -> Self {
        let ttl = TimeDelta::from_std(config.ttl).unwrap_or(TimeDelta::MAX);
        Self {
            config,
            ttl,
            pending: BTreeMap::new(),
            next_sequence: 0,
            remembered: HashSet::new(),
            remembered_order: VecDeque::new(),
        }
    }

    /// Incomplete messages held.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// When the oldest incomplete message expires: when to call [`Reassembler::expire`] next.
    pub fn next_expiry(&self) -> Option<DateTime<Utc>> {
        self.pending
            .values()
            .map(|p| p.first_received_at)
            .min()
            .map(|first| {
                first
                    .checked_add_signed(self.ttl)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC)
            })
    }

    /// Adds one part received at `now` (rules in the module docs).
    pub fn offer(&mut self, part: Part, now: DateTime<Utc>) -> Result<Offer, ConcatError> {
        let Part {
            key,
            number,
            total,
            message_id,
            text,
        } = part;
        if total == 0 || total > self.config.max_parts {
            return Err(ConcatError::InvalidTotal {
                total,
                max: self.config.max_parts,
            });
        }
        if number == 0 || number > total {
            return Err(ConcatError::PartOutOfRange {
                part: number,
                total,
            });
        }
        if !message_id.is_empty() && self.remembered.contains(&message_id) {
            return Ok(Offer::Duplicate);
        }
        let received = ReceivedPart {
            number,
            message_id,
            text,
        };

        let mut evicted = None;
        if let Some(pending) = self.pending.get_mut(&key) {
            if pending.total != total {
                return Err(ConcatError::TotalMismatch {
                    part: number,
                    expected: pending.total,
                    got: total,
                });
            }
            if pending.parts.contains_key(&number) {
                return Ok(Offer::Duplicate);
            }
            pending.parts.insert(number, received);
        } else {
            if total > 1 && self.pending.len() >= self.config.max_pending.max(1) {
                evicted = self.evict_oldest();
            }
            let sequence = self.next_sequence;
            self.next_sequence += 1;
            self.pending.insert(
                key.clone(),
                Pending {
                    total,
                    first_received_at: now,
                    sequence,
                    parts: BTreeMap::from([(number, received)]),
                },
            );
        }

        let complete = self
            .pending
            .get(&key)
            .is_some_and(|p| p.parts.len() == usize::from(p.total));
        if !complete {
            let received = self
                .pending
                .get(&key)
                .map_or(0, |p| u16::try_from(p.parts.len()).unwrap_or(u16::MAX));
            return Ok(Offer::Stored {
                received,
                total,
                evicted,
            });
        }
        let Some(done) = self.pending.remove(&key) else {
            return Ok(Offer::Duplicate);
        };
        let message_ids: Vec<String> = done.parts.values().map(|p| p.message_id.clone()).collect();
        self.remember(&message_ids, now);
        Ok(Offer::Complete(Assembled {
            key,
            text: done.parts.values().map(|p| p.text.as_str()).collect(),
            message_ids,
            first_received_at: done.first_received_at,
        }))
    }

    /// Gives up every message whose first part arrived at least one TTL before `now`, oldest
    /// first, and forgets remembered ids older than one TTL.
    pub fn expire(&mut self, now: DateTime<Utc>) -> Vec<Partial> {
        let ttl = self.ttl;
        let is_old = |at: DateTime<Utc>| now.signed_duration_since(at) >= ttl;
        let mut expired_keys: Vec<(DateTime<Utc>, u64, ConcatKey)> = self
            .pending
            .iter()
            .filter(|(_, p)| is_old(p.first_received_at))
            .map(|(k, p)| (p.first_received_at, p.sequence, k.clone()))
            .collect();
        expired_keys.sort();
        let partials = expired_keys
            .into_iter()
            .filter_map(|(_, _, key)| self.take_partial(key, PartialReason::Expired))
            .collect();
        while let Some((at, _)) = self.remembered_order.front() {
            if !is_old(*at) {
                break;
            }
            if let Some((_, id)) = self.remembered_order.pop_front() {
                self.remembered.remove(&id);
            }
        }
        partials
    }

    fn evict_oldest(&mut self) -> Option<Partial> {
        let oldest = self
            .pending
            .iter()
            .min_by_key(|(_, p)| (p.first_received_at, p.sequence))
            .map(|(k, _)| k.clone())?;
        self.take_partial(oldest, PartialReason::Evicted)
    }

    fn take_partial(&mut self, key: ConcatKey, reason: PartialReason) -> Option<Partial> {
        let pending = self.pending.remove(&key)?;
        Some(Partial {
            key,
            total: pending.total,
            parts: pending.parts.into_values().collect(),
            first_received_at: pending.first_received_at,
            reason,
        })
    }

    fn remember(&mut self, message_ids: &[String], now: DateTime<Utc>) {
        for id in message_ids.iter().filter(|id| !id.is_empty()) {
            if self.remembered.insert(id.clone()) {
                self.remembered_order.push_back((now, id.clone()));
            }
        }
        while self.remembered_order.len() > self.config.max_remembered_ids {
            if let Some((_, id)) = self.remembered_order.pop_front() {
                self.remembered.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(reference: &str) -> ConcatKey {
        ConcatKey {
            sender: "84901234567".into(),
            to: "8085".into(),
            reference: reference.into(),
        }
    }

    fn part(reference: &str, number: u16, total: u16, text: &str) -> Part {
        Part {
            key: key(reference),
            number,
            total,
            message_id: format!("{reference}-{number}"),
            text: text.into(),
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn config(ttl_secs: u64, max_pending: usize) -> ReassemblerConfig {
        ReassemblerConfig {
            ttl: Duration::from_secs(ttl_secs),
            max_pending,
            ..ReassemblerConfig::default()
        }
    }

    #[test]
    fn out_of_order_parts_complete_in_part_order() {
        let mut r = Reassembler::new(ReassemblerConfig::default());
        assert!(matches!(
            r.offer(part("r", 3, 3, "C"), at(0)),
            Ok(Offer::Stored {
                received: 1,
                total: 3,
                evicted: None
            })
        ));
        assert!(matches!(
            r.offer(part("r", 1, 3, "A"), at(1)),
            Ok(Offer::Stored { received: 2, .. })
        ));
        let Ok(Offer::Complete(done)) = r.offer(part("r", 2, 3, "B"), at(2)) else {
            panic!("third part completes the message");
        };
        assert_eq!(done.text, "ABC");
        assert_eq!(done.message_ids, vec!["r-1", "r-2", "r-3"]);
        assert_eq!(done.first_received_at, at(0));
        assert_eq!(r.pending_len(), 0);
    }

    #[test]
    fn a_single_part_message_completes_at_once() {
        let mut r = Reassembler::new(ReassemblerConfig::default());
        let Ok(Offer::Complete(done)) = r.offer(part("s", 1, 1, "hello"), at(0)) else {
            panic!("one part of one is complete");
        };
        assert_eq!(done.text, "hello");
        assert_eq!(r.pending_len(), 0);
    }

    #[test]
    fn duplicates_are_ignored_before_and_after_completion() {
        let mut r = Reassembler::new(ReassemblerConfig::default());
        r.offer(part("d", 1, 2, "A"), at(0)).unwrap();
        let mut resent = part("d", 1, 2, "changed");
        resent.message_id = "other-id".into();
        assert_eq!(r.offer(resent, at(1)), Ok(Offer::Duplicate));
        assert!(matches!(
            r.offer(part("d", 2, 2, "B"), at(2)),
            Ok(Offer::Complete(Assembled { ref text, .. })) if text == "AB"
        ));
        // The provider resends a part of the published message: not a new message.
        assert_eq!(r.offer(part("d", 2, 2, "B"), at(3)), Ok(Offer::Duplicate));
        assert_eq!(r.pending_len(), 0);
    }

    #[test]
    fn inconsistent_parts_are_refused() {
        let mut r = Reassembler::new(ReassemblerConfig::default());
        r.offer(part("x", 1, 3, "A"), at(0)).unwrap();
        assert_eq!(
            r.offer(part("x", 2, 4, "B"), at(0)),
            Err(ConcatError::TotalMismatch {
                part: 2,
                expected: 3,
                got: 4
            })
        );
        assert_eq!(
            r.offer(part("x", 4, 3, "D"), at(0)),
            Err(ConcatError::PartOutOfRange { part: 4, total: 3 })
        );
        assert_eq!(
            r.offer(part("x", 0, 3, "?"), at(0)),
            Err(ConcatError::PartOutOfRange { part: 0, total: 3 })
        );
        assert_eq!(
            r.offer(part("y", 1, 0, "?"), at(0)),
            Err(ConcatError::InvalidTotal { total: 0, max: 255 })
        );
        assert_eq!(
            r.offer(part("y", 1, 256, "?"), at(0)),
            Err(ConcatError::InvalidTotal {
                total: 256,
                max: 255
            })
        );
    }

    #[test]
    fn incomplete_messages_expire_after_the_ttl_with_what_arrived() {
        let mut r = Reassembler::new(config(60, 10));
        r.offer(part("old", 1, 3, "A"), at(0)).unwrap();
        r.offer(part("old", 3, 3, "C"), at(30)).unwrap();
        r.offer(part("new", 1, 2, "X"), at(30)).unwrap();
        assert_eq!(r.next_expiry(), Some(at(60)));
        assert!(r.expire(at(59)).is_empty());
        let expired = r.expire(at(60));
        assert_eq!(expired.len(), 1);
        let partial = &expired[0];
        assert_eq!(partial.key, key("old"));
        assert_eq!(partial.reason, PartialReason::Expired);
        assert_eq!(partial.text(), "AC");
        assert_eq!(partial.missing(), vec![2]);
        assert_eq!(partial.message_ids(), vec!["old-1", "old-3"]);
        assert_eq!(r.pending_len(), 1);
        assert_eq!(r.next_expiry(), Some(at(90)));
    }

    #[test]
    fn the_oldest_message_is_evicted_when_full() {
        let mut r = Reassembler::new(config(600, 2));
        r.offer(part("a", 1, 2, "A"), at(0)).unwrap();
        r.offer(part("b", 1, 2, "B"), at(1)).unwrap();
        let Ok(Offer::Stored {
            evicted: Some(evicted),
            ..
        }) = r.offer(part("c", 1, 2, "C"), at(2))
        else {
            panic!("a third message evicts the oldest");
        };
        assert_eq!(evicted.key, key("a"));
        assert_eq!(evicted.reason, PartialReason::Evicted);
        assert_eq!(r.pending_len(), 2);
        // A part of a message already held never evicts anything.
        assert!(matches!(
            r.offer(part("b", 2, 2, "b"), at(3)),
            Ok(Offer::Complete(_))
        ));
    }

    #[test]
    fn remembered_ids_are_forgotten_after_the_ttl() {
        let mut r = Reassembler::new(config(60, 10));
        r.offer(part("m", 1, 1, "A"), at(0)).unwrap();
        assert_eq!(r.offer(part("m", 1, 1, "A"), at(10)), Ok(Offer::Duplicate));
        r.expire(at(61));
        assert!(matches!(
            r.offer(part("m", 1, 1, "A"), at(62)),
            Ok(Offer::Complete(_))
        ));
    }

    #[test]
    fn a_clock_going_backwards_expires_nothing() {
        let mut r = Reassembler::new(config(60, 10));
        r.offer(part("t", 1, 2, "A"), at(100)).unwrap();
        assert!(r.expire(at(0)).is_empty());
        assert_eq!(r.pending_len(), 1);
    }

    fn split(text: &str, parts: usize) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        let size = chars.len().div_ceil(parts).max(1);
        let mut chunks: Vec<String> = chars.chunks(size).map(|c| c.iter().collect()).collect();
        chunks.resize(parts, String::new());
        chunks
    }

    proptest! {
        #[test]
        fn any_permutation_with_duplicates_reassembles_the_original(
            (text, total, order) in ("\\PC{0,60}", 1usize..=8).prop_flat_map(|(text, total)| {
                let order = proptest::collection::vec(0..total, 0..total * 2)
                    .prop_map(move |dups| (0..total).chain(dups).collect::<Vec<_>>())
                    .prop_shuffle();
                (Just(text), Just(total), order)
            })
        ) {
            let chunks = split(&text, total);
            let total16 = u16::try_from(total).unwrap();
            let mut r = Reassembler::new(ReassemblerConfig::default());
            let mut completed = Vec::new();
            for (step, index) in order.iter().enumerate() {
                let number = u16::try_from(index + 1).unwrap();
                let offered = Part {
                    key: key("p"),
                    number,
                    total: total16,
                    message_id: format!("id-{number}"),
                    text: chunks[*index].clone(),
                };
                match r.offer(offered, at(i64::try_from(step).unwrap())).unwrap() {
                    Offer::Complete(done) => completed.push(done),
                    Offer::Stored { evicted, .. } => prop_assert!(evicted.is_none()),
                    Offer::Duplicate => {}
                }
            }
            prop_assert_eq!(completed.len(), 1);
            prop_assert_eq!(&completed[0].text, &text);
            let ids: Vec<String> = (1..=total).map(|n| format!("id-{n}")).collect();
            prop_assert_eq!(&completed[0].message_ids, &ids);
            prop_assert_eq!(r.pending_len(), 0);
        }

        #[test]
        fn arbitrary_parts_never_panic(
            offers in proptest::collection::vec((0u16..6, 0u16..6, "[ab]", 0i64..200), 0..40),
            expire_at in 0i64..400,
        ) {
            let mut r = Reassembler::new(config(100, 2));
            for (number, total, reference, secs) in offers {
                let _ = r.offer(part(&reference, number, total, "x"), at(secs));
            }
            let _ = r.expire(at(expire_at));
            prop_assert!(r.pending_len() <= 2);
        }
    }
}
