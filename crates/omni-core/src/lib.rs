//! The omnirouter event contract: what CRMs and every other crate see on Kafka.
//!
//! Everything here is pure data and pure functions (no I/O, no clock reads except where a
//! caller asks for "now"), so it can be shared by the channel adapters, the router and
//! external tools without pulling in a runtime.
//!
//! # Layout
//! - [`ids`]: tenant ids, event ids (deterministic from provider message ids) and conversation
//!   ids (stable per tenant, channel and contact).
//! - [`envelope`]: the CloudEvents 1.0 structured-mode envelope every Kafka value is wrapped in.
//! - [`message`]: channels, contacts, messages and the inbound event payloads.
//! - [`outbound`]: replies to send and the delivery results they produce.
//! - [`topics`]: topic names (renamable) and event type names.
//! - [`secret`]: a string that never prints, for tokens and keys in config.
//!
//! The JSON Schemas for every `data` payload live in `schemas/` beside this crate, the AsyncAPI
//! document in `schemas/asyncapi.json`; tests in this crate validate real serialized events
//! against them so the documents cannot drift from the code.

pub mod envelope;
pub mod ids;
pub mod json;
pub mod message;
pub mod outbound;
pub mod secret;
pub mod topics;

pub use envelope::{CloudEvent, EventType, SCHEMA_BASE_URI};
pub use ids::{ConversationId, EventId, IdError, TenantId};
pub use json::{to_json, EncodeError};
pub use message::{
    Attachment, AuthResult, ChannelKind, ChannelRef, ChannelSignal, Contact, Direction, Message,
    MessageFlag, MessageReceived, SenderAuthentication, SignalKind,
};
pub use outbound::{DeliveryStatus, DeliveryUpdate, OutboundMessage, Template};
pub use secret::Secret;
pub use topics::Topics;
