//! The routing state machine of one tenant. A newcomer reads this first.
//!
//! # Inputs → decisions → outputs
//!
//! [`Engine::handle`] takes one [`Input`] at a time, with the time it happened (`now`: the
//! engine never reads a clock and does no I/O):
//! - an inbound customer message opens a contact, reopens a resolved one or continues one;
//! - an agent or supervisor command (profile, presence, accept/decline, reply, resolve,
//!   transfer, reopen, CSAT);
//! - a tick, which fires the timers that fell due.
//!
//! From these it makes a handful of decisions: which queue a new contact joins (the rules);
//! which agent gets a waiting conversation (the contact's sticky agent, else the queue's
//! strategy); whether that is an offer (accept within a timeout) or an assignment; who gets a
//! conversation back when an offer is declined or times out, or an agent leaves or loses
//! capacity; and, as timers fire, overflow steps, SLA breaches, opening hours, expiry and
//! forgetting. When capacity frees, the freed agent takes the best conversation waiting for
//! them at once.
//!
//! It answers with [`Output`]s in the order things happened: routing events (queued, offered,
//! assigned, requeued, escalated, SLA breached, resolved…) and metric observations. Three
//! questions can be asked between inputs: [`Engine::next_timer`] (when to send the next tick),
//! [`Engine::take_changes`] (the records of what changed, for the compacted changelog) and the
//! views (`queue_views`, `agent_views`, `conversation`, `size`). [`Engine::restore`] is the way
//! back in from those records.
//!
//! # What is deterministic, and why
//!
//! Everything. The same inputs at the same times give the same outputs byte for byte, and so
//! does an engine restored from its records at any point (next section), because the Kafka
//! runner replays its input log after a crash and a new owner of the tenant must decide as the
//! old one would have: anything else publishes a second, different decision for the same
//! input. So: time is an input; every tie between agents is broken by the agent's creation
//! number; waiting conversations, timers and agent indexes are ordered sets with total keys;
//! hash maps are only looked up by key, or iterated where the order cannot show (counting,
//! sorting, or collecting into an ordered set first).
//!
//! # Layout: where each concern lives
//!
//! - this file: the [`Engine`], whose fields are its parts (each says what it owns and which
//!   module changes it), construction, [`Engine::handle`] and the two helpers every concern
//!   uses (`touch`, `reject`);
//! - `arrival.rs`: a customer message, the rules that choose a queue, entering a queue,
//!   business hours and what happens outside them;
//! - `choice.rs`: choosing an agent (sticky, then the strategy's walk of the agent index), and
//!   draining waiting conversations when an agent frees capacity or a queue opens;
//! - `offers.rs`: giving a conversation to an agent (offer or assignment), accept and decline,
//!   taking it back (release, requeue) and routing it again;
//! - `commands.rs`: every [`Command`](crate::Command): profiles and capacity, presence, replies, resolution,
//!   reopening, transfers, removing an agent;
//! - `timers.rs`: the one ordered timer set, the deadlines that keep it exact, and what each
//!   timer does when it fires (offer expiry, overflow steps, SLA targets, queue opening,
//!   expiry, forgetting);
//! - `work.rs`: agent work states and customer patience: wrap-up, auto-away after missed
//!   offers, abandonment, and the wait estimate of a new conversation;
//! - `kpis.rs`: each agent's figures of the day (handled, handling and first-response time,
//!   occupancy, CSAT) and the end-of-day summary;
//! - `agents.rs`: agents by number and the agent index (the ordered sets a strategy walks);
//! - `waiting.rs`: a queue's waiting conversations, split by what it takes to serve them;
//! - `idhash.rs`: the fast seeded hasher of the conversation map;
//! - `conversation.rs`: a conversation's routing state, its sequence numbers and deadlines;
//! - `views.rs`: read-only views for the agent/operator API and gauges;
//! - `invariants.rs`: [`Engine::check_invariants`], run by the property tests after every step;
//! - [`state`]: the records of the changelog and [`Engine::take_changes`] / snapshots;
//! - `restore.rs`: [`Engine::restore`], rebuilding an engine from those records.
//!
//! # Design note: a decision that stays cheap at 10,000 agents
//!
//! Available agents (online, below total capacity) sit in a few *global* ordered indexes, one
//! per ordering a strategy needs: by idle time (`longest_idle`), by load ratio then idle time
//! (`least_loaded`), by id (`round_robin`), and per skill by proficiency then load then idle
//! (`best_skill`, only for skills that are some best-skill queue's primary skill). To route a
//! conversation, the engine walks the strategy's index in order and takes the first agent who
//! passes the per-conversation checks (skills at the conversation's overflow level, capacity
//! for its channel kind, not having declined it). An agent change updates a handful of index
//! entries (not one per queue), and the walk length depends on the share of agents that are
//! eligible, not on how many agents there are — so the cost of a decision grows with log(N).
//! Three things keep the walk short where that share is small: agents sit in a vector by
//! number with the queues each serves as dense bits beside it, so skipping an agent outside
//! the queue is one load; when few of a queue's agents are available among many, the engine
//! takes the least index key among the queue's own agents instead (the agent the walk would
//! reach first — debug builds check both agree); and available agents are counted per skill
//! and level, so a conversation needing a skill nobody available has is not walked at all.
//! Index keys are packed into one `u128` (rank, load ratio, idle time, agent number).
//!
//! Waiting conversations sit per queue, ordered by `arrival − priority × aging_step`: since every
//! waiting conversation ages at the same rate, that key orders them by aged priority forever,
//! and FIFO among equals, without re-sorting. Within a queue they are split by class (channel
//! kind, overflow relaxation, skills a rule added: everything an agent's eligibility depends on
//! but the decline list; `waiting.rs`). When an agent frees capacity, the engine looks at the
//! queues the agent can serve (computed once per agent), checks each class once, and takes the
//! best conversation among the classes' heads — a queue drains the moment capacity frees, never
//! on a timer, and a backlog nobody can take never hides eligible work behind it.
//!
//! Timers (offer expiry, overflow steps, SLA targets, queue opening, forgetting resolved
//! conversations) live in one ordered set and fire on [`Input::Tick`]; a timer carries the
//! sequence number of what it is about (the offer, the queue entry, the customer message, the
//! contact), so one that no longer matches the conversation is ignored.
//!
//! # Design note: a restore decides as the live engine would
//!
//! A new owner of a tenant rebuilds the engine from the latest record of every key
//! ([`state`]), and from then on must produce byte for byte the outputs the old owner would
//! have. So everything a decision reads is either in a record or recomputed from records
//! exactly: agents carry a creation number (`seq`, never reused) that breaks every tie and
//! drives round robin; the round-robin cursor is a number, so it survives its agent's removal;
//! sticky agents have records of their own; and the timer set is *exact*: every timer is
//! cancelled when it is superseded (a reply cancels the response targets, a new queue entry
//! cancels the pending overflow step…), and the timers a conversation's state does not imply
//! are written in its record as deadlines, so a restored engine holds the same timers as the
//! live one, not a superset. `tests/restore.rs` checks it over random inputs with restores at
//! random points.

use omni_core::ConversationId;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::config::{RoutingConfig, Strategy};
use crate::input::Input;
use crate::model::{Skill, Timestamp};
use crate::output::{Output, RoutingEvent};
use crate::ConfigError;

mod agents;
mod arrival;
mod choice;
mod commands;
mod conversation;
mod idhash;
mod invariants;
mod kpis;
mod offers;
mod restore;
pub mod state;
mod survey;
mod timers;
mod views;
mod waiting;
mod work;

use agents::{AgentIndex, Agents};
use arrival::{CompiledRule, Queue, Queues, Rules};
use conversation::Conversation;
pub use kpis::{AgentDay, AgentKpis};
use state::Changes;
use timers::Timer;
pub use views::{AgentView, ConversationView, QueueView, StateSize};

type AgentIdx = u32;
/// Open and retained conversations by id, hashed fast ([`idhash`]).
type Conversations = HashMap<ConversationId, Conversation, idhash::IdHashBuilder>;
type QueueIdx = usize;
type SkillIdx = u16;

/// One tenant's routing state and the rules that change it. See the module docs.
///
/// The state is kept in parts, each owned by one concern (its module says how it changes):
#[derive(Debug, Clone)]
pub struct Engine {
    /// The validated configuration, kept for the windows and targets read at decision time
    /// (sticky window, reopen window, retention, expiry).
    config: RoutingConfig,
    /// Skill names as small numbers, so an agent's skills are a sorted vector and a skill
    /// check is a binary search.
    skills: Skills,
    /// Every queue with its waiting conversations, in configuration order (`arrival.rs`).
    queues: Queues,
    /// The rules that choose a new contact's queue, compiled once (`arrival.rs`).
    rules: Rules,
    /// Agents by number and by name, and the next number (`agents.rs`).
    agents: Agents,
    /// The ordered sets of available agents a strategy walks (`agents.rs`, `choice.rs`).
    index: AgentIndex,
    /// Every open conversation, and resolved ones until their retention ends: looked up by
    /// id only, so hash order never shows.
    conversations: Conversations,
    /// Each contact's last agent and when they were assigned (by sticky key), for sticky
    /// routing within the window; forgotten by a timer just after it.
    sticky: HashMap<String, (AgentIdx, Timestamp)>,
    /// Pending timers ordered by (time, timer): a canonical order, so an engine restored from
    /// its changelog fires simultaneous timers in the same order as the original did
    /// (`timers.rs`).
    timers: BTreeSet<(Timestamp, Timer)>,
    /// What changed since the last [`Engine::take_changes`], so only those records are
    /// written ([`state`]).
    changes: Changes,
    /// The time of the input being handled (`None` between inputs and during a restore), so
    /// that every agent change counts the agent's staffed and busy time up to it
    /// (`kpis.rs`).
    clock: Option<Timestamp>,
    /// When the current KPI day ends (the tenant record carries it; `kpis.rs`).
    day_end: Option<Timestamp>,
    /// The time zone KPI days are counted in.
    kpi_tz: chrono_tz::Tz,
}

/// Skill names ↔ numbers, in the order skills were first seen (configuration first, then
/// profiles and records in input order: a restore interns in the same order).
#[derive(Debug, Clone, Default)]
struct Skills {
    by_name: HashMap<Skill, SkillIdx>,
    /// Names by number, for explanations and records.
    names: Vec<Skill>,
}

impl Engine {
    /// An engine for a validated configuration.
    pub fn new(config: RoutingConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut engine = Engine {
            skills: Skills::default(),
            queues: Queues::new(
                i64::try_from(config.aging_step_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            ),
            rules: Rules::default(),
            agents: Agents::new(config.queues.len()),
            index: AgentIndex::default(),
            conversations: Conversations::default(),
            sticky: HashMap::new(),
            timers: BTreeSet::new(),
            changes: Changes::default(),
            clock: None,
            day_end: None,
            kpi_tz: config
                .kpi_timezone
                .parse()
                .unwrap_or(chrono_tz::Asia::Ho_Chi_Minh),
            config: config.clone(),
        };
        for (id, q) in &config.queues {
            let required = engine.intern_skills(&q.skills);
            let primary = q
                .skills
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
                .map(|(s, _)| engine.intern(s));
            if q.strategy == Strategy::BestSkill {
                if let Some(p) = primary {
                    engine.index.skills.insert(p);
                }
            }
            engine.queues.by_id.insert(id.clone(), engine.queues.len());
            engine.queues.push(Queue {
                id: id.clone(),
                cfg: q.clone(),
                required,
                primary,
                waiting: waiting::Waiting::default(),
                available_agents: 0,
                rr_last: None,
                open_cache: None,
                open_timer: None,
                recent: std::collections::VecDeque::new(),
            });
        }
        engine.queues.default = engine.queues.by_id[&config.default_queue];
        for rule in &config.rules {
            let add_skills = engine.intern_skills(&rule.add_skills);
            let w = &rule.when;
            engine.rules.list.push(CompiledRule {
                channel: w.channel,
                account: w.account.clone(),
                keywords: w.keywords.iter().map(|k| k.to_lowercase()).collect(),
                tags: w.tags.clone(),
                language: w.language.as_ref().map(|l| l.to_ascii_lowercase()),
                queue: engine.queues.by_id[&rule.queue],
                add_skills,
                priority_boost: rule.priority_boost,
            });
        }
        engine.rules.need_text = engine.rules.list.iter().any(|r| !r.keywords.is_empty());
        Ok(engine)
    }

    /// A skill map as interned (skill, level) pairs, sorted by skill for binary search.
    fn intern_skills(&mut self, skills: &BTreeMap<Skill, u8>) -> Vec<(SkillIdx, u8)> {
        let mut pairs: Vec<(SkillIdx, u8)> =
            skills.iter().map(|(s, l)| (self.intern(s), *l)).collect();
        pairs.sort_unstable();
        pairs
    }

    fn intern(&mut self, skill: &Skill) -> SkillIdx {
        if let Some(i) = self.skills.by_name.get(skill) {
            return *i;
        }
        let i = SkillIdx::try_from(self.skills.names.len()).unwrap_or(SkillIdx::MAX);
        self.skills.by_name.insert(skill.clone(), i);
        self.skills.names.push(skill.clone());
        i
    }

    /// The earliest pending timer: when the runner should send the next [`Input::Tick`].
    pub fn next_timer(&self) -> Option<Timestamp> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Applies one input at time `now` and returns what happened, in order.
    pub fn handle(&mut self, now: Timestamp, input: &Input) -> Vec<Output> {
        let mut out = Vec::new();
        self.clock = Some(now);
        self.ensure_day_end(now);
        match input {
            Input::Inbound(msg) => self.inbound(now, msg, &mut out),
            Input::Command(cmd) => self.command(now, cmd, &mut out),
            Input::Tick => self.tick(now, &mut out),
        }
        self.clock = None;
        out
    }
}

/// A conversation to change, recorded as changed (for the state changelog).
fn touch<'a>(
    dirty: &mut BTreeSet<ConversationId>,
    conversations: &'a mut Conversations,
    id: ConversationId,
) -> Option<&'a mut Conversation> {
    dirty.insert(id);
    conversations.get_mut(&id)
}

/// Answers an input that cannot apply: nothing changed, and the event says why.
fn reject(out: &mut Vec<Output>, conversation: Option<ConversationId>, reason: String) {
    out.push(Output::Event(RoutingEvent::Rejected {
        conversation,
        reason,
    }));
}
