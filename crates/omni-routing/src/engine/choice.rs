//! Choosing an agent: sticky first, then the queue's strategy walks the agent index; and when
//! capacity frees, the best waiting conversation the agent can take.

use omni_core::ConversationId;

use crate::config::Strategy;
use crate::model::Timestamp;
use crate::output::{Explanation, Output};

use super::agents::{IndexEntry, Key};
use super::conversation::{Conversation, State};
use super::waiting::{ClassRef, WaitKey, Waiting};
use super::{AgentIdx, Engine, QueueIdx, SkillIdx};

/// Which decision an explanation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// The strategy chose the agent for a conversation.
    Chosen,
    /// A freed agent took the best conversation waiting for them.
    CapacityFreed,
}

impl Engine {
    /// The skills a conversation of this class needs: its queue's plus any a rule added.
    pub(super) fn requirement<'a>(
        &'a self,
        class: ClassRef<'a>,
    ) -> impl Iterator<Item = (SkillIdx, u8)> + 'a {
        let relax = class.relax;
        self.queues[class.queue]
            .required
            .iter()
            .chain(class.extra.iter())
            .map(move |(s, l)| (*s, l.saturating_sub(relax).max(1)))
    }

    /// Whether agent `a` could take a waiting conversation of this class (had they not
    /// declined it): every check but the decline list.
    pub(super) fn admits(&self, a: AgentIdx, class: ClassRef<'_>) -> bool {
        if class.relax == 0 && !self.agents.serves(a, class.queue) {
            return false;
        }
        let agent = &self.agents[a];
        agent.available()
            && agent.kind_has_room(class.kind)
            && self.requirement(class).all(|(s, l)| agent.level(s) >= l)
    }

    pub(super) fn can_take(&self, a: AgentIdx, c: &Conversation) -> bool {
        self.admits(a, c.class()) && !c.declined.contains(&a)
    }

    /// The first conversation agent `a` can take in a set of waiting ones split by class (a
    /// queue's, or the relaxed ones), if it comes before `bound` (a wait key from another
    /// set: only the key, not the id, counts across sets). Each class is checked once, then
    /// only the decline lists of its conversations. Classes whose queue is closed are skipped.
    fn first_takeable(
        &self,
        now: Timestamp,
        a: AgentIdx,
        waiting: &Waiting,
        bound: Option<i64>,
    ) -> Option<WaitKey> {
        let mut found: Option<WaitKey> = None;
        for (class, set) in waiting.classes() {
            let before =
                |k: &WaitKey| bound.is_none_or(|b| k.0 < b) && found.is_none_or(|f| *k < f);
            if !set.first().is_some_and(before)
                || !self.queue_open_cached(class.queue, now)
                || !self.admits(a, class.as_ref())
            {
                continue;
            }
            if let Some(k) = set.iter().take_while(|k| before(k)).find(|(_, id)| {
                self.conversations
                    .get(id)
                    .is_some_and(|c| !c.declined.contains(&a))
            }) {
                found = Some(*k);
            }
        }
        found
    }

    pub(super) fn try_sticky(
        &mut self,
        now: Timestamp,
        id: ConversationId,
        out: &mut Vec<Output>,
    ) -> bool {
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
    pub(super) fn route_conversation(
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
        // Nobody available has a skill it needs at its level: skip the walk too.
        if !self
            .requirement(c.class())
            .all(|(s, l)| self.index.someone_has(s, l))
        {
            return false;
        }
        let found = if c.relax == 0 && self.members_cheaper(c.queue) {
            self.best_member(strategy, c)
        } else {
            self.walk_index(strategy, c)
        };
        // Both ways find the same agent (the property tests run with this check on).
        debug_assert!(c.relax > 0 || found == self.best_member(strategy, c));
        debug_assert!(found == self.walk_index(strategy, c));
        let Some(agent) = found else {
            return false;
        };
        let explanation = self.explain(now, strategy, c, agent, Why::Chosen);
        if strategy == Strategy::RoundRobin {
            let queue = c.queue;
            self.queues[queue].rr_last = Some(agent);
            self.changes.queues.insert(queue);
        }
        self.take(now, id, agent, explanation, out);
        true
    }

    /// Whether looking at every agent of the conversation's queue costs less than walking the
    /// global index to the first who can take it (about `available / available in the queue`
    /// steps): true when few of the queue's agents are available among many others. Both
    /// find the same agent, so this decides only the cost.
    fn members_cheaper(&self, queue: QueueIdx) -> bool {
        let members = self.agents.members(queue).len();
        let walk = self.index.by_id.len() / self.queues[queue].available_agents.max(1);
        members.saturating_mul(2) < walk
    }

    /// The agent the strategy's index walk would find (the first in index order who can take
    /// the conversation), found as the least index key among the queue's agents who can.
    /// Only for conversations without relaxed skills (nobody outside the queue qualifies).
    fn best_member(&self, strategy: Strategy, c: &Conversation) -> Option<AgentIdx> {
        let q = &self.queues[c.queue];
        let start = q.rr_last.map_or(0, |l| l + 1);
        let skill = q.primary.filter(|p| self.index.by_skill.contains_key(p));
        // Each agent's key in the index the walk would use, as the walk orders it.
        let key = |a: AgentIdx, e: &IndexEntry| -> Option<Key> {
            match strategy {
                Strategy::LongestIdle => Some(e.idle),
                // Agents from the cursor on first, then from the start.
                Strategy::RoundRobin => Some(Key::new(u8::from(a < start), 0, 0, a)),
                Strategy::BestSkill if skill.is_some() => e
                    .skills
                    .iter()
                    .find(|(s, _)| Some(*s) == skill)
                    .map(|(_, k)| *k),
                Strategy::LeastLoaded | Strategy::BestSkill => Some(e.load),
            }
        };
        self.agents
            .members(c.queue)
            .iter()
            .filter(|a| self.can_take(**a, c))
            .filter_map(|&a| key(a, self.agents[a].indexed.as_ref()?))
            .min()
            .map(Key::agent)
    }

    /// The first agent in the strategy's index order who can take the conversation.
    fn walk_index(&self, strategy: Strategy, c: &Conversation) -> Option<AgentIdx> {
        let q = &self.queues[c.queue];
        match strategy {
            Strategy::LongestIdle => self
                .index
                .by_idle
                .iter()
                .map(|k| k.agent())
                .find(|a| self.can_take(*a, c)),
            Strategy::LeastLoaded => self
                .index
                .by_load
                .iter()
                .map(|k| k.agent())
                .find(|a| self.can_take(*a, c)),
            Strategy::RoundRobin => {
                let start = q.rr_last.map_or(0, |l| l + 1);
                self.index
                    .by_id
                    .range(start..)
                    .chain(self.index.by_id.range(..start))
                    .copied()
                    .find(|a| self.can_take(*a, c))
            }
            Strategy::BestSkill => match q.primary.and_then(|p| self.index.by_skill.get(&p)) {
                Some(index) => index
                    .iter()
                    .map(|k| k.agent())
                    .find(|a| self.can_take(*a, c)),
                None => self
                    .index
                    .by_load
                    .iter()
                    .map(|k| k.agent())
                    .find(|a| self.can_take(*a, c)),
            },
        }
    }

    /// Why agent `a` got conversation `c`, in one sentence written into one string.
    fn explain(
        &self,
        now: Timestamp,
        strategy: Strategy,
        c: &Conversation,
        a: AgentIdx,
        why: Why,
    ) -> Explanation {
        use std::fmt::Write;
        let agent = &self.agents[a];
        let idle = now.0.saturating_sub(agent.idle_since.0) / 1000;
        let (open, cap) = (agent.open.len(), agent.capacity);
        let mut reason = String::with_capacity(160);
        if why == Why::CapacityFreed {
            reason
                .push_str("capacity freed: the longest-waiting conversation this agent can take (");
        }
        // Writing into a String cannot fail.
        let _ = match strategy {
            Strategy::LongestIdle => write!(
                reason,
                "idle longest ({idle}s) among agents who can take it; {open}/{cap} open"
            ),
            Strategy::LeastLoaded => {
                write!(reason, "least loaded ({open}/{cap} open), idle {idle}s")
            }
            Strategy::RoundRobin => write!(reason, "next in turn; {open}/{cap} open"),
            Strategy::BestSkill => {
                let q = &self.queues[c.queue];
                let level = q.primary.map_or(0, |p| agent.level(p));
                let skill = q
                    .primary
                    .map_or("-", |p| self.skills.names[p as usize].0.as_str());
                write!(
                    reason,
                    "highest proficiency in {skill} ({level}/5); {open}/{cap} open, idle {idle}s"
                )
            }
        };
        if c.relax > 0 {
            let _ = write!(reason, "; overflow: proficiency relaxed by {}", c.relax);
        }
        if why == Why::CapacityFreed {
            reason.push(')');
        }
        Explanation::new(strategy, self.queues[c.queue].available_agents, reason)
    }

    /// Gives a freed agent the best waiting conversations they can take, until full.
    pub(super) fn drain_agent(&mut self, now: Timestamp, a: AgentIdx, out: &mut Vec<Output>) {
        loop {
            if !self.agents[a].available() {
                return;
            }
            // The best by wait key across the agent's queues; on equal keys the first queue's.
            let mut best: Option<WaitKey> = None;
            for &q in &self.agents[a].queues {
                let waiting = &self.queues[q].waiting;
                if let Some(found) = self.first_takeable(now, a, waiting, best.map(|b| b.0)) {
                    best = Some(found);
                }
            }
            let relaxed = &self.queues.relaxed;
            if let Some(found) = self.first_takeable(now, a, relaxed, best.map(|b| b.0)) {
                best = Some(found);
            }
            let Some((_, id)) = best else {
                return;
            };
            let c = &self.conversations[&id];
            let strategy = self.queues[c.queue].cfg.strategy;
            let explanation = self.explain(now, strategy, c, a, Why::CapacityFreed);
            self.take(now, id, a, explanation, out);
        }
    }

    /// Routes as many waiting conversations of a queue as agents allow (when it opens).
    pub(super) fn drain_queue(&mut self, now: Timestamp, queue: QueueIdx, out: &mut Vec<Output>) {
        let waiting: Vec<ConversationId> = self.queues[queue]
            .waiting
            .in_order()
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        for id in waiting {
            if self.queues[queue].available_agents == 0
                && self.queues.relaxed.is_empty()
                && self.index.by_id.is_empty()
            {
                break;
            }
            self.route_conversation(now, id, out);
        }
    }
}
