//! Unit tests: one behaviour of the routing model each, read as a specification. The helpers
//! here build inputs and read outputs; the tests sit by concern:
//! - `strategies`: which agent a strategy picks, skills and capacity;
//! - `queueing`: priority and FIFO, sticky agents, offers, overflow, business hours;
//! - `commands`: presence, transfers, rules, response times and SLAs, capacity cuts, removal;
//! - `config`: configuration errors and reading;
//! - `restore`: the changelog and restoring from it;
//! - `retention`: what the engine forgets.

use omni_core::{ChannelKind, ChannelRef, ConversationId, TenantId};
use std::collections::BTreeMap;

use crate::config::*;
use crate::hours::BusinessHours;
use crate::input::*;
use crate::model::*;
use crate::output::*;
use crate::{AgentView, Engine};

mod commands;
mod config;
mod queueing;
mod restore;
mod retention;
mod strategies;
mod work;

const T0: u64 = 1_800_000_000_000; // a fixed instant; the engine never reads a clock

fn at(secs: u64) -> Timestamp {
    Timestamp(T0 + secs * 1000)
}

fn conv(n: u32) -> ConversationId {
    let t = TenantId::new("acme").unwrap();
    ConversationId::derive(
        &t,
        &ChannelRef::new(ChannelKind::Api, "web"),
        &format!("c{n}"),
        None,
    )
}

fn msg(n: u32, kind: ChannelKind) -> Input {
    Input::Inbound(Inbound {
        conversation: conv(n),
        channel: ChannelRef::new(kind, "main"),
        contact_id: format!("c{n}"),
        tags: vec![],
        language: None,
        text: "xin chào".into(),
    })
}

fn chat(n: u32) -> Input {
    msg(n, ChannelKind::Livechat)
}

fn agent(id: &str, skills: &[(&str, u8)], capacity: u32) -> Input {
    Input::Command(Command::UpsertAgent(AgentProfile {
        agent: id.into(),
        skills: skills.iter().map(|(s, l)| (Skill::from(*s), *l)).collect(),
        capacity,
        channel_capacity: BTreeMap::new(),
    }))
}

fn presence(id: &str, p: Presence) -> Input {
    Input::Command(Command::SetPresence {
        agent: id.into(),
        presence: p,
    })
}

fn cmd(c: Command) -> Input {
    Input::Command(c)
}

fn engine(queue: QueueConfig) -> Engine {
    Engine::new(RoutingConfig::single_queue(queue)).unwrap()
}

fn online(e: &mut Engine, now: Timestamp, id: &str, skills: &[(&str, u8)], capacity: u32) {
    e.handle(now, &agent(id, skills, capacity));
    e.handle(now, &presence(id, Presence::Online));
}

/// An online agent with no skills, `capacity` places and room for only one e-mail at a time.
fn online_with_one_email_place(e: &mut Engine, now: Timestamp, id: &str, capacity: u32) {
    e.handle(
        now,
        &cmd(Command::UpsertAgent(AgentProfile {
            agent: id.into(),
            skills: BTreeMap::new(),
            capacity,
            channel_capacity: BTreeMap::from([(ChannelKind::Email, 1)]),
        })),
    );
    e.handle(now, &presence(id, Presence::Online));
}

fn assigned(out: &[Output]) -> Vec<(ConversationId, String)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(RoutingEvent::Assigned {
                conversation,
                agent,
                ..
            }) => Some((*conversation, agent.0.clone())),
            _ => None,
        })
        .collect()
}

fn agent_of(e: &Engine, n: u32) -> Option<String> {
    e.conversation(conv(n)).and_then(|c| c.agent).map(|a| a.0)
}

fn observed(out: &[Output], kind: ObservationKind) -> Vec<f64> {
    out.iter()
        .filter_map(|o| match o {
            Output::Observe(ob) if ob.kind == kind => Some(ob.value),
            _ => None,
        })
        .collect()
}

fn skills(list: &[(&str, u8)]) -> BTreeMap<Skill, u8> {
    list.iter().map(|(s, l)| (Skill::from(*s), *l)).collect()
}
