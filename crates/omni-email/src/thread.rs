//! Threading: which conversation a mail belongs to, and the headers a reply needs to stay in
//! it.
//!
//! # The rule
//! A mail's *thread root* is the first `References` entry when there is one, else its
//! `In-Reply-To`, else its own `Message-ID`; when that candidate is a mail the thread index
//! knows (one we read, or one of our own replies), the candidate's recorded root is taken
//! instead. Its conversation is `ConversationId::derive(tenant, channel, sender address,
//! Some(root))`. Mail clients keep the first `References` entry through a whole thread
//! (RFC 5322 §3.6.4: a reply's `References` is the parent's `References` followed by the
//! parent's id), so every mail of a thread names the same root and lands in the same
//! conversation; a client that keeps only `In-Reply-To` names our reply, whose root the index
//! recorded when it was sent. A new mail (no `References`, no `In-Reply-To`) starts a new
//! conversation.
//!
//! # The index, shared by every replica
//! [`ThreadIndex`] maps a Message-ID to its [`ThreadEntry`] (root and `References`). The
//! reader records every customer mail before it publishes the mail's event, the sender records
//! every reply before it goes out, both on the compacted `omni.email-threads.v1` (acknowledged),
//! and every replica follows that topic into its bounded in-memory index. A lookup that misses
//! waits (boundedly) until the replica has read everything written to the topic before the
//! lookup, then answers: so a reply sent by any replica, before or after a restart, carries
//! `References: <the parent's References> <parent>`, the full chain.
//!
//! Limits: a customer who answers from another address starts a new conversation (the contact
//! is part of the id by design); a thread older than the index's capacity (100,000 mails by
//! default) is answered with `References: <parent>` and the parent's own root, as mail clients
//! do.

use omni_channel::{EventSink, SinkError};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The thread root of a mail (see the module docs). Ids are bare (no angle brackets).
pub fn thread_root<'a>(
    references: &'a [String],
    in_reply_to: Option<&'a str>,
    own_id: &'a str,
) -> &'a str {
    references
        .iter()
        .map(String::as_str)
        .find(|r| !r.is_empty())
        .or(in_reply_to.filter(|r| !r.is_empty()))
        .unwrap_or(own_id)
}

/// Reply prefixes mail clients add, lowercase: English, German (`AW`), Nordic (`SV`, `VS`),
/// Dutch (`Antw`) and Vietnamese Outlook (`TL`, `Trả lời`).
const REPLY_PREFIXES: &[&str] = &["re", "aw", "sv", "vs", "antw", "tl", "trả lời"];

/// The subject of a reply: `Re: ` and the original subject without its own reply prefixes,
/// so a thread never grows `Re: Re: Re:`. An empty or missing subject gives `Re:`.
pub fn reply_subject(original: Option<&str>) -> String {
    let mut rest = original.unwrap_or("").trim();
    'strip: loop {
        for prefix in REPLY_PREFIXES {
            if let Some(after) = strip_prefix_ci(rest, prefix) {
                // `Re:`, `Re :`, `Re[2]:`, `Re(2):`, full-width colon.
                let after = after.trim_start();
                let after = skip_counter(after);
                if let Some(a) = after.strip_prefix(':').or_else(|| after.strip_prefix('：')) {
                    rest = a.trim_start();
                    continue 'strip;
                }
            }
        }
        break;
    }
    if rest.is_empty() {
        "Re:".to_owned()
    } else {
        format!("Re: {rest}")
    }
}

/// `s` without `prefix`, compared case-insensitively (Unicode-aware for `Trả lời`).
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let mut chars = s.char_indices();
    for p in prefix.chars() {
        let (_, c) = chars.next()?;
        if !c.to_lowercase().eq(p.to_lowercase()) {
            return None;
        }
    }
    Some(chars.next().map_or("", |(i, _)| &s[i..]))
}

/// Skips a reply counter like `[2]` or `(3)`.
fn skip_counter(s: &str) -> &str {
    for (open, close) in [('[', ']'), ('(', ')')] {
        if let Some(inner) = s.strip_prefix(open) {
            if let Some(end) = inner.find(close) {
                if inner[..end].chars().all(|c| c.is_ascii_digit()) {
                    return inner[end + 1..].trim_start();
                }
            }
        }
    }
    s
}

/// The most ids a `References` header we write (and a thread entry) keeps: the root and the
/// newest ones, as mail clients trim long threads.
pub const MAX_REFERENCES: usize = 20;

/// `References` of a reply to `parent`: the parent's own `References` (its thread root first),
/// then the parent; without an entry for the parent, the parent alone. Bare ids, no repeats,
/// at most [`MAX_REFERENCES`].
pub fn reply_references(parent: &str, entry: Option<&ThreadEntry>) -> Vec<String> {
    let mut refs: Vec<String> = Vec::new();
    if let Some(e) = entry {
        refs.push(e.root.clone());
        refs.extend(e.refs.iter().cloned());
    }
    refs.push(parent.to_owned());
    bounded_chain(refs)
}

/// `ids` without empty ones and repeats (first occurrence kept), trimmed to the first and the
/// last `MAX_REFERENCES - 1`.
pub fn bounded_chain(ids: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<String> = ids
        .into_iter()
        .filter(|id| !id.is_empty() && seen.insert(id.clone()))
        .collect();
    if out.len() > MAX_REFERENCES {
        let tail = out.split_off(out.len() - (MAX_REFERENCES - 1));
        out.truncate(1);
        out.extend(tail);
    }
    out
}

/// Strips surrounding whitespace and angle brackets from a Message-ID.
pub fn bare_id(id: &str) -> &str {
    let id = id.trim();
    let id = id.strip_prefix('<').unwrap_or(id);
    id.strip_suffix('>').unwrap_or(id).trim()
}

/// What the index knows of one mail: its thread root and its own `References` (bare ids,
/// root first, at most [`MAX_REFERENCES`]); the value on the thread topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadEntry {
    /// The thread root (see the module docs).
    pub root: String,
    /// The mail's `References` (or its `In-Reply-To` when it had none).
    #[serde(default)]
    pub refs: Vec<String>,
    /// Who sent it: the customer's address, or the mailbox's for our replies; `None` in
    /// entries written before senders were recorded. A mail reusing this Message-ID from
    /// another address is not the same mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// It failed DMARC: its `From` is not believed, so the same Message-ID from a mail that
    /// does not fail is not taken for a repeat of it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspect: bool,
}

impl ThreadEntry {
    /// Whether a mail from `from` (`suspect`: failing DMARC) carrying this entry's Message-ID
    /// is another mail reusing the id rather than this mail again: another sender, or a
    /// trusted mail after a suspect one. Entries that recorded no sender cannot tell: not
    /// reused.
    pub fn reused_by(&self, from: &str, suspect: bool) -> bool {
        match &self.from {
            None => false,
            Some(known) => !known.eq_ignore_ascii_case(from) || (self.suspect && !suspect),
        }
    }
}

/// Message-ID → [`ThreadEntry`], bounded (oldest forgotten first), optionally shared by every
/// replica through the thread topic (see the module docs). Readers record every mail they
/// publish, the sender every reply it sends; both look up the mail they answer or continue.
pub struct ThreadIndex {
    inner: Arc<Mutex<IndexInner>>,
    capacity: usize,
    journal: Option<Journal>,
}

/// The durable side: where entries are written, and the tail that reads everybody's.
struct Journal {
    sink: Arc<dyn EventSink>,
    topic: String,
    tail: omni_bus::table::Tail,
    /// Longest wait for the tail on a miss.
    wait: Duration,
}

#[derive(Default)]
struct IndexInner {
    entries: HashMap<String, ThreadEntry>,
    order: VecDeque<String>,
}

impl IndexInner {
    fn insert(&mut self, message_id: &str, entry: ThreadEntry, capacity: usize) {
        if self.entries.insert(message_id.to_owned(), entry).is_none() {
            self.order.push_back(message_id.to_owned());
        }
        while self.order.len() > capacity {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
    }
}

impl ThreadIndex {
    /// An index in this process's memory only, remembering up to `capacity` mails (tests, a
    /// single instance that accepts losing threads on restart).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(IndexInner::default())),
            capacity: capacity.max(1),
            journal: None,
        }
    }

    /// An index shared through `bus.topics.email_threads`: entries are written through `sink`
    /// (acknowledged) and every entry on the topic, from its beginning, is followed into
    /// memory (up to `capacity`, the newest kept). A lookup that misses waits at most `wait`
    /// for the topic to be read up to the moment of the lookup.
    pub fn durable(
        bus: &omni_bus::BusConfig,
        sink: Arc<dyn EventSink>,
        capacity: usize,
        wait: Duration,
    ) -> Self {
        let capacity = capacity.max(1);
        let inner = Arc::new(Mutex::new(IndexInner::default()));
        let topic = bus.topics.email_threads.clone();
        let feed = inner.clone();
        let tail = omni_bus::table::tail(bus, &topic, move |record| {
            let Some(value) = record.value else {
                return;
            };
            match serde_json::from_slice::<ThreadEntry>(&value) {
                Ok(entry) => feed.lock().unwrap_or_else(|p| p.into_inner()).insert(
                    &record.key,
                    entry,
                    capacity,
                ),
                Err(e) => {
                    tracing::debug!(key = %record.key, error = %e, "ignoring an unreadable thread entry")
                }
            }
        });
        Self {
            inner,
            capacity,
            journal: Some(Journal {
                sink,
                topic,
                tail,
                wait,
            }),
        }
    }

    /// Records `entry` for `message_id` in this process only.
    pub fn record_local(&self, message_id: &str, entry: ThreadEntry) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).insert(
            message_id,
            entry,
            self.capacity,
        );
    }

    /// Records `entry` for `message_id`: on the thread topic first (resolves once Kafka
    /// acknowledged it; an error means other replicas may not know it), then here.
    pub async fn remember(&self, message_id: &str, entry: ThreadEntry) -> Result<(), SinkError> {
        if let Some(j) = &self.journal {
            let payload = serde_json::to_vec(&entry).map_err(|e| SinkError {
                topic: j.topic.clone(),
                reason: e.to_string(),
            })?;
            j.sink
                .publish(&j.topic, message_id.as_bytes(), &payload)
                .await?;
        }
        self.record_local(message_id, entry);
        Ok(())
    }

    /// What this process knows of `message_id` now.
    pub fn get(&self, message_id: &str) -> Option<ThreadEntry> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.entries.get(message_id).cloned()
    }

    /// The thread root of `message_id`, if this process knows it now.
    pub fn root_of(&self, message_id: &str) -> Option<String> {
        self.get(message_id).map(|e| e.root)
    }

    /// What any replica recorded for `message_id`: on a miss, waits (at most the configured
    /// wait) until everything written to the thread topic before this call was read, then
    /// looks again. `None` if nobody recorded it (or the topic could not be read in time).
    pub async fn lookup(&self, message_id: &str) -> Option<ThreadEntry> {
        if let Some(e) = self.get(message_id) {
            return Some(e);
        }
        let j = self.journal.as_ref()?;
        if !j.tail.caught_up(j.wait).await {
            tracing::warn!(message_id, wait_ms = u64::try_from(j.wait.as_millis()).unwrap_or(u64::MAX),
                "the e-mail thread topic could not be read up to now in time: answering without its chain");
        }
        self.get(message_id)
    }
}

impl Default for ThreadIndex {
    fn default() -> Self {
        Self::new(100_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_first_reference_then_in_reply_to_then_own_id() {
        let refs = vec!["root@a".to_owned(), "mid@a".to_owned()];
        assert_eq!(thread_root(&refs, Some("mid@a"), "me@a"), "root@a");
        assert_eq!(thread_root(&[], Some("parent@a"), "me@a"), "parent@a");
        assert_eq!(thread_root(&[], None, "me@a"), "me@a");
        assert_eq!(thread_root(&[String::new()], Some(""), "me@a"), "me@a");
    }

    #[test]
    fn a_whole_thread_shares_its_root() {
        // new mail → our reply → customer's answer, as clients build References.
        let first = thread_root(&[], None, "c1@cust");
        let new_mail = ThreadEntry {
            root: first.to_owned(),
            ..ThreadEntry::default()
        };
        let ours = reply_references("c1@cust", Some(&new_mail));
        assert_eq!(ours, ["c1@cust"]);
        let mut answer_refs = ours.clone();
        answer_refs.push("r1@shop".into());
        assert_eq!(thread_root(&answer_refs, Some("r1@shop"), "c2@cust"), first);
        // Our reply to the answer carries the whole chain, root first.
        let answer = ThreadEntry {
            root: first.to_owned(),
            refs: answer_refs,
            ..ThreadEntry::default()
        };
        assert_eq!(
            reply_references("c2@cust", Some(&answer)),
            ["c1@cust", "r1@shop", "c2@cust"]
        );
    }

    #[test]
    fn reply_subject_never_stacks_prefixes() {
        assert_eq!(reply_subject(Some("Đơn hàng #1024")), "Re: Đơn hàng #1024");
        assert_eq!(reply_subject(Some("Re: Đơn hàng")), "Re: Đơn hàng");
        assert_eq!(reply_subject(Some("RE: re: Re[2]: AW: x")), "Re: x");
        assert_eq!(reply_subject(Some("Re (3): x")), "Re: x");
        assert_eq!(reply_subject(Some("TL: Trả lời: hỏi giá")), "Re: hỏi giá");
        assert_eq!(reply_subject(Some("Re：全角")), "Re: 全角");
        assert_eq!(
            reply_subject(Some("Regarding the order")),
            "Re: Regarding the order"
        );
        assert_eq!(reply_subject(Some("Fwd: x")), "Re: Fwd: x");
        assert_eq!(reply_subject(None), "Re:");
        assert_eq!(reply_subject(Some("  Re:  ")), "Re:");
    }

    #[test]
    fn ids_lose_their_brackets() {
        assert_eq!(bare_id(" <a@b> "), "a@b");
        assert_eq!(bare_id("a@b"), "a@b");
    }

    fn entry(root: &str, refs: &[&str]) -> ThreadEntry {
        ThreadEntry {
            root: root.into(),
            refs: refs.iter().map(|r| (*r).to_owned()).collect(),
            ..ThreadEntry::default()
        }
    }

    #[test]
    fn a_message_id_is_reused_by_another_sender_or_a_trusted_mail_after_a_suspect_one() {
        let of = |from: Option<&str>, suspect: bool| ThreadEntry {
            from: from.map(str::to_owned),
            suspect,
            ..entry("r", &[])
        };
        assert!(!of(Some("an@x.vn"), false).reused_by("AN@x.vn", false));
        assert!(of(Some("an@x.vn"), false).reused_by("mallory@evil.example", false));
        assert!(of(Some("an@x.vn"), true).reused_by("an@x.vn", false));
        assert!(!of(Some("an@x.vn"), true).reused_by("an@x.vn", true));
        assert!(
            !of(None, false).reused_by("anyone@x.vn", false),
            "old entries cannot tell"
        );
        // Written without the new fields (an older version), read back the same.
        let old: ThreadEntry = serde_json::from_str(r#"{"root":"r","refs":["a"]}"#).unwrap();
        assert_eq!(old, entry("r", &["a"]));
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"root":"r","refs":["a"]}"#
        );
    }

    #[test]
    fn index_is_bounded() {
        let index = ThreadIndex::new(2);
        index.record_local("a", entry("r1", &[]));
        index.record_local("b", entry("r1", &[]));
        index.record_local("c", entry("r2", &[]));
        assert_eq!(index.root_of("a"), None);
        assert_eq!(index.root_of("b").as_deref(), Some("r1"));
        assert_eq!(index.root_of("c").as_deref(), Some("r2"));
    }

    #[test]
    fn a_reply_carries_the_parents_chain_then_the_parent() {
        // A new mail: its reply names it alone.
        assert_eq!(reply_references("q1", Some(&entry("q1", &[]))), ["q1"]);
        // Unknown parent: the parent alone.
        assert_eq!(reply_references("q2", None), ["q2"]);
        // The customer's answer to our reply r1.
        assert_eq!(
            reply_references("q2", Some(&entry("q1", &["q1", "r1"]))),
            ["q1", "r1", "q2"]
        );
        // A client that kept only In-Reply-To: the root comes first all the same.
        assert_eq!(
            reply_references("q3", Some(&entry("q1", &["r2"]))),
            ["q1", "r2", "q3"]
        );
        // Long threads keep the root and the newest ids.
        let long: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
        let refs: Vec<&str> = long.iter().map(String::as_str).collect();
        let chain = reply_references("p", Some(&entry("m0", &refs)));
        assert_eq!(chain.len(), MAX_REFERENCES);
        assert_eq!(chain[0], "m0");
        assert_eq!(chain[MAX_REFERENCES - 1], "p");
        assert_eq!(chain[MAX_REFERENCES - 2], "m39");
    }
}
