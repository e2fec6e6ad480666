#![allow(missing_docs)]
// Test helpers outside `#[test]` functions: failing loudly is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]
//! Property tests of the routing engine over random configurations and random input sequences.
//!
//! Every case builds a random [`RoutingConfig`] (1-4 queues, skills, strategies, offer timeouts,
//! SLAs, overflow steps, business hours, rules) and a random team (1-8 agents), then feeds the
//! engine up to 200 random inputs (customer messages, agent and supervisor commands, ticks) with
//! time moving forward 0-120 s per step. After every step it checks:
//!
//! 1. `Engine::check_invariants` holds.
//! 2. Every `Offered` / `Assigned` event names an agent who — per a shadow model of the profiles
//!    and presences this test sent — exists, is online and has the conversation's required
//!    skills (queue skills plus rule-added skills) at the required proficiency, lowered only by
//!    a `relax_proficiency(N)` escalation the engine announced earlier for that conversation.
//!    The queue named by routing events is checked against the shadow model too (rules for new
//!    contacts, escalations, transfers).
//! 3. Determinism: a second engine built from the same config and fed the same `(now, input)`
//!    sequence produces exactly the same outputs, step by step.
//! 4. (Single-queue, skill-less, auto-assign configs without per-channel limits.) A queue drains
//!    when capacity frees: after every step, either nothing waits or every online agent is full.
//!
//! A failure message shows the failing step, its outputs and the whole `(time, input)` log of
//! the (shrunk) case; conversation ids are shown as `conv0`..`conv11`.

mod common;

use std::collections::BTreeMap;

use common::{drain_scenario, scenario, steps, Act, Scenario, World};
use omni_core::ConversationId;
use omni_routing::{
    AgentId, AgentProfile, Command, Engine, Inbound, Input, Output, Presence, QueueId,
    RoutingEvent, Skill, Timestamp, TransferTarget,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

// ----- the harness -----------------------------------------------------------------------------

/// What the test knows about a conversation from what it sent and what the engine announced.
#[derive(Debug, Clone)]
struct ShadowConv {
    queue: QueueId,
    /// Skills added by the rule that chose the queue for this contact.
    extra: BTreeMap<Skill, u8>,
    /// Largest `relax_proficiency(N)` announced since the contact began (or since its last
    /// transfer to a queue, which starts over at full proficiency).
    relax: u8,
    /// Resolved (and not reopened or started again since).
    resolved: bool,
    /// An agent was assigned in this contact (it can no longer be abandoned).
    assigned: bool,
}

struct Harness {
    scenario: Scenario,
    engine: Engine,
    /// Fed the same `(now, input)` sequence: must give the same outputs.
    replay: Engine,
    now: Timestamp,
    log: Vec<(Timestamp, Input)>,
    world: World,
    /// Shadow model: agents as this test created them (removed agents are absent).
    agents: BTreeMap<AgentId, (AgentProfile, Presence)>,
    convs: BTreeMap<ConversationId, ShadowConv>,
    /// Check property 4 after every step.
    check_drain: bool,
}

fn parse_relax(action: &str) -> Option<u8> {
    action
        .strip_prefix("relax_proficiency(")?
        .strip_suffix(')')?
        .parse()
        .ok()
}

impl Harness {
    fn new(scenario: Scenario, check_drain: bool) -> Self {
        let world = World::new(&scenario);
        let engine = Engine::new(scenario.config.clone()).expect("generated config is valid");
        let replay = Engine::new(scenario.config.clone()).expect("generated config is valid");
        Self {
            now: scenario.start,
            scenario,
            engine,
            replay,
            log: Vec::new(),
            world,
            agents: BTreeMap::new(),
            convs: BTreeMap::new(),
            check_drain,
        }
    }

    fn run(mut self, steps: &[(u64, Act)]) -> Result<(), TestCaseError> {
        for input in World::team_inputs(&self.scenario) {
            self.step(input)?;
        }
        for (dt, act) in steps {
            self.now = self.now.plus_secs(*dt);
            let input = self.world.bind(act, &self.engine, &mut self.now);
            self.step(input)?;
        }
        Ok(())
    }

    fn step(&mut self, input: Input) -> Result<(), TestCaseError> {
        let now = self.now;
        let out = self.engine.handle(now, &input);
        let again = self.replay.handle(now, &input);
        self.log.push((now, input));
        let step = self.log.len() - 1;

        // 3. Determinism.
        if out != again {
            return Err(self.fail(
                step,
                &out,
                &format!(
                    "replay gave different outputs:\n{}",
                    self.render_outputs(&again)
                ),
            ));
        }
        // 1. Invariants.
        if let Err(e) = self.engine.check_invariants() {
            return Err(self.fail(step, &out, &format!("invariant broken: {e}")));
        }
        // 2. Offers and assignments go to online agents with the skills.
        if let Err(e) = self.check_events(step, &out) {
            return Err(self.fail(step, &out, &e));
        }
        if let Err(e) = self.check_views() {
            return Err(self.fail(step, &out, &e));
        }
        // 4. Queues drain when capacity frees.
        if self.check_drain {
            if let Err(e) = self.check_drained() {
                return Err(self.fail(step, &out, &e));
            }
        }
        Ok(())
    }

    /// Updates the shadow model from the step's input and outputs, checking every offer and
    /// assignment on the way (in output order: a relaxation precedes the offer it allows).
    fn check_events(&mut self, step: usize, out: &[Output]) -> Result<(), String> {
        let input = self.log[step].1.clone();
        let rejected = out
            .iter()
            .any(|o| matches!(o, Output::Event(RoutingEvent::Rejected { .. })));
        // Agent changes apply before anything the step routes.
        if let Input::Command(cmd) = &input {
            if !rejected {
                self.apply_agent_change(cmd)?;
            }
        }
        for o in out {
            let Output::Event(ev) = o else { continue };
            self.check_event(&input, ev)?;
        }
        Ok(())
    }

    /// Mirrors an accepted agent command in the shadow roster.
    fn apply_agent_change(&mut self, cmd: &Command) -> Result<(), String> {
        match cmd {
            Command::UpsertAgent(p) => {
                let presence = self
                    .agents
                    .get(&p.agent)
                    .map_or(Presence::Offline, |(_, pr)| *pr);
                self.agents.insert(p.agent.clone(), (p.clone(), presence));
            }
            Command::SetPresence { agent, presence } => {
                let (_, pr) = self
                    .agents
                    .get_mut(agent)
                    .ok_or_else(|| format!("presence of unknown agent {agent} accepted"))?;
                *pr = *presence;
            }
            Command::RemoveAgent { agent } => {
                self.agents
                    .remove(agent)
                    .ok_or_else(|| format!("removal of unknown agent {agent} accepted"))?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Checks one event against the shadow model and applies it there.
    fn check_event(&mut self, input: &Input, ev: &RoutingEvent) -> Result<(), String> {
        match ev {
            RoutingEvent::Queued {
                conversation,
                queue,
                ..
            } => self.on_queued(input, conversation, queue)?,
            RoutingEvent::Escalated {
                conversation,
                from_queue,
                to_queue,
                action,
            } => {
                let c = self.shadow(conversation)?;
                if c.queue != *from_queue {
                    return Err(format!(
                        "escalated from {from_queue}, but the conversation is in {}",
                        c.queue
                    ));
                }
                c.queue = to_queue.clone();
                if let Some(n) = parse_relax(action) {
                    c.relax = c.relax.max(n);
                }
            }
            RoutingEvent::Requeued {
                conversation,
                queue,
                ..
            } => self.on_requeued(input, conversation, queue)?,
            RoutingEvent::Resolved {
                conversation,
                queue,
                ..
            } => {
                let c = self.shadow(conversation)?;
                if c.queue != *queue {
                    return Err(format!(
                        "resolved in {queue}, but the conversation is in {}",
                        c.queue
                    ));
                }
                c.relax = 0;
                c.resolved = true;
            }
            RoutingEvent::Expired {
                conversation,
                queue,
                ..
            } => {
                let c = self.shadow(conversation)?;
                if c.queue != *queue || c.resolved {
                    return Err(format!(
                        "expired in {queue}, but the conversation is in {} (resolved: {})",
                        c.queue, c.resolved
                    ));
                }
                self.convs.remove(conversation);
            }
            RoutingEvent::Abandoned { .. }
            | RoutingEvent::CsatSurvey { .. }
            | RoutingEvent::CsatAnswered { .. }
            | RoutingEvent::SlaAtRisk { .. }
            | RoutingEvent::AgentAway { .. } => self.check_work_event(ev)?,
            RoutingEvent::Reopened { conversation } => self.shadow(conversation)?.resolved = false,
            RoutingEvent::Offered {
                conversation,
                agent,
                queue,
                ..
            } => self.check_fit(*conversation, agent, queue)?,
            RoutingEvent::Assigned {
                conversation,
                agent,
                queue,
                ..
            } => {
                self.check_fit(*conversation, agent, queue)?;
                self.shadow(conversation)?.assigned = true;
            }
            _ => {}
        }
        Ok(())
    }

    /// Checks an abandonment, a survey, an at-risk warning or an agent set away against the
    /// shadow model and applies it there.
    fn check_work_event(&mut self, ev: &RoutingEvent) -> Result<(), String> {
        match ev {
            RoutingEvent::Abandoned {
                conversation,
                queue,
                ..
            } => {
                let c = self.shadow(conversation)?;
                if c.queue != *queue || c.resolved || c.assigned {
                    return Err(format!(
                        "abandoned in {queue}, but the conversation is in {} (resolved: {}, \
                     assigned: {})",
                        c.queue, c.resolved, c.assigned
                    ));
                }
                self.convs.remove(conversation);
            }
            RoutingEvent::CsatSurvey { conversation, .. }
            | RoutingEvent::CsatAnswered { conversation, .. } => {
                let c = self.shadow(conversation)?;
                if !c.resolved || !c.assigned {
                    return Err(format!(
                        "survey event for a conversation not resolved by an agent (resolved: \
                     {}, assigned: {})",
                        c.resolved, c.assigned
                    ));
                }
            }
            RoutingEvent::SlaAtRisk { conversation, .. } => {
                let c = self.shadow(conversation)?;
                if c.resolved {
                    return Err("a resolved conversation's SLA is at risk".into());
                }
            }
            RoutingEvent::AgentAway { agent, .. } => {
                let (_, presence) = self
                    .agents
                    .get_mut(agent)
                    .ok_or_else(|| format!("unknown agent {agent} set away"))?;
                if *presence != Presence::Online {
                    return Err(format!("{agent} set away while {}", presence.as_str()));
                }
                *presence = Presence::Away;
            }
            _ => {}
        }
        Ok(())
    }

    /// A new contact is queued where the rules choose, for the message that came in.
    fn on_queued(
        &mut self,
        input: &Input,
        conversation: &ConversationId,
        queue: &QueueId,
    ) -> Result<(), String> {
        let Input::Inbound(msg) = input else {
            return Err("`queued` for an input other than a message".into());
        };
        if msg.conversation != *conversation {
            return Err("`queued` for another conversation than the message's".into());
        }
        let (expected, extra) = self.choose_queue(msg);
        if *queue != expected {
            return Err(format!(
                "new contact queued in {queue}, but the rules choose {expected}"
            ));
        }
        self.convs.insert(
            *conversation,
            ShadowConv {
                queue: expected,
                extra,
                relax: 0,
                resolved: false,
                assigned: false,
            },
        );
        Ok(())
    }

    /// A requeue either follows a transfer to that queue or keeps the conversation where it is.
    fn on_requeued(
        &mut self,
        input: &Input,
        conversation: &ConversationId,
        queue: &QueueId,
    ) -> Result<(), String> {
        let transferred = matches!(
            input,
            Input::Command(Command::Transfer { conversation: c, to: TransferTarget::Queue(q) })
                if c == conversation && q == queue
        );
        let c = self.shadow(conversation)?;
        if transferred {
            c.queue = queue.clone();
            c.relax = 0;
        } else if c.queue != *queue {
            return Err(format!(
                "requeued to {queue}, but the conversation is in {}",
                c.queue
            ));
        }
        Ok(())
    }

    fn shadow(&mut self, id: &ConversationId) -> Result<&mut ShadowConv, String> {
        self.convs
            .get_mut(id)
            .ok_or_else(|| format!("event for {id}, never queued"))
    }

    /// The rules as documented: the first rule whose every condition holds, else the default.
    fn choose_queue(&self, msg: &Inbound) -> (QueueId, BTreeMap<Skill, u8>) {
        let text = msg.text.to_lowercase();
        for rule in &self.scenario.config.rules {
            let w = &rule.when;
            let ok = w.channel.is_none_or(|k| k == msg.channel.kind)
                && w.account.as_ref().is_none_or(|a| *a == msg.channel.account)
                && (w.keywords.is_empty()
                    || w.keywords.iter().any(|k| text.contains(&k.to_lowercase())))
                && (w.tags.is_empty() || w.tags.iter().any(|t| msg.tags.contains(t)))
                && w.language.is_none();
            if ok {
                return (rule.queue.clone(), rule.add_skills.clone());
            }
        }
        (self.scenario.config.default_queue.clone(), BTreeMap::new())
    }

    /// Property 2 for one offer or assignment.
    fn check_fit(
        &self,
        id: ConversationId,
        agent: &AgentId,
        queue: &QueueId,
    ) -> Result<(), String> {
        let c = self
            .convs
            .get(&id)
            .ok_or_else(|| format!("{id} routed but never queued"))?;
        if c.queue != *queue {
            return Err(format!(
                "routed from {queue}, but the conversation is in {}",
                c.queue
            ));
        }
        let (profile, presence) = self
            .agents
            .get(agent)
            .ok_or_else(|| format!("routed to {agent}, who does not exist (or was removed)"))?;
        if *presence != Presence::Online {
            return Err(format!("routed to {agent}, who is {}", presence.as_str()));
        }
        let required = &self.scenario.config.queues[&c.queue].skills;
        for (skill, level) in required.iter().chain(c.extra.iter()) {
            let need = level.saturating_sub(c.relax).max(1);
            let has = profile.skills.get(skill).copied().unwrap_or(0);
            if has < need {
                return Err(format!(
                    "routed to {agent} with {} {has}, but {} needs {need} \
                     (required {level}, relaxed by {}; queue skills {:?}, rule skills {:?})",
                    skill.0, c.queue, c.relax, required, c.extra
                ));
            }
        }
        Ok(())
    }

    /// The engine's agents are the shadow's, with the same presences; every open conversation
    /// is in the queue the shadow expects, waiting or held by an agent who exists and is not
    /// offline.
    fn check_views(&self) -> Result<(), String> {
        let views: Vec<(AgentId, Presence)> = self
            .engine
            .agent_views()
            .into_iter()
            .map(|v| (v.id, v.presence))
            .collect();
        let shadow: Vec<(AgentId, Presence)> = self
            .agents
            .iter()
            .map(|(id, (_, p))| (id.clone(), *p))
            .collect();
        if views != shadow {
            return Err(format!(
                "agent views {views:?} differ from the agents sent {shadow:?}"
            ));
        }
        for (i, id) in self.world.conv_ids.iter().enumerate() {
            let Some(c) = self.convs.get(id).filter(|c| !c.resolved) else {
                continue;
            };
            let v = self
                .engine
                .conversation(*id)
                .ok_or_else(|| format!("open conversation conv{i} is lost"))?;
            if v.queue != c.queue {
                return Err(format!("conv{i} is in {}, expected {}", v.queue, c.queue));
            }
            match (v.state, &v.agent) {
                ("waiting", None) => {}
                ("offered" | "assigned", Some(agent)) => match self.agents.get(agent) {
                    Some((_, Presence::Online)) => {}
                    Some((_, Presence::Away)) if v.state == "assigned" => {}
                    Some((_, p)) => {
                        return Err(format!(
                            "conv{i} is {} to {agent}, who is {}",
                            v.state,
                            p.as_str()
                        ))
                    }
                    None => {
                        return Err(format!(
                            "conv{i} is {} to {agent}, who was removed",
                            v.state
                        ))
                    }
                },
                (state, agent) => {
                    return Err(format!(
                        "open conversation conv{i} is {state} (agent {agent:?})"
                    ))
                }
            }
        }
        Ok(())
    }

    /// Property 4 (conservative): nothing waits while an online agent has room.
    fn check_drained(&self) -> Result<(), String> {
        let waiting: usize = self.engine.queue_views().iter().map(|q| q.waiting).sum();
        if waiting == 0 {
            return Ok(());
        }
        for a in self.engine.agent_views() {
            if a.presence == Presence::Online && (a.open as u64) < u64::from(a.capacity) {
                return Err(format!(
                    "{waiting} conversation(s) waiting while {} is online with {}/{} open",
                    a.id, a.open, a.capacity
                ));
            }
        }
        Ok(())
    }

    // ----- failure reports ---------------------------------------------------------------------

    fn names(&self, text: String) -> String {
        let mut text = text;
        for (i, id) in self.world.conv_ids.iter().enumerate() {
            text = text
                .replace(&format!("ConversationId({id})"), &format!("conv{i}"))
                .replace(&id.to_string(), &format!("conv{i}"));
        }
        text
    }

    fn render_outputs(&self, out: &[Output]) -> String {
        out.iter()
            .map(|o| self.names(format!("    {o:?}")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn fail(&self, step: usize, out: &[Output], what: &str) -> TestCaseError {
        let start = self.scenario.start.0;
        let log = self
            .log
            .iter()
            .enumerate()
            .map(|(i, (t, input))| {
                self.names(format!(
                    "  #{i:<3} t=+{}s {input:?}",
                    t.0.saturating_sub(start) / 1000
                ))
            })
            .collect::<Vec<_>>()
            .join("\n");
        let convs = self
            .world
            .channels
            .iter()
            .enumerate()
            .map(|(i, ch)| format!("conv{i}={}", ch.kind.as_str()))
            .collect::<Vec<_>>()
            .join(" ");
        TestCaseError::fail(format!(
            "step #{step}: {what}\noutputs of step #{step}:\n{}\nconfig: {:?}\nstart: {} ms\n\
             conversations: {convs}\ninputs:\n{log}",
            self.render_outputs(out),
            self.scenario.config,
            self.scenario.start.0,
        ))
    }
}

/// `cases` cases, or `PROPTEST_CASES` from the environment for a deeper local run
/// (`PROPTEST_CASES=20000 cargo test -p omni-routing --test properties`).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // No regression files: this suite must not write into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Properties 1-3 over random configurations and input sequences.
    #[test]
    fn routing_keeps_invariants_skills_and_determinism(
        scenario in scenario(),
        steps in steps(true),
    ) {
        Harness::new(scenario, false).run(&steps)?;
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Property 4 (with 1-3): in a single skill-less auto-assign queue without per-channel
    /// limits, nothing waits while an online agent has free capacity.
    #[test]
    fn single_queue_drains_when_capacity_frees(
        scenario in drain_scenario(),
        steps in steps(false),
    ) {
        Harness::new(scenario, true).run(&steps)?;
    }
}
