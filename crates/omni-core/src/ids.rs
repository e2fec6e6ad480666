//! Identifiers with rules: tenants are validated once, event ids are deterministic where a
//! provider gives a message id, conversation ids are stable per (tenant, channel, contact).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

use crate::message::ChannelRef;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A tenant id must be 1–64 characters of `a-z`, `0-9`, `-`, `_`, starting alphanumeric, so it
    /// is safe as a Kafka key, a URL segment and a metric label.
    #[error("invalid tenant id {0:?}: use 1-64 chars of a-z, 0-9, '-', '_', starting with a letter or digit")]
    InvalidTenant(String),
}

/// A routing domain: one customer-care organisation. It is the Kafka key of everything the
/// router reads and writes, so one router instance owns a tenant's whole state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    /// Validates and wraps a tenant id.
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        let bytes = id.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 64
            && bytes[0].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_');
        if ok {
            Ok(Self(id))
        } else {
            Err(IdError::InvalidTenant(id))
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TenantId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

/// Namespace for deterministic (UUIDv5) event ids. Fixed forever: changing it would give every
/// redelivered provider message a new id and break consumers' dedupe.
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x6f6d_6e69_726f_7574_6572_2d65_7665_6e74);
/// Namespace for conversation ids. Fixed forever, like [`EVENT_NAMESPACE`].
const CONVERSATION_NAMESPACE: Uuid = Uuid::from_u128(0x6f6d_6e69_726f_7574_6572_2d63_6f6e_7673);

/// The CloudEvents `id` of an event: a UUIDv5 derived from the provider's message id when there
/// is one (so a redelivered webhook yields the same id), else a time-ordered UUIDv7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    /// The id of the event for a provider message: the same inputs give the same id, always.
    /// `kind` separates event kinds that share a provider id (a message and its delivery signal).
    pub fn from_provider(
        tenant: &TenantId,
        channel: &ChannelRef,
        kind: &str,
        provider_id: &str,
    ) -> Self {
        let name = join_name(&[
            tenant.as_str(),
            channel.kind.as_str(),
            &channel.account,
            kind,
            provider_id,
        ]);
        Self(Uuid::new_v5(&EVENT_NAMESPACE, name.as_bytes()))
    }

    /// The id of an event derived from other named facts (e.g. the router's decision number
    /// `k` for input record `topic/partition/offset`): the same parts give the same id, so a
    /// replayed computation publishes identical ids.
    pub fn derived(tenant: &TenantId, parts: &[&str]) -> Self {
        let mut all = Vec::with_capacity(parts.len() + 2);
        all.push("derived");
        all.push(tenant.as_str());
        all.extend_from_slice(parts);
        Self(Uuid::new_v5(&EVENT_NAMESPACE, join_name(&all).as_bytes()))
    }

    /// A fresh, time-ordered id for events with no provider id to derive from.
    pub fn new_random() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id as a 128-bit number (cheap to hash and store in dedupe caches).
    pub fn as_u128(&self) -> u128 {
        self.0.as_u128()
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for EventId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// A conversation: stable for (tenant, channel kind, channel account, contact[, thread]) so every
/// message from the same customer on the same channel lands in the same conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConversationId(Uuid);

impl ConversationId {
    /// The conversation of `contact_id` on `channel`; `thread` separates e-mail threads.
    pub fn derive(
        tenant: &TenantId,
        channel: &ChannelRef,
        contact_id: &str,
        thread: Option<&str>,
    ) -> Self {
        let name = join_name(&[
            tenant.as_str(),
            channel.kind.as_str(),
            &channel.account,
            contact_id,
            thread.unwrap_or(""),
        ]);
        Self(Uuid::new_v5(&CONVERSATION_NAMESPACE, name.as_bytes()))
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ConversationId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Joins name parts with a separator that cannot occur inside them (NUL), so ("a", "bc") and
/// ("ab", "c") never collide.
fn join_name(parts: &[&str]) -> String {
    let mut name = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            name.push('\0');
        }
        name.push_str(part);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::ChannelKind;

    fn api(account: &str) -> ChannelRef {
        ChannelRef::new(ChannelKind::Api, account)
    }

    #[test]
    fn tenant_ids_are_validated() {
        assert!(TenantId::new("acme").is_ok());
        assert!(TenantId::new("shop-42_vn").is_ok());
        for bad in ["", "-x", "Acme", "a b", "a/b", "ä", &"x".repeat(65)] {
            assert!(TenantId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn same_provider_message_gives_same_event_id() {
        let t = TenantId::new("acme").unwrap();
        let a = EventId::from_provider(&t, &api("web"), "message", "m-1");
        let b = EventId::from_provider(&t, &api("web"), "message", "m-1");
        assert_eq!(a, b);
        assert_ne!(a, EventId::from_provider(&t, &api("web"), "message", "m-2"));
        assert_ne!(a, EventId::from_provider(&t, &api("app"), "message", "m-1"));
        assert_ne!(a, EventId::from_provider(&t, &api("web"), "signal", "m-1"));
        let other = TenantId::new("other").unwrap();
        assert_ne!(
            a,
            EventId::from_provider(&other, &api("web"), "message", "m-1")
        );
    }

    #[test]
    fn event_id_is_stable_across_releases() {
        // Consumers dedupe on this id: it must never change for the same input.
        let t = TenantId::new("acme").unwrap();
        let id = EventId::from_provider(&t, &api("default"), "message", "client-1");
        assert_eq!(id.to_string(), id.as_uuid().to_string());
        assert_eq!(id.as_uuid().get_version_num(), 5);
        let again: EventId = id.to_string().parse().unwrap();
        assert_eq!(again, id);
    }

    #[test]
    fn name_parts_cannot_collide() {
        let t = TenantId::new("acme").unwrap();
        let a = ConversationId::derive(&t, &api("ab"), "c", None);
        let b = ConversationId::derive(&t, &api("a"), "bc", None);
        assert_ne!(a, b);
        let thread = ConversationId::derive(&t, &api("ab"), "c", Some("t1"));
        assert_ne!(a, thread);
        assert_eq!(a, ConversationId::derive(&t, &api("ab"), "c", None));
    }
}
