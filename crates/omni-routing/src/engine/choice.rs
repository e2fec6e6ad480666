//! Choosing an agent: sticky first, then the queue's strategy walks the agent index; and when
//! capacity frees, the best waiting conversation the agent can take.

use omni_core::ConversationId;

use crate::config::Strategy;
use crate::model::Timestamp;
use crate::output::{Explanation, Output};

use super::conversation::{Conversation, State};
use super::{AgentIdx, Engine, QueueIdx, SkillIdx};

/// How many waiting conversations of one queue are examined for one agent.
pub(super) const SCAN_LIMIT: usize = 64;

impl Engine {
    /// The skills a conversation needs: its queue's plus any a rule added.
    pub(super) fn requirement<'a>(
        &'a self,
        c: &'a Conversation,
    ) -> impl Iterator<Item = (SkillIdx, u8)> + 'a {
        let relax = c.relax;
        self.queues[c.queue]
            .required
            .iter()
            .chain(c.extra_skills.iter())
            .map(move |(s, l)| (*s, l.saturating_sub(relax).max(1)))
    }

    pub(super) fn can_take(&self, a: AgentIdx, c: &Conversation) -> bool {
        let agent = &self.agents[a];
        if c.relax == 0 && !agent.serves(c.queue) {
            return false;
        }
        agent.available()
            && agent.kind_has_room(c.channel.kind)
            && !c.declined.contains(&a)
            && self.requirement(c).all(|(s, l)| agent.level(s) >= l)
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
        let found = match strategy {
            Strategy::LongestIdle => self
                .index
                .by_idle
                .iter()
                .map(|(_, a)| *a)
                .find(|a| self.can_take(*a, c)),
            Strategy::LeastLoaded => self
                .index
                .by_load
                .iter()
                .map(|(_, a)| *a)
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
                Some(index) => index.iter().map(|(_, a)| *a).find(|a| self.can_take(*a, c)),
                None => self
                    .index
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
            self.changes.queues.insert(queue);
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
                    .map_or("-", |p| self.skills.names[p as usize].0.as_str());
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

    /// Gives a freed agent the best waiting conversations they can take, until full.
    pub(super) fn drain_agent(&mut self, now: Timestamp, a: AgentIdx, out: &mut Vec<Output>) {
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
            for &(key, id) in self.queues.relaxed.iter().take(SCAN_LIMIT) {
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

    /// Routes as many waiting conversations of a queue as agents allow (when it opens).
    pub(super) fn drain_queue(&mut self, now: Timestamp, queue: QueueIdx, out: &mut Vec<Output>) {
        let waiting: Vec<ConversationId> = self.queues[queue]
            .waiting
            .iter()
            .map(|(_, id)| *id)
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
