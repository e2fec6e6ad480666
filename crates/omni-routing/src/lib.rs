//! The routing core: which agent gets which conversation, and when.
//!
//! [`Engine`] is a pure, deterministic state machine for one tenant. It takes [`Input`]s —
//! inbound customer messages, agent and supervisor commands, clock ticks — each with the time
//! it happened, and returns [`Output`]s: routing events (queued, offered, assigned, requeued,
//! escalated, SLA breached, resolved…) and metric observations (first response time, response
//! time, queue wait, resolution time…). It never reads a clock or does I/O, so the same inputs
//! always give the same outputs: the Kafka runner can replay its input log after a crash and get
//! identical events, and property tests can explore millions of event sequences.
//!
//! # Layout
//! - [`config`]: queues, rules, strategies, SLAs, overflow, business hours — validated once.
//! - [`model`]: ids, agents' profiles, presence, time.
//! - [`input`] / [`output`]: what goes in and what comes out.
//! - [`hours`]: business hours in a queue's time zone.
//! - [`engine`]: the state machine; its design note explains the index that keeps a decision
//!   cheap at 10,000 agents.

pub mod config;
pub mod engine;
pub mod hours;
pub mod input;
pub mod model;
pub mod output;

pub use config::{
    AfterHours, BusinessHoursOnly, ConfigError, CsatSurvey, OverflowAction, OverflowStep,
    QueueConfig, RoutingConfig, Rule, RuleMatch, Sla, Strategy,
};
pub use engine::state::{StateChange, StateEntry};
pub use engine::{AgentDay, AgentKpis, AgentView, ConversationView, Engine, QueueView, StateSize};
pub use input::{AgentProfile, Command, Inbound, Input, TransferTarget, TransferTargetError};
pub use model::{AgentId, Presence, QueueId, Skill, Timestamp};
pub use output::{Explanation, Observation, ObservationKind, Output, RoutingEvent, SlaKind};

#[cfg(test)]
mod tests;
