//! Multipart SMS reassembly (`Reassembler`, what the Vonage parts store feeds on the owning
//! replica) driven by any sequence of parts, raw Vonage parameter sets and timer ticks, against
//! a model of what it was given.
//!
//! Invariants: an accepted part comes out at most once (whole or partial), so reassembly
//! never returns more parts than it was given; a completed message has exactly `total` parts,
//! its text the first copy of each part joined in order; a partial misses at least one part and
//! lists the rest in order; refusals are exactly the documented ones; never more than
//! `max_pending` messages held.
#![no_main]

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use arbitrary::Arbitrary;
use chrono::TimeDelta;
use libfuzzer_sys::fuzz_target;
use omni_sms::params::Params;
use omni_sms::reassembly::{
    ConcatError, ConcatKey, Offer, Part, Partial, Reassembler, ReassemblerConfig,
};
use omni_sms::vonage::VonageInbound;

#[derive(Debug, Arbitrary)]
enum Op {
    /// A part built from small numbers, so parts of one message meet.
    Part {
        sender: u8,
        reference: u8,
        number: u8,
        total: u8,
        id: u8,
        text: String,
    },
    /// A Vonage request's raw parameters (query or form), read as the endpoint reads them.
    Raw(String),
    /// Time passes and the expiry timer fires.
    Tick { secs: u16 },
}

const CONFIG: ReassemblerConfig = ReassemblerConfig {
    ttl: Duration::from_secs(60),
    max_pending: 4,
    max_parts: 6,
    max_remembered_ids: 8,
};

struct Model {
    /// First copy of each accepted part, by message and number.
    accepted: BTreeMap<ConcatKey, BTreeMap<u16, (u16, String, String)>>,
    /// Parts accepted and not yet returned.
    outstanding: usize,
}

impl Model {
    fn check_partial(&mut self, partial: &Partial) {
        assert!(!partial.parts.is_empty());
        assert!(
            partial.parts.len() < usize::from(partial.total),
            "a partial misses a part"
        );
        assert!(!partial.missing().is_empty());
        let numbers: Vec<u16> = partial.parts.iter().map(|p| p.number).collect();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "parts in order, once"
        );
        assert!(numbers.iter().all(|n| *n >= 1 && *n <= partial.total));
        self.take(&partial.key, partial.parts.len());
    }

    fn take(&mut self, key: &ConcatKey, parts: usize) {
        assert!(parts <= self.outstanding, "more parts returned than given");
        self.outstanding -= parts;
        self.accepted.remove(key);
    }
}

fn part_of(op: Op) -> Option<Part> {
    match op {
        Op::Part {
            sender,
            reference,
            number,
            total,
            id,
            text,
        } => Some(Part {
            key: ConcatKey {
                sender: format!("8490{}", sender % 3),
                to: "84901234567".into(),
                reference: format!("{}", reference % 3),
            },
            number: u16::from(number % 8),
            total: u16::from(total % 8),
            message_id: if id % 4 == 0 {
                String::new()
            } else {
                format!("m{id}")
            },
            text,
        }),
        Op::Raw(raw) => VonageInbound::from_params(&Params::from_query(&raw))
            .ok()?
            .to_part(),
        Op::Tick { .. } => None,
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut reassembler = Reassembler::new(CONFIG);
    let mut model = Model {
        accepted: BTreeMap::new(),
        outstanding: 0,
    };
    let mut now = omni_fuzz::now();
    let mut completed_ids: HashSet<String> = HashSet::new();
    for op in ops.into_iter().take(256) {
        if let Op::Tick { secs } = op {
            now += TimeDelta::seconds(i64::from(secs));
            for partial in reassembler.expire(now) {
                model.check_partial(&partial);
            }
            continue;
        }
        let Some(part) = part_of(op) else { continue };
        let (key, number, total) = (part.key.clone(), part.number, part.total);
        let (id, text) = (part.message_id.clone(), part.text.clone());
        match reassembler.offer(part, now) {
            Err(ConcatError::InvalidTotal { .. }) => {
                assert!(total == 0 || total > CONFIG.max_parts);
            }
            Err(ConcatError::PartOutOfRange { .. }) => assert!(number == 0 || number > total),
            Err(ConcatError::TotalMismatch { expected, .. }) => {
                let held = model
                    .accepted
                    .get(&key)
                    .expect("a mismatch needs a held message");
                assert!(held.values().all(|(t, _, _)| *t == expected) && expected != total);
            }
            Ok(Offer::Duplicate) => {
                let held = model
                    .accepted
                    .get(&key)
                    .is_some_and(|parts| parts.contains_key(&number));
                assert!(held || completed_ids.contains(&id), "a duplicate of what?");
            }
            Ok(Offer::Stored {
                received,
                total: t,
                evicted,
            }) => {
                if let Some(partial) = evicted {
                    assert_ne!(partial.key, key);
                    model.check_partial(&partial);
                }
                let entry = model.accepted.entry(key.clone()).or_default();
                assert!(
                    entry.insert(number, (total, id, text)).is_none(),
                    "stored twice"
                );
                model.outstanding += 1;
                assert_eq!(usize::from(received), entry.len());
                assert!(received < t);
            }
            Ok(Offer::Complete(done)) => {
                model.outstanding += 1;
                let mut parts = model.accepted.get(&key).cloned().unwrap_or_default();
                assert!(parts.insert(number, (total, id, text)).is_none());
                assert_eq!(parts.len(), usize::from(total), "complete means every part");
                assert_eq!(done.message_ids.len(), usize::from(total));
                let expected: String = parts.values().map(|(_, _, t)| t.as_str()).collect();
                assert_eq!(done.text, expected, "first copies joined in order");
                completed_ids.extend(done.message_ids.iter().filter(|i| !i.is_empty()).cloned());
                model.take(&key, usize::from(total));
            }
        }
        assert!(reassembler.pending_len() <= CONFIG.max_pending);
        assert_eq!(reassembler.pending_len(), model.accepted.len());
    }
    // Whatever is left comes out at the end, once.
    now += TimeDelta::days(1);
    for partial in reassembler.expire(now) {
        model.check_partial(&partial);
    }
    assert_eq!(model.outstanding, 0, "every accepted part came out");
    assert_eq!(reassembler.pending_len(), 0);
});
