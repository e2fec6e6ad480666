//! The routing state machine of one tenant.
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
//!
//! Waiting conversations sit per queue, ordered by `arrival − priority × aging_step`: since every
//! waiting conversation ages at the same rate, that key orders them by aged priority forever,
//! and FIFO among equals, without re-sorting. When an agent frees capacity, the engine looks at
//! the queues the agent can serve (computed once per agent) and takes the best conversation
//! among their heads — a queue drains the moment capacity frees, never on a timer.
//!
//! Timers (offer expiry, overflow steps, SLA targets, queue opening, forgetting resolved
//! conversations) live in one ordered map and fire on [`Input::Tick`]; a timer that no longer
//! matches the conversation's state is ignored.
//!
//! Everything iterates ordered maps or vectors, never hash maps, so outputs are a function of
//! inputs alone.
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

use omni_core::{ChannelKind, ChannelRef, ConversationId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use crate::config::{AfterHours, OverflowAction, RoutingConfig, Strategy};
use crate::input::{AgentProfile, Command, Inbound, Input, TransferTarget};
use crate::model::{AgentId, Presence, QueueId, Skill, Timestamp};
use crate::output::{Explanation, Observation, ObservationKind, Output, RoutingEvent, SlaKind};
use crate::ConfigError;

pub mod state;

type AgentIdx = u32;
type QueueIdx = usize;
type SkillIdx = u16;

/// Ratio scale for load keys: open/capacity in millionths.
const RATIO_SCALE: u64 = 1_000_000;
/// How many waiting conversations of one queue are examined for one agent.
const SCAN_LIMIT: usize = 64;

/// Ordering key of an agent in an index: three numbers compared in order, then the agent.
type Key = (u64, u64, u64);

#[derive(Debug, Clone)]
struct Agent {
    id: AgentId,
    removed: bool,
    presence: Presence,
    skills: Vec<(SkillIdx, u8)>,
    capacity: u32,
    channel_capacity: BTreeMap<ChannelKind, u32>,
    /// Offered and assigned conversations, with when they were taken (for capacity cuts).
    open: BTreeMap<ConversationId, Timestamp>,
    open_by_kind: BTreeMap<ChannelKind, u32>,
    idle_since: Timestamp,
    /// Queues whose required skills the agent meets at full proficiency.
    queues: Vec<QueueIdx>,
    /// The same queues as a bit set, so most agents who cannot serve a conversation's queue
    /// are skipped in one test while walking an index.
    queue_bits: Vec<u64>,
    /// Index entries currently held (so they can be removed before a change).
    indexed: Option<IndexEntry>,
}

/// Agents by number. Numbers are handed out in creation order and never reused, so every
/// tie between agents (the indexes below order equal keys by number) and the round-robin
/// cursor mean the same thing in a restored engine as in the live one: the number is written
/// in the agent's record (`seq`). A removed agent's number simply disappears from the map.
#[derive(Debug, Clone, Default)]
struct Agents(HashMap<AgentIdx, Agent, BuildHasherDefault<IdxHasher>>);

impl Agents {
    fn get(&self, a: AgentIdx) -> Option<&Agent> {
        self.0.get(&a)
    }

    fn insert(&mut self, a: AgentIdx, agent: Agent) {
        self.0.insert(a, agent);
    }

    fn remove(&mut self, a: AgentIdx) -> Option<Agent> {
        self.0.remove(&a)
    }

    /// Every agent number, ascending (creation order).
    fn numbers(&self) -> Vec<AgentIdx> {
        let mut v: Vec<AgentIdx> = self.0.keys().copied().collect();
        v.sort_unstable();
        v
    }

    fn values(&self) -> impl Iterator<Item = &Agent> {
        self.0.values()
    }
}

impl std::ops::Index<AgentIdx> for Agents {
    type Output = Agent;
    fn index(&self, a: AgentIdx) -> &Agent {
        &self.0[&a]
    }
}

impl std::ops::IndexMut<AgentIdx> for Agents {
    fn index_mut(&mut self, a: AgentIdx) -> &mut Agent {
        self.0
            .get_mut(&a)
            .unwrap_or_else(|| unreachable!("unknown agent number {a}"))
    }
}

/// A hasher for agent numbers: one multiplication (numbers are not attacker-chosen).
#[derive(Debug, Clone, Copy, Default)]
struct IdxHasher(u64);

impl Hasher for IdxHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct IndexEntry {
    idle: (u64, AgentIdx),
    load: (Key, AgentIdx),
    skills: Vec<(SkillIdx, Key, AgentIdx)>,
}

impl Agent {
    fn level(&self, skill: SkillIdx) -> u8 {
        self.skills
            .binary_search_by_key(&skill, |(s, _)| *s)
            .map(|i| self.skills[i].1)
            .unwrap_or(0)
    }

    /// Whether the agent has the queue's skills at full proficiency.
    fn serves(&self, queue: QueueIdx) -> bool {
        self.queue_bits
            .get(queue / 64)
            .is_some_and(|w| w & (1u64 << (queue % 64)) != 0)
    }

    fn available(&self) -> bool {
        !self.removed
            && self.presence == Presence::Online
            && (self.open.len() as u64) < u64::from(self.capacity)
    }

    fn kind_has_room(&self, kind: ChannelKind) -> bool {
        let used = self.open_by_kind.get(&kind).copied().unwrap_or(0);
        let cap = self
            .channel_capacity
            .get(&kind)
            .copied()
            .unwrap_or(self.capacity);
        used < cap
    }

    fn ratio(&self) -> u64 {
        if self.capacity == 0 {
            return RATIO_SCALE;
        }
        self.open.len() as u64 * RATIO_SCALE / u64::from(self.capacity)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Waiting,
    Offered { agent: AgentIdx, expires: Timestamp },
    Assigned { agent: AgentIdx },
    Resolved { at: Timestamp },
}

#[derive(Debug, Clone)]
struct Conversation {
    channel: ChannelRef,
    sticky_key: String,
    queue: QueueIdx,
    priority: i32,
    extra_skills: Vec<(SkillIdx, u8)>,
    /// Original arrival: kept through requeues, so a requeued conversation is not sent back.
    arrival: Timestamp,
    /// Start of this contact (first customer message), for first response and resolution.
    created_at: Timestamp,
    /// When it entered its current queue (overflow steps count from here).
    entered_queue_at: Timestamp,
    queue_epoch: u64,
    state: State,
    relax: u8,
    next_step: usize,
    declined: BTreeSet<AgentIdx>,
    first_reply_at: Option<Timestamp>,
    awaiting_since: Option<Timestamp>,
    awaiting_seq: u64,
    offer_seq: u64,
    episode: u64,
    pending_explanation: Option<Explanation>,
    after_hours_noted: bool,
    /// Pending timers of this conversation that its state alone does not determine, so that a
    /// restored engine holds exactly the live one's timers (an offer's expiry and the forget
    /// timer follow from `state`). Each is `Some` while its timer is scheduled; the timer is
    /// removed whenever it is superseded, so no stale timer outlives its reason.
    deadlines: Deadlines,
    /// The last customer message, agent reply or command naming it: an unresolved
    /// conversation expires `expire_after_secs` later.
    last_activity: Timestamp,
}

/// When a conversation's pending timers fire (see [`Conversation::deadlines`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Deadlines {
    /// The overflow step `next_step` of queue entry `queue_epoch`.
    overflow: Option<Timestamp>,
    /// The first-response target of episode `episode`.
    first: Option<Timestamp>,
    /// The next-response target of customer message `awaiting_seq`.
    next: Option<Timestamp>,
    /// The resolution target of episode `episode`.
    resolution: Option<Timestamp>,
}

impl Conversation {
    fn wait_key(&self, aging_ms: i64) -> i64 {
        i64::try_from(self.arrival.0).unwrap_or(i64::MAX) - i64::from(self.priority) * aging_ms
    }
}

#[derive(Debug, Clone)]
struct Queue {
    id: QueueId,
    cfg: crate::config::QueueConfig,
    required: Vec<(SkillIdx, u8)>,
    /// The skill `best_skill` orders by: the highest minimum, ties by name.
    primary: Option<SkillIdx>,
    waiting: BTreeSet<(i64, ConversationId)>,
    available_agents: usize,
    rr_last: Option<AgentIdx>,
    open_cache: Option<(u64, bool)>,
    open_timer: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    OfferExpiry {
        conv: ConversationId,
        seq: u64,
    },
    Overflow {
        conv: ConversationId,
        epoch: u64,
        step: usize,
    },
    Sla {
        conv: ConversationId,
        kind: SlaKindOrd,
        seq: u64,
    },
    QueueOpen {
        queue: QueueIdx,
    },
    Forget {
        conv: ConversationId,
    },
    Expire {
        conv: ConversationId,
    },
    StickyExpiry {
        key: String,
    },
}

/// Which of a conversation's [`Deadlines`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeadlineKind {
    Overflow,
    First,
    Next,
    Resolution,
}

impl Deadlines {
    fn slot(&mut self, kind: DeadlineKind) -> &mut Option<Timestamp> {
        match kind {
            DeadlineKind::Overflow => &mut self.overflow,
            DeadlineKind::First => &mut self.first,
            DeadlineKind::Next => &mut self.next,
            DeadlineKind::Resolution => &mut self.resolution,
        }
    }
}

/// `SlaKind` with an order, for the timer map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SlaKindOrd {
    First,
    Next,
    Resolution,
}

/// One tenant's routing state and the rules that change it. See the module docs.
#[derive(Debug, Clone)]
pub struct Engine {
    config: RoutingConfig,
    aging_ms: i64,
    skills: HashMap<Skill, SkillIdx>,
    skill_names: Vec<Skill>,
    queues: Vec<Queue>,
    queue_index: HashMap<QueueId, QueueIdx>,
    default_queue: QueueIdx,
    agents: Agents,
    /// The number the next new agent gets (numbers start at 1; 0 marks a record written
    /// before agents were numbered).
    next_agent: AgentIdx,
    agent_index: HashMap<AgentId, AgentIdx>,
    by_idle: BTreeSet<(u64, AgentIdx)>,
    by_load: BTreeSet<(Key, AgentIdx)>,
    by_id: BTreeSet<AgentIdx>,
    by_skill: BTreeMap<SkillIdx, BTreeSet<(Key, AgentIdx)>>,
    indexed_skills: BTreeSet<SkillIdx>,
    conversations: HashMap<ConversationId, Conversation>,
    /// Waiting conversations with relaxed proficiency, across queues.
    relaxed: BTreeSet<(i64, ConversationId)>,
    sticky: HashMap<String, (AgentIdx, Timestamp)>,
    /// Pending timers ordered by (time, timer): a canonical order, so an engine restored from
    /// its changelog fires simultaneous timers in the same order as the original did.
    timers: BTreeSet<(Timestamp, Timer)>,
    /// Entities changed since the last [`Engine::take_changes`].
    dirty_agents: BTreeSet<AgentIdx>,
    /// Names of agents forgotten since the last [`Engine::take_changes`] (for tombstones).
    forgotten_agents: BTreeMap<AgentIdx, AgentId>,
    dirty_convs: BTreeSet<ConversationId>,
    dirty_queues: BTreeSet<QueueIdx>,
    dirty_sticky: BTreeSet<String>,
    /// The tenant record (agent numbering, queue opening timers) changed.
    dirty_meta: bool,
    rules: Vec<CompiledRule>,
    rules_need_text: bool,
}

/// A rule with its queue resolved and its words lower-cased once, at start-up.
#[derive(Debug, Clone)]
struct CompiledRule {
    channel: Option<ChannelKind>,
    account: Option<String>,
    keywords: Vec<String>,
    tags: Vec<String>,
    language: Option<String>,
    queue: QueueIdx,
    add_skills: Vec<(SkillIdx, u8)>,
    priority_boost: i32,
}

/// A queue as the agent/operator API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueView {
    /// The queue.
    pub id: QueueId,
    /// Conversations waiting.
    pub waiting: usize,
    /// Conversations offered to an agent, not yet accepted.
    pub offered: usize,
    /// Conversations assigned.
    pub assigned: usize,
    /// Arrival of the oldest waiting conversation.
    pub oldest_arrival: Option<Timestamp>,
    /// Agents available with the queue's skills.
    pub available_agents: usize,
}

/// An agent as the agent/operator API shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentView {
    /// The agent.
    pub id: AgentId,
    /// Presence.
    pub presence: Presence,
    /// Open (offered + assigned) conversations.
    pub open: usize,
    /// Total capacity.
    pub capacity: u32,
}

/// How much the engine holds: what retention keeps bounded (for a gauge, and for tests that
/// memory is given back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateSize {
    /// Agents (removed agents are forgotten at once).
    pub agents: usize,
    /// Conversations: open ones, and resolved ones within `resolved_retention_secs`.
    pub conversations: usize,
    /// Contacts with a sticky agent within `sticky_window_secs`.
    pub sticky_contacts: usize,
    /// Pending timers.
    pub timers: usize,
}

/// A conversation's routing state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationView {
    /// The queue it is (or was last) in.
    pub queue: QueueId,
    /// `waiting`, `offered`, `assigned` or `resolved`.
    pub state: &'static str,
    /// The agent it is offered or assigned to.
    pub agent: Option<AgentId>,
    /// Original arrival time.
    pub arrival: Timestamp,
    /// Priority.
    pub priority: i32,
}

impl Engine {
    /// An engine for a validated configuration.
    pub fn new(config: RoutingConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut engine = Engine {
            aging_ms: i64::try_from(config.aging_step_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            skills: HashMap::new(),
            skill_names: Vec::new(),
            queues: Vec::new(),
            queue_index: HashMap::new(),
            default_queue: 0,
            agents: Agents::default(),
            next_agent: 1,
            agent_index: HashMap::new(),
            by_idle: BTreeSet::new(),
            by_load: BTreeSet::new(),
            by_id: BTreeSet::new(),
            by_skill: BTreeMap::new(),
            indexed_skills: BTreeSet::new(),
            conversations: HashMap::new(),
            relaxed: BTreeSet::new(),
            sticky: HashMap::new(),
            timers: BTreeSet::new(),
            dirty_agents: BTreeSet::new(),
            forgotten_agents: BTreeMap::new(),
            dirty_convs: BTreeSet::new(),
            dirty_queues: BTreeSet::new(),
            dirty_sticky: BTreeSet::new(),
            dirty_meta: false,
            rules: Vec::new(),
            rules_need_text: false,
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
                    engine.indexed_skills.insert(p);
                }
            }
            engine.queue_index.insert(id.clone(), engine.queues.len());
            engine.queues.push(Queue {
                id: id.clone(),
                cfg: q.clone(),
                required,
                primary,
                waiting: BTreeSet::new(),
                available_agents: 0,
                rr_last: None,
                open_cache: None,
                open_timer: None,
            });
        }
        engine.default_queue = engine.queue_index[&config.default_queue];
        for rule in &config.rules {
            let add_skills = engine.intern_skills(&rule.add_skills);
            let w = &rule.when;
            engine.rules.push(CompiledRule {
                channel: w.channel,
                account: w.account.clone(),
                keywords: w.keywords.iter().map(|k| k.to_lowercase()).collect(),
                tags: w.tags.clone(),
                language: w.language.as_ref().map(|l| l.to_ascii_lowercase()),
                queue: engine.queue_index[&rule.queue],
                add_skills,
                priority_boost: rule.priority_boost,
            });
        }
        engine.rules_need_text = engine.rules.iter().any(|r| !r.keywords.is_empty());
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
        if let Some(i) = self.skills.get(skill) {
            return *i;
        }
        let i = SkillIdx::try_from(self.skill_names.len()).unwrap_or(SkillIdx::MAX);
        self.skills.insert(skill.clone(), i);
        self.skill_names.push(skill.clone());
        i
    }

    /// The earliest pending timer: when the runner should send the next [`Input::Tick`].
    pub fn next_timer(&self) -> Option<Timestamp> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Applies one input at time `now` and returns what happened, in order.
    pub fn handle(&mut self, now: Timestamp, input: &Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Inbound(msg) => self.inbound(now, msg, &mut out),
            Input::Command(cmd) => self.command(now, cmd, &mut out),
            Input::Tick => self.tick(now, &mut out),
        }
        out
    }

    // ----- inbound -------------------------------------------------------------------------

    fn inbound(&mut self, now: Timestamp, msg: &Inbound, out: &mut Vec<Output>) {
        let reopen_ms = self.config.reopen_window_secs.saturating_mul(1000);
        let existing = self
            .conversations
            .get(&msg.conversation)
            .map(|c| c.state.clone());
        match existing {
            Some(State::Resolved { at }) if now.0.saturating_sub(at.0) <= reopen_ms => {
                self.reopen(now, msg.conversation, out);
                self.note_customer_message(now, msg.conversation);
            }
            Some(State::Resolved { .. }) | None => self.new_contact(now, msg, out),
            Some(_) => self.note_customer_message(now, msg.conversation),
        }
        self.note_activity(now, msg.conversation);
    }

    /// Records an unanswered customer message (for response times and the next-response SLA).
    fn note_customer_message(&mut self, now: Timestamp, id: ConversationId) {
        let (queue, first_done) = {
            let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) else {
                return;
            };
            if c.awaiting_since.is_some() {
                return;
            }
            c.awaiting_since = Some(now);
            c.awaiting_seq += 1;
            (c.queue, c.first_reply_at.is_some())
        };
        if first_done {
            if let Some(secs) = self.queues[queue].cfg.sla.next_response_secs {
                self.set_deadline(id, DeadlineKind::Next, Some(now.plus_secs(secs)));
            }
        }
    }

    fn new_contact(&mut self, now: Timestamp, msg: &Inbound, out: &mut Vec<Output>) {
        let (queue, priority, extra) = self.choose_queue(msg);
        let episode = self
            .conversations
            .get(&msg.conversation)
            .map_or(0, |c| c.episode + 1);
        // The previous contact's timers go with it.
        self.cancel_timers(msg.conversation);
        let conv = Conversation {
            channel: msg.channel.clone(),
            sticky_key: format!(
                "{}/{}/{}",
                msg.channel.kind.as_str(),
                msg.channel.account,
                msg.contact_id
            ),
            queue,
            priority,
            extra_skills: extra,
            arrival: now,
            created_at: now,
            entered_queue_at: now,
            queue_epoch: 0,
            state: State::Waiting,
            relax: 0,
            next_step: 0,
            declined: BTreeSet::new(),
            first_reply_at: None,
            awaiting_since: Some(now),
            awaiting_seq: 1,
            offer_seq: 0,
            episode,
            pending_explanation: None,
            after_hours_noted: false,
            deadlines: Deadlines::default(),
            last_activity: now,
        };
        let id = msg.conversation;
        self.dirty_convs.insert(id);
        self.conversations.insert(id, conv);
        let sla = self.queues[queue].cfg.sla;
        if let Some(s) = sla.first_response_secs {
            self.set_deadline(id, DeadlineKind::First, Some(now.plus_secs(s)));
        }
        if let Some(s) = sla.resolution_secs {
            self.set_deadline(id, DeadlineKind::Resolution, Some(now.plus_secs(s)));
        }
        out.push(Output::Event(RoutingEvent::Queued {
            conversation: id,
            queue: self.queues[queue].id.clone(),
            priority,
        }));
        self.enter_queue(now, id, queue, out);
    }

    fn choose_queue(&self, msg: &Inbound) -> (QueueIdx, i32, Vec<(SkillIdx, u8)>) {
        let text = if self.rules_need_text {
            msg.text.to_lowercase()
        } else {
            String::new()
        };
        let lang = msg
            .language
            .as_deref()
            .map(|l| l.split(['-', '_']).next().unwrap_or(l).to_ascii_lowercase());
        for rule in &self.rules {
            let ok = rule.channel.is_none_or(|k| k == msg.channel.kind)
                && rule
                    .account
                    .as_ref()
                    .is_none_or(|a| *a == msg.channel.account)
                && (rule.keywords.is_empty()
                    || rule.keywords.iter().any(|k| text.contains(k.as_str())))
                && (rule.tags.is_empty() || rule.tags.iter().any(|t| msg.tags.contains(t)))
                && rule
                    .language
                    .as_ref()
                    .is_none_or(|l| lang.as_deref() == Some(l.as_str()));
            if ok {
                let priority = self.queues[rule.queue]
                    .cfg
                    .priority
                    .saturating_add(rule.priority_boost);
                return (rule.queue, priority, rule.add_skills.clone());
            }
        }
        let q = self.default_queue;
        (q, self.queues[q].cfg.priority, Vec::new())
    }

    /// Puts a waiting conversation into `queue` (new epoch, overflow restarts) and tries to
    /// route it: sticky agent first, then the queue's strategy.
    fn enter_queue(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        queue: QueueIdx,
        out: &mut Vec<Output>,
    ) {
        self.set_deadline(id, DeadlineKind::Overflow, None);
        let key = {
            let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) else {
                return;
            };
            c.queue = queue;
            c.state = State::Waiting;
            c.entered_queue_at = now;
            c.queue_epoch += 1;
            c.next_step = 0;
            c.wait_key(self.aging_ms)
        };
        self.queues[queue].waiting.insert((key, id));
        if self.conversations[&id].relax > 0 {
            self.relaxed.insert((key, id));
        }
        if let Some(step) = self.queues[queue].cfg.overflow.first() {
            let at = now.plus_secs(step.after_secs);
            self.set_deadline(id, DeadlineKind::Overflow, Some(at));
        }
        if !self.queue_open(queue, now) {
            self.after_hours(now, id, queue, out);
            return;
        }
        if !self.try_sticky(now, id, out) {
            self.route_conversation(now, id, out);
        }
    }

    fn after_hours(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        queue: QueueIdx,
        out: &mut Vec<Output>,
    ) {
        match self.queues[queue].cfg.after_hours.clone() {
            AfterHours::SpillTo(target) => {
                let to = self.queue_index[&target];
                self.leave_waiting(id);
                if let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) {
                    c.relax = 0;
                }
                out.push(Output::Event(RoutingEvent::Escalated {
                    conversation: id,
                    from_queue: self.queues[queue].id.clone(),
                    to_queue: target,
                    action: "after_hours".into(),
                }));
                // A chain of closed queues ends in the last one waiting, never in a loop.
                if self.queue_open(to, now)
                    || matches!(self.queues[to].cfg.after_hours, AfterHours::Wait)
                {
                    self.enter_queue(now, id, to, out);
                } else {
                    self.enter_queue_waiting(now, id, to);
                }
            }
            AfterHours::Wait => {
                let opens = self.queues[queue]
                    .cfg
                    .hours
                    .as_ref()
                    .and_then(|h| h.next_open(now));
                let noted = self
                    .conversations
                    .get(&id)
                    .is_some_and(|c| c.after_hours_noted);
                if !noted {
                    if let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) {
                        c.after_hours_noted = true;
                    }
                    out.push(Output::Event(RoutingEvent::AfterHours {
                        conversation: id,
                        queue: self.queues[queue].id.clone(),
                        opens_at: opens,
                    }));
                }
                if let Some(at) = opens {
                    self.set_open_timer(queue, Some(at));
                }
            }
        }
    }

    /// Enters a queue without routing (the end of an after-hours spill chain).
    fn enter_queue_waiting(&mut self, now: Timestamp, id: ConversationId, queue: QueueIdx) {
        self.set_deadline(id, DeadlineKind::Overflow, None);
        if let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) {
            c.queue = queue;
            c.state = State::Waiting;
            c.entered_queue_at = now;
            c.queue_epoch += 1;
            c.next_step = 0;
            let key = c.wait_key(self.aging_ms);
            self.queues[queue].waiting.insert((key, id));
        }
    }

    fn queue_open(&mut self, queue: QueueIdx, now: Timestamp) -> bool {
        let minute = now.0 / 60_000;
        let q = &mut self.queues[queue];
        let Some(hours) = &q.cfg.hours else {
            return true;
        };
        if let Some((m, open)) = q.open_cache {
            if m == minute {
                return open;
            }
        }
        let open = hours.is_open(now);
        q.open_cache = Some((minute, open));
        open
    }

    // ----- choosing an agent ---------------------------------------------------------------

    /// The skills a conversation needs: its queue's plus any a rule added.
    fn requirement<'a>(&'a self, c: &'a Conversation) -> impl Iterator<Item = (SkillIdx, u8)> + 'a {
        let relax = c.relax;
        self.queues[c.queue]
            .required
            .iter()
            .chain(c.extra_skills.iter())
            .map(move |(s, l)| (*s, l.saturating_sub(relax).max(1)))
    }

    fn can_take(&self, a: AgentIdx, c: &Conversation) -> bool {
        let agent = &self.agents[a];
        if c.relax == 0 && !agent.serves(c.queue) {
            return false;
        }
        agent.available()
            && agent.kind_has_room(c.channel.kind)
            && !c.declined.contains(&a)
            && self.requirement(c).all(|(s, l)| agent.level(s) >= l)
    }

    fn try_sticky(&mut self, now: Timestamp, id: ConversationId, out: &mut Vec<Output>) -> bool {
        let Some(c) = self.conversations.get(&id) else {
            return false;
        };
        let Some(&(agent, at)) = self.sticky.get(&c.sticky_key) else {
            return false;
        };
        if now.0.saturating_sub(at.0) > self.config.sticky_window_secs.saturating_mul(1000)
            || !self.can_take(agent, c)
        {
            return false;
        }
        let eligible = self.queues[c.queue].available_agents;
        let explanation = Explanation {
            strategy: "sticky".into(),
            eligible,
            reason: format!(
                "the customer's last agent, assigned {}s ago, is online with free capacity",
                now.0.saturating_sub(at.0) / 1000
            ),
        };
        self.take(now, id, agent, explanation, out);
        true
    }

    /// Finds an agent for a waiting conversation by its queue's strategy and gives it to them.
    fn route_conversation(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        out: &mut Vec<Output>,
    ) -> bool {
        let Some(c) = self.conversations.get(&id) else {
            return false;
        };
        if c.state != State::Waiting {
            return false;
        }
        let q = &self.queues[c.queue];
        let strategy = q.cfg.strategy;
        // Nobody with the queue's skills is available: skip the walk (unless overflow relaxed
        // the skills, when agents outside the count may qualify).
        if q.available_agents == 0 && c.relax == 0 {
            return false;
        }
        let found = match strategy {
            Strategy::LongestIdle => self
                .by_idle
                .iter()
                .map(|(_, a)| *a)
                .find(|a| self.can_take(*a, c)),
            Strategy::LeastLoaded => self
                .by_load
                .iter()
                .map(|(_, a)| *a)
                .find(|a| self.can_take(*a, c)),
            Strategy::RoundRobin => {
                let start = q.rr_last.map_or(0, |l| l + 1);
                self.by_id
                    .range(start..)
                    .chain(self.by_id.range(..start))
                    .copied()
                    .find(|a| self.can_take(*a, c))
            }
            Strategy::BestSkill => match q.primary.and_then(|p| self.by_skill.get(&p)) {
                Some(index) => index.iter().map(|(_, a)| *a).find(|a| self.can_take(*a, c)),
                None => self
                    .by_load
                    .iter()
                    .map(|(_, a)| *a)
                    .find(|a| self.can_take(*a, c)),
            },
        };
        let Some(agent) = found else {
            return false;
        };
        let explanation = self.explain(now, strategy, c, agent);
        if strategy == Strategy::RoundRobin {
            let queue = c.queue;
            self.queues[queue].rr_last = Some(agent);
            self.dirty_queues.insert(queue);
        }
        self.take(now, id, agent, explanation, out);
        true
    }

    fn explain(
        &self,
        now: Timestamp,
        strategy: Strategy,
        c: &Conversation,
        a: AgentIdx,
    ) -> Explanation {
        let agent = &self.agents[a];
        let idle = now.0.saturating_sub(agent.idle_since.0) / 1000;
        let load = format!("{}/{} open", agent.open.len(), agent.capacity);
        let reason = match strategy {
            Strategy::LongestIdle => {
                format!("idle longest ({idle}s) among agents who can take it; {load}")
            }
            Strategy::LeastLoaded => format!("least loaded ({load}), idle {idle}s"),
            Strategy::RoundRobin => format!("next in turn; {load}"),
            Strategy::BestSkill => {
                let q = &self.queues[c.queue];
                let level = q.primary.map_or(0, |p| agent.level(p));
                let skill = q
                    .primary
                    .map_or("-", |p| self.skill_names[p as usize].0.as_str());
                format!("highest proficiency in {skill} ({level}/5); {load}, idle {idle}s")
            }
        };
        let reason = if c.relax > 0 {
            format!("{reason}; overflow: proficiency relaxed by {}", c.relax)
        } else {
            reason
        };
        Explanation::new(strategy, self.queues[c.queue].available_agents, reason)
    }

    /// Gives a waiting conversation to `agent`: an offer, or an assignment in auto-assign queues.
    fn take(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        a: AgentIdx,
        explanation: Explanation,
        out: &mut Vec<Output>,
    ) {
        self.leave_waiting(id);
        let (kind, queue) = {
            let c = &self.conversations[&id];
            (c.channel.kind, c.queue)
        };
        self.update_agent(a, |agent| {
            agent.open.insert(id, now);
            *agent.open_by_kind.entry(kind).or_insert(0) += 1;
        });
        let timeout = self.queues[queue].cfg.offer_timeout_secs;
        match timeout {
            Some(secs) => {
                let expires = now.plus_secs(secs);
                let seq = {
                    let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) else {
                        return;
                    };
                    c.offer_seq += 1;
                    c.state = State::Offered { agent: a, expires };
                    c.pending_explanation = Some(explanation);
                    c.offer_seq
                };
                self.schedule(expires, Timer::OfferExpiry { conv: id, seq });
                out.push(Output::Event(RoutingEvent::Offered {
                    conversation: id,
                    agent: self.agents[a].id.clone(),
                    queue: self.queues[queue].id.clone(),
                    expires_at: expires,
                }));
            }
            None => self.assign(now, id, a, explanation, out),
        }
    }

    fn assign(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        a: AgentIdx,
        explanation: Explanation,
        out: &mut Vec<Output>,
    ) {
        self.cancel_offer_timer(id);
        let (queue, kind, arrival, sticky_key) = {
            let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) else {
                return;
            };
            c.state = State::Assigned { agent: a };
            c.declined.clear();
            c.pending_explanation = None;
            (c.queue, c.channel.kind, c.arrival, c.sticky_key.clone())
        };
        self.update_agent(a, |agent| agent.idle_since = agent.idle_since.max(now));
        self.set_sticky(sticky_key, Some((a, now)));
        out.push(Output::Event(RoutingEvent::Assigned {
            conversation: id,
            agent: self.agents[a].id.clone(),
            queue: self.queues[queue].id.clone(),
            explanation,
        }));
        out.push(Output::Observe(Observation {
            kind: ObservationKind::QueueWait,
            queue: self.queues[queue].id.clone(),
            channel: kind,
            value: now.secs_since(arrival),
        }));
    }

    /// Removes a conversation from its queue's waiting set (and the relaxed set).
    fn leave_waiting(&mut self, id: ConversationId) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        let key = (c.wait_key(self.aging_ms), id);
        self.queues[c.queue].waiting.remove(&key);
        self.relaxed.remove(&key);
    }

    /// Gives a freed agent the best waiting conversations they can take, until full.
    fn drain_agent(&mut self, now: Timestamp, a: AgentIdx, out: &mut Vec<Output>) {
        loop {
            if !self.agents[a].available() {
                return;
            }
            let mut best: Option<(i64, ConversationId)> = None;
            for &q in &self.agents[a].queues {
                if !self.queue_open_cached(q, now) {
                    continue;
                }
                for &(key, id) in self.queues[q].waiting.iter().take(SCAN_LIMIT) {
                    if best.is_some_and(|(k, _)| k <= key) {
                        break;
                    }
                    if self.can_take(a, &self.conversations[&id]) {
                        best = Some((key, id));
                        break;
                    }
                }
            }
            for &(key, id) in self.relaxed.iter().take(SCAN_LIMIT) {
                if best.is_some_and(|(k, _)| k <= key) {
                    break;
                }
                let c = &self.conversations[&id];
                if self.queue_open_cached(c.queue, now) && self.can_take(a, c) {
                    best = Some((key, id));
                    break;
                }
            }
            let Some((_, id)) = best else {
                return;
            };
            let c = &self.conversations[&id];
            let strategy = self.queues[c.queue].cfg.strategy;
            let mut explanation = self.explain(now, strategy, c, a);
            explanation.reason = format!(
                "capacity freed: the longest-waiting conversation this agent can take ({})",
                explanation.reason
            );
            self.take(now, id, a, explanation, out);
        }
    }

    /// Queue open state from the per-minute cache, without mutating (cache filled by
    /// `queue_open` on every routing path; a stale cache means "recompute").
    fn queue_open_cached(&self, queue: QueueIdx, now: Timestamp) -> bool {
        let q = &self.queues[queue];
        match (&q.cfg.hours, q.open_cache) {
            (None, _) => true,
            (Some(_), Some((m, open))) if m == now.0 / 60_000 => open,
            (Some(h), _) => h.is_open(now),
        }
    }

    /// Routes as many waiting conversations of a queue as agents allow (when it opens).
    fn drain_queue(&mut self, now: Timestamp, queue: QueueIdx, out: &mut Vec<Output>) {
        let waiting: Vec<ConversationId> = self.queues[queue]
            .waiting
            .iter()
            .map(|(_, id)| *id)
            .collect();
        for id in waiting {
            if self.queues[queue].available_agents == 0
                && self.relaxed.is_empty()
                && self.by_id.is_empty()
            {
                break;
            }
            self.route_conversation(now, id, out);
        }
    }

    // ----- agent index ---------------------------------------------------------------------

    /// Applies a change to an agent, keeping every index consistent with it.
    fn update_agent(&mut self, a: AgentIdx, change: impl FnOnce(&mut Agent)) {
        let was_available = self.agents[a].available();
        self.dirty_agents.insert(a);
        let old = self.agents[a].indexed.take();
        change(&mut self.agents[a]);
        let new = match old {
            // Still available with the same skills (a profile change goes through
            // `removed`): move the existing entries in place, no allocation.
            Some(entry) if self.agents[a].available() => Some(self.rekey(a, entry)),
            old => {
                let new = self.index_entry(a);
                self.reindex(a, old, new.as_ref());
                new
            }
        };
        self.agents[a].indexed = new;
        let now_available = self.agents[a].available();
        if was_available != now_available {
            for i in 0..self.agents[a].queues.len() {
                let q = self.agents[a].queues[i];
                let n = &mut self.queues[q].available_agents;
                *n = if now_available {
                    *n + 1
                } else {
                    n.saturating_sub(1)
                };
            }
        }
    }

    /// Moves an available agent's entries to its current idle time and load, touching only the
    /// keys that changed.
    fn rekey(&mut self, a: AgentIdx, mut entry: IndexEntry) -> IndexEntry {
        let agent = &self.agents[a];
        let (idle, ratio) = (agent.idle_since.0, agent.ratio());
        if entry.idle.0 != idle {
            self.by_idle.remove(&entry.idle);
            entry.idle = (idle, a);
            self.by_idle.insert(entry.idle);
        }
        let load = ((ratio, idle, 0), a);
        if entry.load != load {
            self.by_load.remove(&entry.load);
            entry.load = load;
            self.by_load.insert(load);
        }
        for (skill, key, idx) in &mut entry.skills {
            let moved = (key.0, ratio, idle);
            if *key != moved {
                if let Some(set) = self.by_skill.get_mut(skill) {
                    set.remove(&(*key, *idx));
                    set.insert((moved, *idx));
                }
                *key = moved;
            }
        }
        entry
    }

    /// The index entries an agent should have now (`None` when not available).
    fn index_entry(&self, a: AgentIdx) -> Option<IndexEntry> {
        let agent = &self.agents[a];
        if !agent.available() {
            return None;
        }
        let idle = agent.idle_since.0;
        let ratio = agent.ratio();
        Some(IndexEntry {
            idle: (idle, a),
            load: ((ratio, idle, 0), a),
            skills: agent
                .skills
                .iter()
                .filter(|(s, _)| self.indexed_skills.contains(s))
                .map(|(s, l)| (*s, (u64::from(5 - (*l).min(5)), ratio, idle), a))
                .collect(),
        })
    }

    /// Moves an agent's index entries from `old` to `new`, touching only the keys that changed
    /// (a release changes the load keys, not the idle one; the id set changes only when the
    /// agent becomes available or unavailable).
    fn reindex(&mut self, a: AgentIdx, old: Option<IndexEntry>, new: Option<&IndexEntry>) {
        match (old, new) {
            (None, None) => {}
            (Some(o), None) => {
                self.by_idle.remove(&o.idle);
                self.by_load.remove(&o.load);
                self.by_id.remove(&a);
                for (skill, key, idx) in o.skills {
                    if let Some(set) = self.by_skill.get_mut(&skill) {
                        set.remove(&(key, idx));
                    }
                }
            }
            (None, Some(n)) => {
                self.by_idle.insert(n.idle);
                self.by_load.insert(n.load);
                self.by_id.insert(a);
                for (skill, key, idx) in &n.skills {
                    self.by_skill
                        .entry(*skill)
                        .or_default()
                        .insert((*key, *idx));
                }
            }
            (Some(o), Some(n)) => {
                if o.idle != n.idle {
                    self.by_idle.remove(&o.idle);
                    self.by_idle.insert(n.idle);
                }
                if o.load != n.load {
                    self.by_load.remove(&o.load);
                    self.by_load.insert(n.load);
                }
                if o.skills != n.skills {
                    for (skill, key, idx) in o.skills {
                        if let Some(set) = self.by_skill.get_mut(&skill) {
                            set.remove(&(key, idx));
                        }
                    }
                    for (skill, key, idx) in &n.skills {
                        self.by_skill
                            .entry(*skill)
                            .or_default()
                            .insert((*key, *idx));
                    }
                }
            }
        }
    }

    // ----- commands ------------------------------------------------------------------------

    fn command(&mut self, now: Timestamp, cmd: &Command, out: &mut Vec<Output>) {
        let first = out.len();
        self.apply_command(now, cmd, out);
        // A command that names a conversation and is applied is activity on it.
        let named = match cmd {
            Command::Accept { conversation, .. }
            | Command::Decline { conversation, .. }
            | Command::AgentReplied { conversation, .. }
            | Command::Transfer { conversation, .. }
            | Command::Reopen { conversation } => Some(*conversation),
            _ => None,
        };
        let rejected = out[first..]
            .iter()
            .any(|o| matches!(o, Output::Event(RoutingEvent::Rejected { .. })));
        if let (Some(id), false) = (named, rejected) {
            self.note_activity(now, id);
        }
    }

    fn apply_command(&mut self, now: Timestamp, cmd: &Command, out: &mut Vec<Output>) {
        match cmd {
            Command::UpsertAgent(profile) => self.upsert_agent(now, profile, out),
            Command::RemoveAgent { agent } => {
                let Some(&a) = self.agent_index.get(agent) else {
                    return reject(out, None, format!("unknown agent {agent}"));
                };
                // Out of every index first, so nothing is routed back to them.
                self.update_agent(a, |ag| {
                    ag.removed = true;
                    ag.presence = Presence::Offline;
                });
                self.requeue_agent_conversations(now, a, "agent removed", out);
                self.agent_index.remove(agent);
                self.forget_agent(a);
            }
            Command::SetPresence { agent, presence } => {
                let Some(&a) = self.agent_index.get(agent) else {
                    return reject(out, None, format!("unknown agent {agent}"));
                };
                self.set_presence(now, a, *presence, out);
            }
            Command::Accept {
                agent,
                conversation,
            } => self.accept(now, agent, *conversation, out),
            Command::Decline {
                agent,
                conversation,
            } => self.decline(now, agent, *conversation, false, out),
            Command::AgentReplied { conversation, .. } => self.replied(now, *conversation, out),
            Command::Resolve { conversation } => self.resolve(now, *conversation, out),
            Command::Transfer { conversation, to } => self.transfer(now, *conversation, to, out),
            Command::Reopen { conversation } => {
                match self.conversations.get(conversation).map(|c| &c.state) {
                    Some(State::Resolved { .. }) => self.reopen(now, *conversation, out),
                    Some(_) => reject(
                        out,
                        Some(*conversation),
                        "conversation is not resolved".into(),
                    ),
                    None => reject(out, Some(*conversation), "unknown conversation".into()),
                }
            }
            Command::Csat {
                conversation,
                score,
            } => {
                let Some(c) = self.conversations.get(conversation) else {
                    return reject(out, Some(*conversation), "unknown conversation".into());
                };
                if !(1..=5).contains(score) {
                    return reject(
                        out,
                        Some(*conversation),
                        format!("CSAT score {score} is not 1-5"),
                    );
                }
                out.push(Output::Observe(Observation {
                    kind: ObservationKind::Csat,
                    queue: self.queues[c.queue].id.clone(),
                    channel: c.channel.kind,
                    value: f64::from(*score),
                }));
            }
        }
    }

    fn upsert_agent(&mut self, now: Timestamp, p: &AgentProfile, out: &mut Vec<Output>) {
        for (skill, level) in &p.skills {
            if !(1..=5).contains(level) {
                return reject(
                    out,
                    None,
                    format!("skill {} proficiency {level} is not 1-5", skill.0),
                );
            }
        }
        let skills = self.intern_skills(&p.skills);
        let queues: Vec<QueueIdx> = (0..self.queues.len())
            .filter(|q| {
                self.queues[*q].required.iter().all(|(s, l)| {
                    skills
                        .binary_search_by_key(s, |(x, _)| *x)
                        .is_ok_and(|i| skills[i].1 >= *l)
                })
            })
            .collect();
        let a = match self.agent_index.get(&p.agent) {
            Some(&a) => a,
            None => {
                let a = self.next_agent;
                self.next_agent = self.next_agent.saturating_add(1);
                self.dirty_meta = true;
                self.agents.insert(
                    a,
                    Agent {
                        id: p.agent.clone(),
                        removed: false,
                        presence: Presence::Offline,
                        skills: Vec::new(),
                        capacity: 0,
                        channel_capacity: BTreeMap::new(),
                        open: BTreeMap::new(),
                        open_by_kind: BTreeMap::new(),
                        idle_since: now,
                        queues: Vec::new(),
                        queue_bits: Vec::new(),
                        indexed: None,
                    },
                );
                self.agent_index.insert(p.agent.clone(), a);
                a
            }
        };
        // Availability counters belong to the old queue list: take the agent out of every index
        // first, change the profile, then put them back as the new profile says.
        self.update_agent(a, |ag| ag.removed = true);
        {
            self.dirty_agents.insert(a);
            let ag = &mut self.agents[a];
            ag.skills = skills;
            ag.capacity = p.capacity;
            ag.channel_capacity = p.channel_capacity.clone();
            ag.queue_bits = queue_bits(&queues, self.queues.len());
            ag.queues = queues;
        }
        self.update_agent(a, |ag| ag.removed = false);
        // Pending offers the agent no longer has the skills for go to someone else.
        let offers: Vec<ConversationId> = self.agents[a]
            .open
            .keys()
            .filter(|id| {
                self.conversations.get(id).is_some_and(|c| {
                    matches!(c.state, State::Offered { .. })
                        && !self
                            .requirement(c)
                            .all(|(s, l)| self.agents[a].level(s) >= l)
                })
            })
            .copied()
            .collect();
        for id in offers {
            self.requeue(now, id, "agent no longer has the required skills", out);
        }
        self.enforce_capacity(now, a, out);
        self.drain_agent(now, a, out);
    }

    /// Requeues an agent's newest conversations while they hold more than their capacity
    /// (total or per channel kind) allows, after a capacity cut.
    fn enforce_capacity(&mut self, now: Timestamp, a: AgentIdx, out: &mut Vec<Output>) {
        loop {
            let agent = &self.agents[a];
            let over_total = agent.open.len() as u64 > u64::from(agent.capacity);
            let over_kind = |kind: ChannelKind| {
                agent.open_by_kind.get(&kind).copied().unwrap_or(0)
                    > agent
                        .channel_capacity
                        .get(&kind)
                        .copied()
                        .unwrap_or(agent.capacity)
            };
            let victim = agent
                .open
                .iter()
                .filter(|(id, _)| {
                    over_total
                        || self
                            .conversations
                            .get(id)
                            .is_some_and(|c| over_kind(c.channel.kind))
                })
                .max_by_key(|(id, at)| (**at, **id))
                .map(|(id, _)| *id);
            let Some(id) = victim else {
                return;
            };
            self.requeue(now, id, "agent capacity reduced", out);
        }
    }

    fn set_presence(
        &mut self,
        now: Timestamp,
        a: AgentIdx,
        presence: Presence,
        out: &mut Vec<Output>,
    ) {
        let before = self.agents[a].presence;
        if before == presence {
            return;
        }
        self.update_agent(a, |ag| {
            ag.presence = presence;
            if presence == Presence::Online {
                ag.idle_since = ag.idle_since.max(now);
            }
        });
        match presence {
            Presence::Offline => {
                self.requeue_agent_conversations(now, a, "agent went offline", out)
            }
            Presence::Away => {
                // Pending offers go to someone who is there; assigned conversations stay.
                let offered: Vec<ConversationId> = self.agents[a]
                    .open
                    .keys()
                    .filter(|id| {
                        matches!(
                            self.conversations.get(id).map(|c| &c.state),
                            Some(State::Offered { .. })
                        )
                    })
                    .copied()
                    .collect();
                for id in offered {
                    self.requeue(now, id, "agent went away", out);
                }
            }
            Presence::Online => self.drain_agent(now, a, out),
        }
    }

    fn requeue_agent_conversations(
        &mut self,
        now: Timestamp,
        a: AgentIdx,
        reason: &str,
        out: &mut Vec<Output>,
    ) {
        let open: Vec<ConversationId> = self.agents[a].open.keys().copied().collect();
        for id in open {
            self.requeue(now, id, reason, out);
        }
    }

    /// Takes a conversation from its agent and puts it back in its queue with its original
    /// arrival time, then routes it (to someone else if possible).
    fn requeue(&mut self, now: Timestamp, id: ConversationId, reason: &str, out: &mut Vec<Output>) {
        let Some(agent) = self.release(id) else {
            return;
        };
        let queue = self.conversations[&id].queue;
        out.push(Output::Event(RoutingEvent::Requeued {
            conversation: id,
            queue: self.queues[queue].id.clone(),
            from_agent: Some(self.agents[agent].id.clone()),
            reason: reason.to_owned(),
        }));
        let key = {
            let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) else {
                return;
            };
            c.state = State::Waiting;
            c.wait_key(self.aging_ms)
        };
        self.queues[queue].waiting.insert((key, id));
        if self.conversations[&id].relax > 0 {
            self.relaxed.insert((key, id));
        }
        self.catch_up_overflow(now, id, out);
        self.route_if_waiting(now, id, out);
        self.drain_agent(now, agent, out);
    }

    /// Routes a conversation that is (still) waiting in its current queue, or applies the
    /// queue's after-hours rule; after an overflow step it may already sit elsewhere.
    fn route_if_waiting(&mut self, now: Timestamp, id: ConversationId, out: &mut Vec<Output>) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        if c.state != State::Waiting {
            return;
        }
        let queue = c.queue;
        if self.queue_open(queue, now) {
            self.route_conversation(now, id, out);
        } else {
            self.after_hours(now, id, queue, out);
        }
    }

    /// Applies an overflow step that fell due while the conversation was offered or assigned,
    /// now that it waits again (its timer found it not waiting and did nothing).
    fn catch_up_overflow(&mut self, now: Timestamp, id: ConversationId, out: &mut Vec<Output>) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        let due = self.queues[c.queue]
            .cfg
            .overflow
            .get(c.next_step)
            .map(|step| c.entered_queue_at.plus_secs(step.after_secs));
        if due.is_some_and(|at| at <= now) {
            let (epoch, step) = (c.queue_epoch, c.next_step);
            self.overflow(now, id, epoch, step, out);
        }
    }

    /// Detaches a conversation from the agent holding it (offer or assignment); returns them.
    fn release(&mut self, id: ConversationId) -> Option<AgentIdx> {
        let c = self.conversations.get(&id)?;
        let agent = match c.state {
            State::Offered { agent, .. } | State::Assigned { agent } => agent,
            _ => return None,
        };
        let kind = c.channel.kind;
        self.cancel_offer_timer(id);
        self.update_agent(agent, |ag| {
            ag.open.remove(&id);
            if let Some(n) = ag.open_by_kind.get_mut(&kind) {
                *n = n.saturating_sub(1);
            }
        });
        Some(agent)
    }

    /// The agent, if `agent` names the one a pending offer of `id` is for.
    fn offered_to(&self, agent: &AgentId, id: ConversationId) -> Option<AgentIdx> {
        let a = self.agent_index.get(agent).copied()?;
        match self.conversations.get(&id).map(|c| &c.state) {
            Some(State::Offered { agent: o, .. }) if *o == a => Some(a),
            _ => None,
        }
    }

    fn accept(
        &mut self,
        now: Timestamp,
        agent: &AgentId,
        id: ConversationId,
        out: &mut Vec<Output>,
    ) {
        match self.offered_to(agent, id) {
            Some(a) => {
                let explanation = self
                    .conversations
                    .get_mut(&id)
                    .and_then(|c| c.pending_explanation.take())
                    .unwrap_or_else(|| Explanation {
                        strategy: "offer".into(),
                        eligible: 0,
                        reason: "accepted".into(),
                    });
                self.assign(now, id, a, explanation, out);
            }
            _ => reject(
                out,
                Some(id),
                format!("no pending offer of this conversation to {agent}"),
            ),
        }
    }

    fn decline(
        &mut self,
        now: Timestamp,
        agent: &AgentId,
        id: ConversationId,
        timed_out: bool,
        out: &mut Vec<Output>,
    ) {
        let Some(a) = self.offered_to(agent, id) else {
            return reject(
                out,
                Some(id),
                format!("no pending offer of this conversation to {agent}"),
            );
        };
        self.release(id);
        let (queue, kind, key) = {
            let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) else {
                return;
            };
            c.declined.insert(a);
            c.state = State::Waiting;
            c.pending_explanation = None;
            (c.queue, c.channel.kind, c.wait_key(self.aging_ms))
        };
        self.queues[queue].waiting.insert((key, id));
        if self.conversations[&id].relax > 0 {
            self.relaxed.insert((key, id));
        }
        out.push(Output::Event(RoutingEvent::OfferDeclined {
            conversation: id,
            agent: self.agents[a].id.clone(),
            timed_out,
        }));
        out.push(Output::Observe(Observation {
            kind: if timed_out {
                ObservationKind::OfferTimedOut
            } else {
                ObservationKind::OfferDeclined
            },
            queue: self.queues[queue].id.clone(),
            channel: kind,
            value: 1.0,
        }));
        self.catch_up_overflow(now, id, out);
        self.route_if_waiting(now, id, out);
        self.drain_agent(now, a, out);
    }

    fn replied(&mut self, now: Timestamp, id: ConversationId, out: &mut Vec<Output>) {
        let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) else {
            return reject(out, Some(id), "unknown conversation".into());
        };
        let queue = self.queues[c.queue].id.clone();
        let channel = c.channel.kind;
        if c.first_reply_at.is_none() {
            c.first_reply_at = Some(now);
            out.push(Output::Observe(Observation {
                kind: ObservationKind::FirstResponse,
                queue: queue.clone(),
                channel,
                value: now.secs_since(c.created_at),
            }));
        }
        if let Some(since) = c.awaiting_since.take() {
            out.push(Output::Observe(Observation {
                kind: ObservationKind::Response,
                queue,
                channel,
                value: now.secs_since(since),
            }));
        }
        // Answered: these targets can no longer be missed.
        self.set_deadline(id, DeadlineKind::First, None);
        self.set_deadline(id, DeadlineKind::Next, None);
    }

    fn resolve(&mut self, now: Timestamp, id: ConversationId, out: &mut Vec<Output>) {
        let Some(c) = self.conversations.get(&id) else {
            return reject(out, Some(id), "unknown conversation".into());
        };
        if matches!(c.state, State::Resolved { .. }) {
            return reject(out, Some(id), "already resolved".into());
        }
        self.leave_waiting(id);
        let agent = self.release(id);
        // A resolved conversation never overflows (a reopening enters its queue anew) and
        // awaits no reply.
        self.set_deadline(id, DeadlineKind::Overflow, None);
        self.set_deadline(id, DeadlineKind::Next, None);
        let last = self.conversations[&id].last_activity;
        self.timers
            .remove(&(self.expire_at(last), Timer::Expire { conv: id }));
        let (queue, kind, created) = {
            let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) else {
                return;
            };
            c.state = State::Resolved { at: now };
            c.awaiting_since = None;
            c.relax = 0;
            (c.queue, c.channel.kind, c.created_at)
        };
        let qid = self.queues[queue].id.clone();
        out.push(Output::Event(RoutingEvent::Resolved {
            conversation: id,
            agent: agent.map(|a| self.agents[a].id.clone()),
            queue: qid.clone(),
        }));
        out.push(Output::Observe(Observation {
            kind: ObservationKind::Resolution,
            queue: qid.clone(),
            channel: kind,
            value: now.secs_since(created),
        }));
        out.push(Output::Observe(Observation {
            kind: ObservationKind::Resolved,
            queue: qid,
            channel: kind,
            value: 1.0,
        }));
        self.schedule(self.forget_at(now), Timer::Forget { conv: id });
        if let Some(a) = agent {
            self.drain_agent(now, a, out);
        }
    }

    fn reopen(&mut self, now: Timestamp, id: ConversationId, out: &mut Vec<Output>) {
        if let Some(State::Resolved { at }) = self.conversations.get(&id).map(|c| &c.state) {
            let at = self.forget_at(*at);
            self.timers.remove(&(at, Timer::Forget { conv: id }));
        }
        let (queue, kind) = {
            let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) else {
                return;
            };
            c.arrival = now;
            c.state = State::Waiting;
            c.declined.clear();
            c.after_hours_noted = false;
            (c.queue, c.channel.kind)
        };
        out.push(Output::Event(RoutingEvent::Reopened { conversation: id }));
        out.push(Output::Observe(Observation {
            kind: ObservationKind::Reopened,
            queue: self.queues[queue].id.clone(),
            channel: kind,
            value: 1.0,
        }));
        self.enter_queue(now, id, queue, out);
    }

    fn transfer(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        to: &TransferTarget,
        out: &mut Vec<Output>,
    ) {
        let Some(c) = self.conversations.get(&id) else {
            return reject(out, Some(id), "unknown conversation".into());
        };
        if matches!(c.state, State::Resolved { .. }) {
            return reject(out, Some(id), "conversation is resolved".into());
        }
        match to {
            TransferTarget::Agent(target) => {
                let Some(&t) = self.agent_index.get(target) else {
                    return reject(out, Some(id), format!("unknown agent {target}"));
                };
                let current = match c.state {
                    State::Assigned { agent } | State::Offered { agent, .. } => Some(agent),
                    _ => None,
                };
                if current == Some(t) {
                    return reject(out, Some(id), format!("{target} already has it"));
                }
                // The target is checked as if the conversation were waiting (no decline history).
                let mut probe = c.clone();
                probe.declined.clear();
                if !self.can_take(t, &probe) {
                    return reject(
                        out,
                        Some(id),
                        format!(
                            "{target} is not online with free capacity and the required skills"
                        ),
                    );
                }
                let from = self.release(id);
                self.leave_waiting(id);
                if let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) {
                    c.state = State::Waiting;
                }
                let explanation = Explanation {
                    strategy: "transfer".into(),
                    eligible: 1,
                    reason: format!(
                        "transferred{}",
                        from.map(|f| format!(" from {}", self.agents[f].id))
                            .unwrap_or_default()
                    ),
                };
                self.assign_direct(now, id, t, explanation, out);
                if let Some(f) = from {
                    self.drain_agent(now, f, out);
                }
            }
            TransferTarget::Queue(target) => {
                let Some(&q) = self.queue_index.get(target) else {
                    return reject(out, Some(id), format!("unknown queue {target}"));
                };
                let from = self.release(id);
                self.leave_waiting(id);
                if let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) {
                    c.state = State::Waiting;
                    c.relax = 0;
                    c.declined.clear();
                }
                out.push(Output::Event(RoutingEvent::Requeued {
                    conversation: id,
                    queue: target.clone(),
                    from_agent: from.map(|f| self.agents[f].id.clone()),
                    reason: "transferred".into(),
                }));
                self.enter_queue(now, id, q, out);
                if let Some(f) = from {
                    self.drain_agent(now, f, out);
                }
            }
        }
    }

    /// Assigns without an offer (transfers go straight to the named agent).
    fn assign_direct(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        a: AgentIdx,
        explanation: Explanation,
        out: &mut Vec<Output>,
    ) {
        let kind = self.conversations[&id].channel.kind;
        self.update_agent(a, |agent| {
            agent.open.insert(id, now);
            *agent.open_by_kind.entry(kind).or_insert(0) += 1;
        });
        self.assign(now, id, a, explanation, out);
    }

    // ----- timers --------------------------------------------------------------------------

    fn schedule(&mut self, at: Timestamp, timer: Timer) {
        self.timers.insert((at, timer));
    }

    /// When a conversation resolved at `at` is forgotten.
    fn forget_at(&self, at: Timestamp) -> Timestamp {
        at.plus_secs(self.config.resolved_retention_secs)
    }

    /// When an unresolved conversation last active at `last` expires.
    fn expire_at(&self, last: Timestamp) -> Timestamp {
        last.plus_secs(self.config.expire_after_secs)
    }

    /// When a sticky entry made at `at` is forgotten: just after its window.
    fn sticky_until(&self, at: Timestamp) -> Timestamp {
        Timestamp(
            at.plus_secs(self.config.sticky_window_secs)
                .0
                .saturating_add(1),
        )
    }

    /// Records activity on a conversation, moving its expiry.
    fn note_activity(&mut self, now: Timestamp, id: ConversationId) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        let (old, open) = (c.last_activity, !matches!(c.state, State::Resolved { .. }));
        if open {
            self.timers
                .remove(&(self.expire_at(old), Timer::Expire { conv: id }));
            self.schedule(self.expire_at(now), Timer::Expire { conv: id });
        }
        if old != now {
            if let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) {
                c.last_activity = now;
            }
        }
    }

    /// Abandons an unresolved conversation without activity for `expire_after_secs`: frees its
    /// agent, says so, and forgets it.
    fn expire(&mut self, now: Timestamp, id: ConversationId, out: &mut Vec<Output>) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        if matches!(c.state, State::Resolved { .. }) || self.expire_at(c.last_activity) > now {
            return;
        }
        let (queue, last_activity) = (self.queues[c.queue].id.clone(), c.last_activity);
        self.leave_waiting(id);
        let agent = self.release(id);
        out.push(Output::Event(RoutingEvent::Expired {
            conversation: id,
            queue,
            agent: agent.map(|a| self.agents[a].id.clone()),
            last_activity,
        }));
        self.remove_conversation(id);
        if let Some(a) = agent {
            self.drain_agent(now, a, out);
        }
    }

    /// The timer a conversation's deadline of `kind` stands for, as its fields say now.
    fn deadline_timer(id: ConversationId, c: &Conversation, kind: DeadlineKind) -> Timer {
        match kind {
            DeadlineKind::Overflow => Timer::Overflow {
                conv: id,
                epoch: c.queue_epoch,
                step: c.next_step,
            },
            DeadlineKind::First => Timer::Sla {
                conv: id,
                kind: SlaKindOrd::First,
                seq: c.episode,
            },
            DeadlineKind::Next => Timer::Sla {
                conv: id,
                kind: SlaKindOrd::Next,
                seq: c.awaiting_seq,
            },
            DeadlineKind::Resolution => Timer::Sla {
                conv: id,
                kind: SlaKindOrd::Resolution,
                seq: c.episode,
            },
        }
    }

    /// Schedules (`Some`) or cancels (`None`) one of a conversation's deadlines, replacing any
    /// pending one, so the timer set holds exactly what the conversations' fields say (and a
    /// restored engine, which schedules from those fields, holds the same timers). Call it
    /// before changing the sequence numbers the timer carries.
    fn set_deadline(&mut self, id: ConversationId, kind: DeadlineKind, at: Option<Timestamp>) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        let mut d = c.deadlines;
        if *d.slot(kind) == at {
            return;
        }
        let timer = Self::deadline_timer(id, c, kind);
        if let Some(old) = std::mem::replace(d.slot(kind), at) {
            self.timers.remove(&(old, timer.clone()));
        }
        if let Some(at) = at {
            self.timers.insert((at, timer));
        }
        if let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) {
            c.deadlines = d;
        }
    }

    /// A deadline's timer fired (it is out of the timer set already).
    fn fired(&mut self, id: ConversationId, kind: DeadlineKind, at: Timestamp) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        let mut d = c.deadlines;
        if *d.slot(kind) == Some(at) {
            *d.slot(kind) = None;
            if let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) {
                c.deadlines = d;
            }
        }
    }

    /// Cancels a pending offer's expiry (the offer was accepted, declined or withdrawn).
    fn cancel_offer_timer(&mut self, id: ConversationId) {
        if let Some(c) = self.conversations.get(&id) {
            if let State::Offered { expires, .. } = c.state {
                let seq = c.offer_seq;
                self.timers
                    .remove(&(expires, Timer::OfferExpiry { conv: id, seq }));
            }
        }
    }

    /// Cancels every timer of a conversation (it is replaced by a new contact, or forgotten).
    fn cancel_timers(&mut self, id: ConversationId) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        match c.state {
            State::Resolved { at } => {
                let at = self.forget_at(at);
                self.timers.remove(&(at, Timer::Forget { conv: id }));
            }
            _ => {
                let at = self.expire_at(c.last_activity);
                self.timers.remove(&(at, Timer::Expire { conv: id }));
            }
        }
        self.cancel_offer_timer(id);
        for kind in [
            DeadlineKind::Overflow,
            DeadlineKind::First,
            DeadlineKind::Next,
            DeadlineKind::Resolution,
        ] {
            self.set_deadline(id, kind, None);
        }
    }

    /// Forgets a conversation (it must hold no agent): its timers, and its record (a tombstone).
    fn remove_conversation(&mut self, id: ConversationId) {
        self.cancel_timers(id);
        self.leave_waiting(id);
        self.dirty_convs.insert(id);
        self.conversations.remove(&id);
    }

    /// Sets a queue's one opening timer (the tenant record carries it).
    fn set_open_timer(&mut self, queue: QueueIdx, at: Option<Timestamp>) {
        let old = self.queues[queue].open_timer;
        if old == at {
            return;
        }
        if let Some(old) = old {
            self.timers.remove(&(old, Timer::QueueOpen { queue }));
        }
        if let Some(at) = at {
            self.schedule(at, Timer::QueueOpen { queue });
        }
        self.queues[queue].open_timer = at;
        self.dirty_meta = true;
    }

    /// Sets (or clears) a contact's sticky agent.
    fn set_sticky(&mut self, key: String, entry: Option<(AgentIdx, Timestamp)>) {
        let old = match entry {
            Some(e) => {
                self.schedule(
                    self.sticky_until(e.1),
                    Timer::StickyExpiry { key: key.clone() },
                );
                self.sticky.insert(key.clone(), e)
            }
            None => self.sticky.remove(&key),
        };
        if let Some((_, at)) = old {
            if entry.is_none_or(|(_, new)| new != at) {
                self.timers.remove(&(
                    self.sticky_until(at),
                    Timer::StickyExpiry { key: key.clone() },
                ));
            }
        }
        self.dirty_sticky.insert(key);
    }

    /// Drops a removed agent, who holds nothing any more: the contacts they were sticky for
    /// and the offers they declined forget them, so that their name, if it comes back, is a new
    /// agent in every respect. Their number is never given again.
    fn forget_agent(&mut self, a: AgentIdx) {
        let keys: Vec<String> = self
            .sticky
            .iter()
            .filter(|(_, (s, _))| *s == a)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.set_sticky(key, None);
        }
        let declined: Vec<ConversationId> = self
            .conversations
            .iter()
            .filter(|(_, c)| c.declined.contains(&a))
            .map(|(id, _)| *id)
            .collect();
        for id in declined {
            if let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) {
                c.declined.remove(&a);
            }
        }
        self.dirty_agents.insert(a);
        if let Some(agent) = self.agents.remove(a) {
            self.forgotten_agents.insert(a, agent.id);
        }
    }

    fn tick(&mut self, now: Timestamp, out: &mut Vec<Output>) {
        while self.timers.first().is_some_and(|(at, _)| *at <= now) {
            let Some((at, timer)) = self.timers.pop_first() else {
                break;
            };
            self.fire(now, at, timer, out);
        }
    }

    fn fire(&mut self, now: Timestamp, at: Timestamp, timer: Timer, out: &mut Vec<Output>) {
        match timer {
            Timer::OfferExpiry { conv, seq } => {
                let agent = match self.conversations.get(&conv) {
                    Some(c) if c.offer_seq == seq => match c.state {
                        State::Offered { agent, .. } => Some(agent),
                        _ => None,
                    },
                    _ => None,
                };
                if let Some(a) = agent {
                    let id = self.agents[a].id.clone();
                    self.decline(now, &id, conv, true, out);
                }
            }
            Timer::Overflow { conv, epoch, step } => {
                self.fired(conv, DeadlineKind::Overflow, at);
                self.overflow(now, conv, epoch, step, out)
            }
            Timer::Sla { conv, kind, seq } => {
                let deadline = match kind {
                    SlaKindOrd::First => DeadlineKind::First,
                    SlaKindOrd::Next => DeadlineKind::Next,
                    SlaKindOrd::Resolution => DeadlineKind::Resolution,
                };
                self.fired(conv, deadline, at);
                let Some(c) = self.conversations.get(&conv) else {
                    return;
                };
                let breached = match kind {
                    SlaKindOrd::First => {
                        c.episode == seq
                            && c.first_reply_at.is_none()
                            && !matches!(c.state, State::Resolved { .. })
                    }
                    SlaKindOrd::Next => {
                        c.awaiting_seq == seq
                            && c.awaiting_since.is_some()
                            && !matches!(c.state, State::Resolved { .. })
                    }
                    SlaKindOrd::Resolution => {
                        c.episode == seq && !matches!(c.state, State::Resolved { .. })
                    }
                };
                if breached {
                    let sla = match kind {
                        SlaKindOrd::First => SlaKind::FirstResponse,
                        SlaKindOrd::Next => SlaKind::NextResponse,
                        SlaKindOrd::Resolution => SlaKind::Resolution,
                    };
                    let queue = self.queues[c.queue].id.clone();
                    let channel = c.channel.kind;
                    out.push(Output::Event(RoutingEvent::SlaBreached {
                        conversation: conv,
                        queue: queue.clone(),
                        sla,
                    }));
                    out.push(Output::Observe(Observation {
                        kind: ObservationKind::SlaBreach(sla),
                        queue,
                        channel,
                        value: 1.0,
                    }));
                }
            }
            Timer::QueueOpen { queue } => {
                self.queues[queue].open_timer = None;
                self.dirty_meta = true;
                self.queues[queue].open_cache = None;
                if self.queue_open(queue, now) {
                    self.drain_queue(now, queue, out);
                } else if let Some(at) = self.queues[queue]
                    .cfg
                    .hours
                    .as_ref()
                    .and_then(|h| h.next_open(now))
                {
                    self.set_open_timer(queue, Some(at));
                }
            }
            Timer::Expire { conv } => self.expire(now, conv, out),
            Timer::StickyExpiry { key } => self.set_sticky(key, None),
            Timer::Forget { conv } => {
                if self
                    .conversations
                    .get(&conv)
                    .is_some_and(|c| matches!(c.state, State::Resolved { .. }))
                {
                    self.remove_conversation(conv);
                }
            }
        }
    }

    fn overflow(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        epoch: u64,
        step: usize,
        out: &mut Vec<Output>,
    ) {
        let Some(c) = self.conversations.get(&id) else {
            return;
        };
        if c.queue_epoch != epoch || c.next_step != step || c.state != State::Waiting {
            return;
        }
        let _ = epoch;
        let queue = c.queue;
        let entered = c.entered_queue_at;
        let Some(action) = self.queues[queue]
            .cfg
            .overflow
            .get(step)
            .map(|s| s.action.clone())
        else {
            return;
        };
        // (A catch-up runs before the step's own timer fired: that timer goes.)
        self.set_deadline(id, DeadlineKind::Overflow, None);
        if let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) {
            c.next_step = step + 1;
        }
        if let Some(next) = self.queues[queue].cfg.overflow.get(step + 1) {
            let at = entered.plus_secs(next.after_secs);
            self.set_deadline(id, DeadlineKind::Overflow, Some(at));
        }
        let from = self.queues[queue].id.clone();
        match action {
            OverflowAction::RelaxProficiency(by) => {
                self.leave_waiting(id);
                let key = {
                    let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) else {
                        return;
                    };
                    c.relax = c.relax.max(by);
                    c.declined.clear();
                    c.wait_key(self.aging_ms)
                };
                self.queues[queue].waiting.insert((key, id));
                self.relaxed.insert((key, id));
                out.push(Output::Event(RoutingEvent::Escalated {
                    conversation: id,
                    from_queue: from.clone(),
                    to_queue: from,
                    action: format!("relax_proficiency({by})"),
                }));
                if self.queue_open(queue, now) {
                    self.route_conversation(now, id, out);
                }
            }
            OverflowAction::SpillTo(target) => {
                let to = self.queue_index[&target];
                self.leave_waiting(id);
                // A relaxation belongs to the queue that granted it.
                if let Some(c) = touch(&mut self.dirty_convs, &mut self.conversations, id) {
                    c.declined.clear();
                    c.relax = 0;
                }
                out.push(Output::Event(RoutingEvent::Escalated {
                    conversation: id,
                    from_queue: from,
                    to_queue: target,
                    action: "spill_to".into(),
                }));
                self.enter_queue(now, id, to, out);
            }
        }
    }

    // ----- views ---------------------------------------------------------------------------

    /// Every queue with its depth, oldest wait and available agents.
    pub fn queue_views(&self) -> Vec<QueueView> {
        let mut offered = vec![0usize; self.queues.len()];
        let mut assigned = vec![0usize; self.queues.len()];
        for c in self.conversations.values() {
            match c.state {
                State::Offered { .. } => offered[c.queue] += 1,
                State::Assigned { .. } => assigned[c.queue] += 1,
                _ => {}
            }
        }
        self.queues
            .iter()
            .enumerate()
            .map(|(i, q)| QueueView {
                id: q.id.clone(),
                waiting: q.waiting.len(),
                offered: offered[i],
                assigned: assigned[i],
                oldest_arrival: q
                    .waiting
                    .iter()
                    .map(|(_, id)| self.conversations[id].arrival)
                    .min(),
                available_agents: q.available_agents,
            })
            .collect()
    }

    /// Every agent with presence and load, by id.
    pub fn agent_views(&self) -> Vec<AgentView> {
        let mut v: Vec<AgentView> = self
            .agents
            .values()
            .filter(|a| !a.removed)
            .map(|a| AgentView {
                id: a.id.clone(),
                presence: a.presence,
                open: a.open.len(),
                capacity: a.capacity,
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// How much the engine holds.
    pub fn size(&self) -> StateSize {
        StateSize {
            agents: self.agents.0.len(),
            conversations: self.conversations.len(),
            sticky_contacts: self.sticky.len(),
            timers: self.timers.len(),
        }
    }

    /// A conversation's routing state, if known.
    pub fn conversation(&self, id: ConversationId) -> Option<ConversationView> {
        let c = self.conversations.get(&id)?;
        let (state, agent) = match c.state {
            State::Waiting => ("waiting", None),
            State::Offered { agent, .. } => ("offered", Some(agent)),
            State::Assigned { agent } => ("assigned", Some(agent)),
            State::Resolved { .. } => ("resolved", None),
        };
        Some(ConversationView {
            queue: self.queues[c.queue].id.clone(),
            state,
            agent: agent.map(|a| self.agents[a].id.clone()),
            arrival: c.arrival,
            priority: c.priority,
        })
    }

    /// Checks the engine's invariants; `Err` names the first one broken. Used by the property
    /// tests after every step, and cheap enough for a debug endpoint.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut holders: HashMap<ConversationId, AgentIdx> = HashMap::new();
        for i in self.agents.numbers() {
            let a = &self.agents[i];
            if a.open.len() as u64 > u64::from(a.capacity) {
                return Err(format!(
                    "agent {} over capacity: {} > {}",
                    a.id,
                    a.open.len(),
                    a.capacity
                ));
            }
            for (kind, n) in &a.open_by_kind {
                if *n > a.channel_capacity.get(kind).copied().unwrap_or(a.capacity) {
                    return Err(format!("agent {} over {kind} capacity", a.id));
                }
            }
            if (a.removed || a.presence == Presence::Offline) && !a.open.is_empty() {
                return Err(format!("offline agent {} holds conversations", a.id));
            }
            for id in a.open.keys() {
                if let Some(other) = holders.insert(*id, i) {
                    return Err(format!(
                        "conversation {id} held by two agents ({other} and {i})"
                    ));
                }
                let c = self
                    .conversations
                    .get(id)
                    .ok_or_else(|| format!("agent {} holds unknown conversation {id}", a.id))?;
                match c.state {
                    State::Offered { agent, .. } | State::Assigned { agent } if agent == i => {}
                    _ => {
                        return Err(format!(
                            "agent {} holds {id} but its state is {:?}",
                            a.id, c.state
                        ))
                    }
                }
            }
            if a.available() != a.indexed.is_some() {
                return Err(format!("agent {} index out of date", a.id));
            }
            if let Some(entry) = &a.indexed {
                let fresh = self.index_entry(i);
                let in_sets = self.by_idle.contains(&entry.idle)
                    && self.by_load.contains(&entry.load)
                    && self.by_id.contains(&i)
                    && entry.skills.iter().all(|(s, k, x)| {
                        self.by_skill
                            .get(s)
                            .is_some_and(|set| set.contains(&(*k, *x)))
                    });
                if fresh.as_ref() != Some(entry) || !in_sets {
                    return Err(format!("agent {} index keys out of date", a.id));
                }
            }
        }
        let available = self.agents.values().filter(|a| a.available()).count();
        if self.by_idle.len() != available
            || self.by_load.len() != available
            || self.by_id.len() != available
        {
            return Err(format!(
                "indexes hold {}/{}/{} agents, {available} are available",
                self.by_idle.len(),
                self.by_load.len(),
                self.by_id.len()
            ));
        }
        for (key, (a, _)) in &self.sticky {
            if self.agents.get(*a).is_none() {
                return Err(format!("sticky entry {key} names a forgotten agent"));
            }
        }
        for (id, c) in &self.conversations {
            if let Some(a) = c.declined.iter().find(|a| self.agents.get(**a).is_none()) {
                return Err(format!("{id} declined by forgotten agent {a}"));
            }
        }
        let mut waiting = 0;
        for q in &self.queues {
            waiting += q.waiting.len();
        }
        for (id, c) in &self.conversations {
            match c.state {
                State::Waiting => {
                    let key = (c.wait_key(self.aging_ms), *id);
                    if !self.queues[c.queue].waiting.contains(&key) {
                        return Err(format!("waiting conversation {id} is in no queue"));
                    }
                }
                State::Offered { agent, .. } | State::Assigned { agent } => {
                    if holders.get(id) != Some(&agent) {
                        return Err(format!("conversation {id} not held by its agent"));
                    }
                }
                State::Resolved { .. } => {}
            }
        }
        let expected = self
            .conversations
            .values()
            .filter(|c| c.state == State::Waiting)
            .count();
        if waiting != expected {
            return Err(format!(
                "queues hold {waiting} conversations, {expected} are waiting"
            ));
        }
        Ok(())
    }
}

/// `queues` as a bit set over `count` queues.
fn queue_bits(queues: &[QueueIdx], count: usize) -> Vec<u64> {
    let mut bits = vec![0u64; count.div_ceil(64)];
    for q in queues {
        bits[q / 64] |= 1u64 << (q % 64);
    }
    bits
}

/// A conversation to change, recorded as changed (for the state changelog).
fn touch<'a>(
    dirty: &mut BTreeSet<ConversationId>,
    conversations: &'a mut HashMap<ConversationId, Conversation>,
    id: ConversationId,
) -> Option<&'a mut Conversation> {
    dirty.insert(id);
    conversations.get_mut(&id)
}

fn reject(out: &mut Vec<Output>, conversation: Option<ConversationId>, reason: String) {
    out.push(Output::Event(RoutingEvent::Rejected {
        conversation,
        reason,
    }));
}
