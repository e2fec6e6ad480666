//! Threading without state: which conversation a mail belongs to, and the headers a reply
//! needs to stay in it.
//!
//! # The rule
//! A mail's *thread root* is the first `References` entry when there is one, else its
//! `In-Reply-To`, else its own `Message-ID`. Its conversation is
//! `ConversationId::derive(tenant, channel, sender address, Some(root))`. Mail clients keep the
//! first `References` entry through a whole thread (RFC 5322 §3.6.4: a reply's `References`
//! is the parent's `References` followed by the parent's id), so every mail of a thread names
//! the same root and lands in the same conversation, with no lookup of earlier mail; a new
//! mail (no `References`, no `In-Reply-To`) starts a new conversation. Our replies carry
//! `References: <root> <parent>` so the customer's answer to them names the same root.
//!
//! Limits: a client that drops `References` and keeps only `In-Reply-To` splits the thread
//! after the second reply (the root is then the parent); a customer who answers from another
//! address starts a new conversation (the contact is part of the id by design).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

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

/// `References` of a reply to `parent`: the thread root first (when known and different),
/// then the parent. Bare ids.
pub fn reply_references(parent: &str, root: Option<&str>) -> Vec<String> {
    let mut refs = Vec::with_capacity(2);
    if let Some(root) = root.filter(|r| !r.is_empty() && *r != parent) {
        refs.push(root.to_owned());
    }
    refs.push(parent.to_owned());
    refs
}

/// Strips surrounding whitespace and angle brackets from a Message-ID.
pub fn bare_id(id: &str) -> &str {
    let id = id.trim();
    let id = id.strip_prefix('<').unwrap_or(id);
    id.strip_suffix('>').unwrap_or(id).trim()
}

/// Recently seen mail: Message-ID → thread root, bounded (oldest forgotten first). Readers
/// record every mail they publish; the sender looks up the root of the mail it answers so its
/// `References` start with the root. A miss (parent read before a restart, or by another
/// daemon) only shortens `References` to the parent; see the module docs for the effect.
pub struct ThreadIndex {
    inner: Mutex<IndexInner>,
    capacity: usize,
}

#[derive(Default)]
struct IndexInner {
    roots: HashMap<String, String>,
    order: VecDeque<String>,
}

impl ThreadIndex {
    /// An index remembering up to `capacity` mails.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(IndexInner::default()),
            capacity: capacity.max(1),
        }
    }

    /// Records that `message_id` belongs to the thread rooted at `root`.
    pub fn record(&self, message_id: &str, root: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner
            .roots
            .insert(message_id.to_owned(), root.to_owned())
            .is_none()
        {
            inner.order.push_back(message_id.to_owned());
        }
        while inner.order.len() > self.capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.roots.remove(&old);
            }
        }
    }

    /// The thread root of `message_id`, if it was recorded.
    pub fn root_of(&self, message_id: &str) -> Option<String> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.roots.get(message_id).cloned()
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
        let ours = reply_references("c1@cust", Some(first));
        assert_eq!(ours, ["c1@cust"]);
        let mut answer_refs = ours.clone();
        answer_refs.push("r1@shop".into());
        assert_eq!(thread_root(&answer_refs, Some("r1@shop"), "c2@cust"), first);
        // Our reply to the answer keeps the root first.
        assert_eq!(
            reply_references("c2@cust", Some(first)),
            ["c1@cust", "c2@cust"]
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

    #[test]
    fn index_is_bounded() {
        let index = ThreadIndex::new(2);
        index.record("a", "r1");
        index.record("b", "r1");
        index.record("c", "r2");
        assert_eq!(index.root_of("a"), None);
        assert_eq!(index.root_of("b").as_deref(), Some("r1"));
        assert_eq!(index.root_of("c").as_deref(), Some("r2"));
    }
}
