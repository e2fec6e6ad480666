//! The engine's invariants, checked by the property tests after every step.

use omni_core::ChannelKind;
use omni_core::ConversationId;
use std::collections::{BTreeMap, HashMap};

use crate::model::Presence;

use super::conversation::State;
use super::{AgentIdx, Engine};

impl Engine {
    /// Checks the engine's invariants; `Err` names the first one broken. Used by the property
    /// tests after every step, and cheap enough for a debug endpoint.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut holders: HashMap<ConversationId, AgentIdx> = HashMap::new();
        for i in self.agents.numbers() {
            self.check_agent(i, &mut holders)?;
        }
        self.check_index_counts()?;
        self.check_references()?;
        self.check_waiting(&holders)
    }

    /// One agent: within capacity, holding only conversations that name them (recorded in
    /// `holders`, so that no conversation has two agents), indexed exactly when available and
    /// under their current keys.
    fn check_agent(
        &self,
        i: AgentIdx,
        holders: &mut HashMap<ConversationId, AgentIdx>,
    ) -> Result<(), String> {
        let a = &self.agents[i];
        // Wrap-ups may outlast a capacity cut (they end on their own); conversations may not
        // be held beyond capacity, wrap-ups included.
        if !a.open.is_empty() && a.load() > u64::from(a.capacity) {
            return Err(format!(
                "agent {} over capacity: {} open + {} in wrap-up > {}",
                a.id,
                a.open.len(),
                a.wrap_up.len(),
                a.capacity
            ));
        }
        let mut by_kind: BTreeMap<ChannelKind, (u32, u32)> = BTreeMap::new();
        for id in a.open.keys() {
            if let Some(c) = self.conversations.get(id) {
                by_kind.entry(c.channel.kind).or_default().0 += 1;
            }
        }
        for w in a.wrap_up.values() {
            by_kind.entry(w.kind).or_default().1 += 1;
        }
        for (kind, (open, wrap)) in &by_kind {
            if a.open_by_kind.get(kind).copied().unwrap_or(0) != open + wrap {
                return Err(format!("agent {} {kind} count out of date", a.id));
            }
            let cap = a.channel_capacity.get(kind).copied().unwrap_or(a.capacity);
            if *open > 0 && open + wrap > cap {
                return Err(format!("agent {} over {kind} capacity", a.id));
            }
        }
        if !a.wrap_up.is_empty() && (a.removed || a.presence == Presence::Offline) {
            return Err(format!("offline agent {} is in wrap-up", a.id));
        }
        for (id, w) in &a.wrap_up {
            let timer = (
                w.until,
                super::timers::Timer::WrapUpEnd {
                    agent: i,
                    conv: *id,
                },
            );
            if !self.timers.contains(&timer) {
                return Err(format!("agent {} wrap-up of {id} has no timer", a.id));
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
            let in_sets = self.index.by_idle.contains(&entry.idle)
                && self.index.by_load.contains(&entry.load)
                && self.index.by_id.contains(&i)
                && entry.skills.iter().all(|(s, k)| {
                    self.index
                        .by_skill
                        .get(s)
                        .is_some_and(|set| set.contains(k))
                });
            if fresh.as_ref() != Some(entry) || !in_sets {
                return Err(format!("agent {} index keys out of date", a.id));
            }
        }

        Ok(())
    }

    /// The agent index holds every available agent and nobody else, and counts their skills.
    fn check_index_counts(&self) -> Result<(), String> {
        let available = self.agents.values().filter(|a| a.available()).count();
        let mut with_skill: Vec<[u32; 6]> = Vec::new();
        for a in self.agents.values().filter(|a| a.available()) {
            for &(s, l) in &a.skills {
                let s = usize::from(s);
                if with_skill.len() <= s {
                    with_skill.resize(s + 1, [0; 6]);
                }
                for n in &mut with_skill[s][1..=usize::from(l.min(5))] {
                    *n += 1;
                }
            }
        }
        let counted = &self.index.with_skill;
        let padded = |v: &[[u32; 6]], i: usize| v.get(i).copied().unwrap_or([0; 6]);
        if (0..with_skill.len().max(counted.len()))
            .any(|i| padded(&with_skill, i) != padded(counted, i))
        {
            return Err("available agents by skill out of date".into());
        }
        if self.index.by_idle.len() != available
            || self.index.by_load.len() != available
            || self.index.by_id.len() != available
        {
            return Err(format!(
                "indexes hold {}/{}/{} agents, {available} are available",
                self.index.by_idle.len(),
                self.index.by_load.len(),
                self.index.by_id.len()
            ));
        }
        Ok(())
    }

    /// Nothing names a forgotten agent (sticky entries, decline lists).
    fn check_references(&self) -> Result<(), String> {
        for (key, (a, _)) in &self.sticky {
            if self.agents.get(*a).is_none() {
                return Err(format!("sticky entry {key} names a forgotten agent"));
            }
        }
        for (id, c) in &self.conversations {
            if let Some(a) = c.declined.iter().find(|a| self.agents.get(**a).is_none()) {
                return Err(format!("{id} declined by forgotten agent {a}"));
            }
            if let Some(a) = c.handled_by.filter(|a| self.agents.get(*a).is_none()) {
                return Err(format!("{id} handled by forgotten agent {a}"));
            }
        }
        Ok(())
    }

    /// Every waiting conversation is in its queue, every held one with its agent, and the
    /// queues hold nothing else.
    fn check_waiting(&self, holders: &HashMap<ConversationId, AgentIdx>) -> Result<(), String> {
        let mut waiting = 0;
        for q in self.queues.iter() {
            waiting += q.waiting.len();
        }
        for (id, c) in &self.conversations {
            match c.state {
                State::Waiting => {
                    let key = (c.wait_key(self.queues.aging_ms), *id);
                    if !self.queues[c.queue].waiting.contains(c.class(), &key) {
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
