//! The agent index: agents by number, and the ordered indexes a strategy walks.

use omni_core::{ChannelKind, ConversationId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use crate::model::{AgentId, Presence, Timestamp};

use super::{AgentIdx, Engine, QueueIdx, SkillIdx};

/// Ratio scale for load keys: open/capacity in millionths.
pub(super) const RATIO_SCALE: u64 = 1_000_000;

/// Ordering key of an agent in an index: three numbers compared in order, then the agent.
pub(super) type Key = (u64, u64, u64);

/// An agent as routing needs them: profile, what they hold, and their place in the index.
#[derive(Debug, Clone)]
pub(super) struct Agent {
    pub(super) id: AgentId,
    /// Out of every index while a profile changes or the agent is being removed.
    pub(super) removed: bool,
    pub(super) presence: Presence,
    /// Skills and levels, as numbers sorted by skill (binary search).
    pub(super) skills: Vec<(SkillIdx, u8)>,
    pub(super) capacity: u32,
    pub(super) channel_capacity: BTreeMap<ChannelKind, u32>,
    /// Offered and assigned conversations, with when they were taken (for capacity cuts).
    pub(super) open: BTreeMap<ConversationId, Timestamp>,
    /// Resolved conversations whose after-conversation work still holds a place.
    pub(super) wrap_up: BTreeMap<ConversationId, WrapUp>,
    /// `open` and `wrap_up` counted per channel kind, for per-kind capacity.
    pub(super) open_by_kind: BTreeMap<ChannelKind, u32>,
    /// Offers in a row the agent let time out (an accept, a decline, a reply or coming online
    /// resets it); at the tenant's `away_after_missed_offers` they are set away.
    pub(super) missed_offers: u32,
    /// The last assignment or coming online: `longest_idle` orders by it.
    pub(super) idle_since: Timestamp,
    /// Queues whose required skills the agent meets at full proficiency.
    pub(super) queues: Vec<QueueIdx>,
    /// The same queues as a bit set, so most agents who cannot serve a conversation's queue
    /// are skipped in one test while walking an index.
    pub(super) queue_bits: Vec<u64>,
    /// Index entries currently held (so they can be removed before a change).
    pub(super) indexed: Option<IndexEntry>,
    /// The day's figures (`kpis.rs`).
    pub(super) day: super::kpis::AgentDay,
}

/// A place held by after-conversation work on a resolved conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WrapUp {
    /// When it started (the resolution).
    pub(super) since: Timestamp,
    /// When it ends unless the agent says ready first.
    pub(super) until: Timestamp,
    pub(super) kind: ChannelKind,
    /// The conversation's queue (the wrap-up time is measured under it).
    pub(super) queue: QueueIdx,
}

/// Agents by number. Numbers are handed out in creation order and never reused, so every
/// tie between agents (the indexes below order equal keys by number) and the round-robin
/// cursor mean the same thing in a restored engine as in the live one: the number is written
/// in the agent's record (`seq`). A removed agent's number simply disappears from the map.
#[derive(Debug, Clone)]
pub(super) struct Agents {
    map: HashMap<AgentIdx, Agent, BuildHasherDefault<IdxHasher>>,
    /// Numbers by name, for commands (which name agents).
    pub(super) by_name: HashMap<AgentId, AgentIdx>,
    /// The number the next new agent gets (numbers start at 1; 0 marks a record written
    /// before agents were numbered). The tenant record carries it.
    pub(super) next: AgentIdx,
}

impl Agents {
    pub(super) fn new() -> Self {
        Agents {
            map: HashMap::default(),
            by_name: HashMap::new(),
            next: 1,
        }
    }

    pub(super) fn get(&self, a: AgentIdx) -> Option<&Agent> {
        self.map.get(&a)
    }

    pub(super) fn insert(&mut self, a: AgentIdx, agent: Agent) {
        self.map.insert(a, agent);
    }

    pub(super) fn remove(&mut self, a: AgentIdx) -> Option<Agent> {
        self.map.remove(&a)
    }

    /// Every agent number, ascending (creation order).
    pub(super) fn numbers(&self) -> Vec<AgentIdx> {
        let mut v: Vec<AgentIdx> = self.map.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Every agent, in no particular order (for counting only).
    pub(super) fn values(&self) -> impl Iterator<Item = &Agent> {
        self.map.values()
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

impl std::ops::Index<AgentIdx> for Agents {
    type Output = Agent;
    fn index(&self, a: AgentIdx) -> &Agent {
        &self.map[&a]
    }
}

impl std::ops::IndexMut<AgentIdx> for Agents {
    fn index_mut(&mut self, a: AgentIdx) -> &mut Agent {
        self.map
            .get_mut(&a)
            .unwrap_or_else(|| unreachable!("unknown agent number {a}"))
    }
}

/// The agent index: every available agent (online, below total capacity) under the keys the
/// strategies order by, so a decision walks one ordered set instead of scanning agents (see
/// the design note in [`super`]). Entries move when an agent's load, idle time or
/// availability changes ([`Engine::update_agent`]); ties go by agent number.
#[derive(Debug, Clone, Default)]
pub(super) struct AgentIndex {
    /// By idle since, oldest first (`longest_idle`).
    pub(super) by_idle: BTreeSet<(u64, AgentIdx)>,
    /// By load ratio, then idle since (`least_loaded`, and `best_skill` without a skill).
    pub(super) by_load: BTreeSet<(Key, AgentIdx)>,
    /// By number (`round_robin`, whose cursor is a number).
    pub(super) by_id: BTreeSet<AgentIdx>,
    /// Per indexed skill: by proficiency (highest first), then load, then idle (`best_skill`).
    pub(super) by_skill: BTreeMap<SkillIdx, BTreeSet<(Key, AgentIdx)>>,
    /// The skills `by_skill` holds: the primary skills of best-skill queues.
    pub(super) skills: BTreeSet<SkillIdx>,
}

/// A hasher for agent numbers: one multiplication (numbers are not attacker-chosen).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct IdxHasher(u64);

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
pub(super) struct IndexEntry {
    pub(super) idle: (u64, AgentIdx),
    pub(super) load: (Key, AgentIdx),
    pub(super) skills: Vec<(SkillIdx, Key, AgentIdx)>,
}

impl Agent {
    pub(super) fn level(&self, skill: SkillIdx) -> u8 {
        self.skills
            .binary_search_by_key(&skill, |(s, _)| *s)
            .map(|i| self.skills[i].1)
            .unwrap_or(0)
    }

    /// Whether the agent has the queue's skills at full proficiency.
    pub(super) fn serves(&self, queue: QueueIdx) -> bool {
        self.queue_bits
            .get(queue / 64)
            .is_some_and(|w| w & (1u64 << (queue % 64)) != 0)
    }

    /// Places taken: conversations offered or assigned, and wrap-ups.
    pub(super) fn load(&self) -> u64 {
        (self.open.len() + self.wrap_up.len()) as u64
    }

    pub(super) fn available(&self) -> bool {
        !self.removed && self.presence == Presence::Online && self.load() < u64::from(self.capacity)
    }

    pub(super) fn kind_has_room(&self, kind: ChannelKind) -> bool {
        let used = self.open_by_kind.get(&kind).copied().unwrap_or(0);
        let cap = self
            .channel_capacity
            .get(&kind)
            .copied()
            .unwrap_or(self.capacity);
        used < cap
    }

    pub(super) fn ratio(&self) -> u64 {
        if self.capacity == 0 {
            return RATIO_SCALE;
        }
        self.load().min(u64::from(self.capacity)) * RATIO_SCALE / u64::from(self.capacity)
    }
}

impl Engine {
    /// The queues an agent with these (interned, sorted) skills serves at full proficiency:
    /// computed once per profile, so that draining looks only at queues the agent can serve.
    pub(super) fn queues_served(&self, skills: &[(SkillIdx, u8)]) -> Vec<QueueIdx> {
        (0..self.queues.len())
            .filter(|q| {
                self.queues[*q].required.iter().all(|(s, l)| {
                    skills
                        .binary_search_by_key(s, |(x, _)| *x)
                        .is_ok_and(|i| skills[i].1 >= *l)
                })
            })
            .collect()
    }

    /// Applies a change to an agent, keeping every index consistent with it.
    pub(super) fn update_agent(&mut self, a: AgentIdx, change: impl FnOnce(&mut Agent)) {
        if let Some(now) = self.clock {
            self.accrue(a, now);
        }
        let was_available = self.agents[a].available();
        self.changes.agents.insert(a);
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
            self.index.by_idle.remove(&entry.idle);
            entry.idle = (idle, a);
            self.index.by_idle.insert(entry.idle);
        }
        let load = ((ratio, idle, 0), a);
        if entry.load != load {
            self.index.by_load.remove(&entry.load);
            entry.load = load;
            self.index.by_load.insert(load);
        }
        for (skill, key, idx) in &mut entry.skills {
            let moved = (key.0, ratio, idle);
            if *key != moved {
                if let Some(set) = self.index.by_skill.get_mut(skill) {
                    set.remove(&(*key, *idx));
                    set.insert((moved, *idx));
                }
                *key = moved;
            }
        }
        entry
    }

    /// The index entries an agent should have now (`None` when not available).
    pub(super) fn index_entry(&self, a: AgentIdx) -> Option<IndexEntry> {
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
                .filter(|(s, _)| self.index.skills.contains(s))
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
                self.index.by_idle.remove(&o.idle);
                self.index.by_load.remove(&o.load);
                self.index.by_id.remove(&a);
                for (skill, key, idx) in o.skills {
                    if let Some(set) = self.index.by_skill.get_mut(&skill) {
                        set.remove(&(key, idx));
                    }
                }
            }
            (None, Some(n)) => {
                self.index.by_idle.insert(n.idle);
                self.index.by_load.insert(n.load);
                self.index.by_id.insert(a);
                for (skill, key, idx) in &n.skills {
                    self.index
                        .by_skill
                        .entry(*skill)
                        .or_default()
                        .insert((*key, *idx));
                }
            }
            (Some(o), Some(n)) => {
                if o.idle != n.idle {
                    self.index.by_idle.remove(&o.idle);
                    self.index.by_idle.insert(n.idle);
                }
                if o.load != n.load {
                    self.index.by_load.remove(&o.load);
                    self.index.by_load.insert(n.load);
                }
                if o.skills != n.skills {
                    for (skill, key, idx) in o.skills {
                        if let Some(set) = self.index.by_skill.get_mut(&skill) {
                            set.remove(&(key, idx));
                        }
                    }
                    for (skill, key, idx) in &n.skills {
                        self.index
                            .by_skill
                            .entry(*skill)
                            .or_default()
                            .insert((*key, *idx));
                    }
                }
            }
        }
    }
}

/// `queues` as a bit set over `count` queues.
pub(super) fn queue_bits(queues: &[QueueIdx], count: usize) -> Vec<u64> {
    let mut bits = vec![0u64; count.div_ceil(64)];
    for q in queues {
        bits[q / 64] |= 1u64 << (q % 64);
    }
    bits
}
