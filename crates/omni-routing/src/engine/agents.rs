//! The agent index: agents by number, and the ordered indexes a strategy walks.

use omni_core::{ChannelKind, ConversationId};
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::model::{AgentId, Presence, Timestamp};

use super::{AgentIdx, Engine, QueueIdx, SkillIdx};

/// Ratio scale for load keys: open/capacity in millionths.
pub(super) const RATIO_SCALE: u64 = 1_000_000;

/// An agent's place in an index: up to three numbers compared in order, then the agent
/// number, packed into one `u128` so that a B-tree node holds more keys and a comparison is
/// one integer compare. From the top: a rank (12 bits: 5 − proficiency), a load ratio (20
/// bits: at most [`RATIO_SCALE`]), a time in milliseconds (64 bits), the agent (32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key(u128);

impl Key {
    pub(super) fn new(rank: u8, ratio: u64, time: u64, a: AgentIdx) -> Self {
        Key(u128::from(rank) << 116
            | u128::from(ratio.min(RATIO_SCALE)) << 96
            | u128::from(time) << 32
            | u128::from(a))
    }

    /// The agent whose key this is.
    pub(super) fn agent(self) -> AgentIdx {
        // The low 32 bits are the agent number.
        (self.0 & u128::from(u32::MAX)) as AgentIdx
    }

    /// The same key for another time (rank and ratio kept).
    fn at(self, ratio: u64, time: u64) -> Self {
        let rank = (self.0 >> 116) as u8;
        Key::new(rank, ratio, time, self.agent())
    }
}

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
    /// Queues whose required skills the agent meets at full proficiency (also kept as bits in
    /// [`Agents`], set with [`Agents::set_queues`]).
    pub(super) queues: Vec<QueueIdx>,
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
/// in the agent's record (`seq`). Numbers are dense (handed out one after another), so agents
/// sit in a vector indexed by number: a lookup while walking an index is one bounds check, not
/// a hash probe. A removed agent's slot is simply empty.
#[derive(Debug, Clone)]
pub(super) struct Agents {
    slots: Vec<Option<Agent>>,
    /// How many slots hold an agent.
    count: usize,
    /// The queues each agent serves, as `words` bits per agent number side by side: a walk
    /// of the agent index skips most agents who cannot serve a conversation's queue with one
    /// load from this small array, without touching the agents themselves.
    serves: Vec<u64>,
    /// Words per agent in `serves` (the number of queues, fixed by the configuration, / 64).
    words: usize,
    /// Per queue, the agents who serve it (in no particular order): when few of them are
    /// available, looking at each is cheaper than walking the global index to the first.
    members: Vec<Vec<AgentIdx>>,
    /// Numbers by name, for commands (which name agents).
    pub(super) by_name: HashMap<AgentId, AgentIdx>,
    /// The number the next new agent gets (numbers start at 1; 0 marks a record written
    /// before agents were numbered). The tenant record carries it.
    pub(super) next: AgentIdx,
}

impl Agents {
    /// No agents, for `queues` configured queues.
    pub(super) fn new(queues: usize) -> Self {
        Agents {
            slots: Vec::new(),
            count: 0,
            serves: Vec::new(),
            words: queues.div_ceil(64),
            members: vec![Vec::new(); queues],
            by_name: HashMap::new(),
            next: 1,
        }
    }

    pub(super) fn get(&self, a: AgentIdx) -> Option<&Agent> {
        self.slots.get(a as usize).and_then(Option::as_ref)
    }

    pub(super) fn insert(&mut self, a: AgentIdx, agent: Agent) {
        let i = a as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
            self.serves.resize((i + 1) * self.words, 0);
        }
        match self.slots[i].take() {
            Some(old) => self.leave_members(a, &old.queues),
            None => self.count += 1,
        }
        let queues = agent.queues.clone();
        self.slots[i] = Some(agent);
        self.set_queues(a, queues);
    }

    pub(super) fn remove(&mut self, a: AgentIdx) -> Option<Agent> {
        let agent = self.slots.get_mut(a as usize).and_then(Option::take);
        if let Some(agent) = &agent {
            self.count -= 1;
            self.bits_mut(a).fill(0);
            self.leave_members(a, &agent.queues);
        }
        agent
    }

    fn leave_members(&mut self, a: AgentIdx, queues: &[QueueIdx]) {
        for &q in queues {
            if let Some(list) = self.members.get_mut(q) {
                if let Some(i) = list.iter().position(|x| *x == a) {
                    list.swap_remove(i);
                }
            }
        }
    }

    /// The agents who serve `queue`, in no particular order.
    pub(super) fn members(&self, queue: QueueIdx) -> &[AgentIdx] {
        self.members.get(queue).map_or(&[], Vec::as_slice)
    }

    /// Sets the queues agent `a` serves (their list and their bits).
    pub(super) fn set_queues(&mut self, a: AgentIdx, queues: Vec<QueueIdx>) {
        let old = self
            .get(a)
            .map(|agent| agent.queues.clone())
            .unwrap_or_default();
        self.leave_members(a, &old);
        for &q in &queues {
            if let Some(list) = self.members.get_mut(q) {
                list.push(a);
            }
        }
        let bits = self.bits_mut(a);
        bits.fill(0);
        for q in &queues {
            if let Some(w) = bits.get_mut(q / 64) {
                *w |= 1u64 << (q % 64);
            }
        }
        if let Some(agent) = self.slots.get_mut(a as usize).and_then(Option::as_mut) {
            agent.queues = queues;
        }
    }

    /// Whether agent `a` has the queue's skills at full proficiency.
    pub(super) fn serves(&self, a: AgentIdx, queue: QueueIdx) -> bool {
        self.serves
            .get(a as usize * self.words + queue / 64)
            .is_some_and(|w| w & (1u64 << (queue % 64)) != 0)
    }

    fn bits_mut(&mut self, a: AgentIdx) -> &mut [u64] {
        let start = (a as usize * self.words).min(self.serves.len());
        let end = (start + self.words).min(self.serves.len());
        &mut self.serves[start..end]
    }

    /// Every agent number, ascending (creation order).
    pub(super) fn numbers(&self) -> Vec<AgentIdx> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .filter_map(|(i, _)| AgentIdx::try_from(i).ok())
            .collect()
    }

    /// Every agent, in number order.
    pub(super) fn values(&self) -> impl Iterator<Item = &Agent> {
        self.slots.iter().flatten()
    }

    pub(super) fn len(&self) -> usize {
        self.count
    }
}

impl std::ops::Index<AgentIdx> for Agents {
    type Output = Agent;
    fn index(&self, a: AgentIdx) -> &Agent {
        self.get(a)
            .unwrap_or_else(|| unreachable!("unknown agent number {a}"))
    }
}

impl std::ops::IndexMut<AgentIdx> for Agents {
    fn index_mut(&mut self, a: AgentIdx) -> &mut Agent {
        self.slots
            .get_mut(a as usize)
            .and_then(Option::as_mut)
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
    pub(super) by_idle: BTreeSet<Key>,
    /// By load ratio, then idle since (`least_loaded`, and `best_skill` without a skill).
    pub(super) by_load: BTreeSet<Key>,
    /// By number (`round_robin`, whose cursor is a number).
    pub(super) by_id: BTreeSet<AgentIdx>,
    /// Per indexed skill: by proficiency (highest first), then load, then idle (`best_skill`).
    pub(super) by_skill: BTreeMap<SkillIdx, BTreeSet<Key>>,
    /// The skills `by_skill` holds: the primary skills of best-skill queues.
    pub(super) skills: BTreeSet<SkillIdx>,
    /// Per skill, how many available agents have it at each proficiency or more (index 1-5):
    /// a conversation needing a skill nobody available has (a rule's rare skill, a relaxed
    /// level) is not walked past every available agent in vain.
    pub(super) with_skill: Vec<[u32; 6]>,
}

impl AgentIndex {
    /// Counts an agent with `skill` at `level` in (`available`) or out of the skill counts.
    fn count_skill(&mut self, skill: SkillIdx, level: u8, available: bool) {
        let s = usize::from(skill);
        if self.with_skill.len() <= s {
            self.with_skill.resize(s + 1, [0; 6]);
        }
        for n in &mut self.with_skill[s][1..=usize::from(level.min(5))] {
            *n = if available {
                *n + 1
            } else {
                n.saturating_sub(1)
            };
        }
    }

    /// Whether some available agent has `skill` at `level` or more.
    pub(super) fn someone_has(&self, skill: SkillIdx, level: u8) -> bool {
        self.with_skill
            .get(usize::from(skill))
            .is_some_and(|n| n[usize::from(level.clamp(1, 5))] > 0)
    }
}

/// The keys an available agent holds in the index, so they can be found and moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IndexEntry {
    /// In `by_idle`: (idle since).
    pub(super) idle: Key,
    /// In `by_load`: (load ratio, idle since).
    pub(super) load: Key,
    /// In `by_skill`, per indexed skill: (5 − proficiency, load ratio, idle since).
    pub(super) skills: Vec<(SkillIdx, Key)>,
}

impl Agent {
    pub(super) fn level(&self, skill: SkillIdx) -> u8 {
        self.skills
            .binary_search_by_key(&skill, |(s, _)| *s)
            .map(|i| self.skills[i].1)
            .unwrap_or(0)
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
            for i in 0..self.agents[a].skills.len() {
                let (skill, level) = self.agents[a].skills[i];
                self.index.count_skill(skill, level, now_available);
            }
        }
    }

    /// Moves an available agent's entries to its current idle time and load, touching only the
    /// keys that changed.
    fn rekey(&mut self, a: AgentIdx, mut entry: IndexEntry) -> IndexEntry {
        let agent = &self.agents[a];
        let (idle, ratio) = (agent.idle_since.0, agent.ratio());
        let moved = Key::new(0, 0, idle, a);
        if entry.idle != moved {
            self.index.by_idle.remove(&entry.idle);
            entry.idle = moved;
            self.index.by_idle.insert(moved);
        }
        let load = Key::new(0, ratio, idle, a);
        if entry.load != load {
            self.index.by_load.remove(&entry.load);
            entry.load = load;
            self.index.by_load.insert(load);
        }
        for (skill, key) in &mut entry.skills {
            let moved = key.at(ratio, idle);
            if *key != moved {
                if let Some(set) = self.index.by_skill.get_mut(skill) {
                    set.remove(key);
                    set.insert(moved);
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
            idle: Key::new(0, 0, idle, a),
            load: Key::new(0, ratio, idle, a),
            skills: agent
                .skills
                .iter()
                .filter(|(s, _)| self.index.skills.contains(s))
                .map(|(s, l)| (*s, Key::new(5 - (*l).min(5), ratio, idle, a)))
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
                for (skill, key) in o.skills {
                    if let Some(set) = self.index.by_skill.get_mut(&skill) {
                        set.remove(&key);
                    }
                }
            }
            (None, Some(n)) => {
                self.index.by_idle.insert(n.idle);
                self.index.by_load.insert(n.load);
                self.index.by_id.insert(a);
                for (skill, key) in &n.skills {
                    self.index.by_skill.entry(*skill).or_default().insert(*key);
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
                    for (skill, key) in o.skills {
                        if let Some(set) = self.index.by_skill.get_mut(&skill) {
                            set.remove(&key);
                        }
                    }
                    for (skill, key) in &n.skills {
                        self.index.by_skill.entry(*skill).or_default().insert(*key);
                    }
                }
            }
        }
    }
}
