//! Topic names. Versions are part of the name: a breaking change to a payload makes `.v2`.

use serde::Deserialize;

/// The Kafka topics omnirouter reads and writes. Defaults follow DESIGN.md; operators may rename
/// them (for a shared cluster with naming rules) in `[kafka.topics]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Topics {
    /// Normalized customer messages and channel signals.
    pub inbound: String,
    /// Replies to send, produced by agents, CRMs or the HTTP API.
    pub outbound: String,
    /// The fate of each outbound message.
    pub delivery: String,
    /// Agent presence, skills, offers, resolve, transfer, reopen, CSAT.
    pub commands: String,
    /// The router's decisions.
    pub routing: String,
    /// Compacted changelog the router rebuilds its state from.
    pub router_state: String,
    /// Compacted checkpoints of the e-mail channel: per watched mailbox folder, the
    /// UIDVALIDITY and the last UID whose mail Kafka acknowledged.
    pub email_checkpoints: String,
    /// Compacted e-mail thread index (key = a mail's Message-ID, value = its thread root and
    /// `References`): every replica follows it, so a reply from any of them carries the full
    /// chain.
    pub email_threads: String,
    /// Compacted memory of the mail each mailbox published (key = `<checkpoint key>/<hash of
    /// the Message-ID>`), read when a UIDVALIDITY change makes a folder be read again.
    pub email_published: String,
    /// Compacted store of received parts of multipart SMS not yet reassembled, so a part
    /// acknowledged to the provider survives a restart (keyed `<tenant>/<message>/<part>`).
    pub sms_parts: String,
    /// Compacted registry of which router instance owns which partition (key `p<n>`): its
    /// owner epoch and HTTP address, so any instance can forward a tenant's reads to the owner.
    /// Also holds the outbound consumers' liveness claims (key `<outbound group>/p<n>`, see
    /// `omni_bus::liveness`).
    pub router_owners: String,
    /// Compacted progress of outbound replies (keyed by the outbound event id, on the outbound
    /// record's partition): the parts a provider accepted and whether the reply is finished,
    /// so the next owner of an outbound partition never sends a part twice.
    pub outbound_progress: String,
    /// Compacted store of each Zalo OA's token pair (key `<tenant>/<oa>`, encrypted unless the
    /// operator allowed clear text): written by the one replica that refreshes the OA, read by
    /// every replica.
    pub zalo_tokens: String,
    /// Compacted: each live chat replica's open sockets per (hashed) client IP, republished
    /// every heartbeat (key: the replica), so the per-IP socket cap counts every replica.
    pub livechat_presence: String,
    /// Compacted: live chat visitors whose tokens issued before a time are void (key
    /// `<tenant>/<visitor>`), read by every replica from the beginning.
    pub livechat_revocations: String,
    /// Records a consumer could not use (not JSON, a wrong type, a required field missing),
    /// with their original key, value and headers and the reason in headers, so nothing read
    /// is dropped silently and each can be published again once its producer is fixed.
    pub dead_letter: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            inbound: "omni.inbound.v1".into(),
            outbound: "omni.outbound.v1".into(),
            delivery: "omni.delivery.v1".into(),
            commands: "omni.commands.v1".into(),
            routing: "omni.routing.v1".into(),
            router_state: "omni.router-state.v1".into(),
            email_checkpoints: "omni.email-checkpoints.v1".into(),
            email_threads: "omni.email-threads.v1".into(),
            email_published: "omni.email-published.v1".into(),
            sms_parts: "omni.sms-parts.v1".into(),
            router_owners: "omni.router-owners.v1".into(),
            outbound_progress: "omni.outbound-progress.v1".into(),
            zalo_tokens: "omni.zalo-tokens.v1".into(),
            livechat_presence: "omni.livechat-presence.v1".into(),
            livechat_revocations: "omni.livechat-revocations.v1".into(),
            dead_letter: "omni.dead-letter.v1".into(),
        }
    }
}

impl Topics {
    /// Every topic with whether it is compacted, in a stable order (for topic creation and
    /// readiness checks).
    pub fn all(&self) -> [(&str, bool); 16] {
        [
            (&self.inbound, false),
            (&self.outbound, false),
            (&self.delivery, false),
            (&self.commands, false),
            (&self.routing, false),
            (&self.router_state, true),
            (&self.email_checkpoints, true),
            (&self.email_threads, true),
            (&self.email_published, true),
            (&self.sms_parts, true),
            (&self.router_owners, true),
            (&self.outbound_progress, true),
            (&self.zalo_tokens, true),
            (&self.livechat_presence, true),
            (&self.livechat_revocations, true),
            (&self.dead_letter, false),
        ]
    }
}
