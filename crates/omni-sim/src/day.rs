//! One simulated day: a discrete-event run in virtual time around the real routing engine.
//!
//! Customers arrive (Poisson, at each interval's rate), their first message goes to the engine
//! exactly as the router would give it, and the engine's decisions are acted on: an offer is
//! accepted at once, an assignment starts the handling time, the end of it resolves the
//! conversation; a customer still waiting when their patience runs out leaves (the simulation
//! resolves the waiting conversation, which takes it out of its queue). Agents come online at
//! the start of their shift and go away at its end, finishing what they hold. The engine's own
//! timers (offer timeouts, overflow, SLA, opening hours) fire as ticks at their due time.

use omni_core::{ChannelRef, ConversationId, TenantId};
use omni_routing::{
    AgentId, AgentProfile, Command, Engine, Inbound, Input, Output, Presence, QueueId,
    RoutingEvent, Timestamp,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::profile::Profile;
use crate::recorded::Recorded;
use crate::report::{Report, Tally};
use crate::rng::Rng;

/// What happens at a moment of the day. Simultaneous happenings run in the order they were
/// scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Happening {
    ShiftStarts(usize),
    Arrives(usize),
    /// The recorded day's next customer (an index into its arrivals).
    Recorded(usize),
    /// A recorded agent command (profile, presence), by index.
    AgentCommand(usize),
    /// A waiting customer's patience runs out.
    GivesUp(usize),
    /// An agent finishes handling (the generation tells a stale finish from a live one: a
    /// requeued conversation's handling stops).
    Finishes(usize, u32),
    ShiftEnds(usize),
    /// The engine's next timer is due.
    Tick,
}

/// A customer's conversation as the simulation follows it.
#[derive(Debug)]
struct Customer {
    id: ConversationId,
    arrived: u64,
    interval: usize,
    queue: Option<usize>,
    answered: Option<u64>,
    abandoned: bool,
    done: bool,
    /// Handling time still to go, in ms.
    remaining: u64,
    /// The agent handling it now, and since when.
    agent: Option<(usize, u64)>,
    generation: u32,
}

/// An agent's load and the time accounted so far.
#[derive(Debug)]
struct Agent {
    id: AgentId,
    /// The roster group they belong to (their skills); none for a recorded agent.
    group: Option<usize>,
    capacity: u32,
    load: u32,
    online: bool,
    /// Staffed and busy time are accounted up to here.
    accounted: u64,
}

/// The run's state: the engine, the calendar, and what it has counted.
struct Day<'p> {
    profile: &'p Profile,
    /// The recorded day being replayed, if it is one.
    recorded: Option<&'p Recorded>,
    /// The reported span: its start (ms since the epoch) and number of intervals.
    start_ms: u64,
    intervals: usize,
    engine: Engine,
    rng: Rng,
    tenant: TenantId,
    calendar: BinaryHeap<Reverse<(u64, u64, Happening)>>,
    scheduled: u64,
    next_tick: Option<u64>,
    customers: Vec<Customer>,
    by_id: HashMap<ConversationId, usize>,
    agents: Vec<Agent>,
    agent_by_id: HashMap<AgentId, usize>,
    queue_index: HashMap<QueueId, usize>,
    report: Report,
    open: usize,
}

/// Simulates `profile`'s day and reports it. Deterministic: the same profile (and seed) gives
/// the same report.
pub fn simulate(profile: &Profile) -> Report {
    let mut day = Day::new(profile, None, profile.start_ms(), profile.intervals());
    day.staff();
    for stream in 0..profile.arrivals.len() {
        if let Some(at) = day.next_arrival(stream, profile.start_ms()) {
            day.schedule(at, Happening::Arrives(stream));
        }
    }
    day.run();
    day.report
}

/// Replays a recorded day through `profile`'s routing: its customers arrive when they did,
/// with the channel, language and text they wrote, take the handling time their agent took
/// (or give up when they did, if nobody answered them), and its agents come and go as they
/// did. The profile's arrivals and roster are not used; the intervals start at the first
/// record.
pub fn replay(profile: &Profile, recorded: &Recorded) -> Report {
    let width = profile.interval_ms();
    let start = recorded.first_ms - recorded.first_ms % width;
    let intervals = usize::try_from((recorded.last_ms - start) / width + 1).unwrap_or(0);
    let mut day = Day::new(profile, Some(recorded), start, intervals);
    for (i, arrival) in recorded.arrivals.iter().enumerate() {
        day.schedule(arrival.at, Happening::Recorded(i));
    }
    for (i, (at, _)) in recorded.agents.iter().enumerate() {
        day.schedule(*at, Happening::AgentCommand(i));
    }
    day.run();
    day.report
}

impl<'p> Day<'p> {
    fn new(
        profile: &'p Profile,
        recorded: Option<&'p Recorded>,
        start_ms: u64,
        intervals: usize,
    ) -> Self {
        let engine = Engine::new(profile.routing.clone())
            .unwrap_or_else(|e| unreachable!("a checked profile's routing is valid: {e}"));
        let queues: Vec<String> = profile.routing.queues.keys().map(|q| q.0.clone()).collect();
        let report = Report::new(profile, &queues, start_ms, intervals);
        Self {
            profile,
            recorded,
            start_ms,
            intervals,
            engine,
            rng: Rng::new(profile.seed),
            tenant: TenantId::new("sim").unwrap_or_else(|_| unreachable!("a valid tenant id")),
            calendar: BinaryHeap::new(),
            scheduled: 0,
            next_tick: None,
            customers: Vec::new(),
            by_id: HashMap::new(),
            agents: Vec::new(),
            agent_by_id: HashMap::new(),
            queue_index: profile
                .routing
                .queues
                .keys()
                .enumerate()
                .map(|(i, q)| (q.clone(), i))
                .collect(),
            report,
            open: 0,
        }
    }

    /// Every agent of the roster, with their shift on the calendar.
    fn staff(&mut self) {
        for (g, group) in self.profile.roster.iter().enumerate() {
            let (begin, end) = self.profile.shift_ms(group);
            for n in 1..=group.count {
                let i = self.agents.len();
                let id = AgentId(format!("{}-{n:03}", group.name));
                self.agent_by_id.insert(id.clone(), i);
                self.agents.push(Agent {
                    id,
                    group: Some(g),
                    capacity: group.capacity,
                    load: 0,
                    online: false,
                    accounted: begin,
                });
                self.schedule(begin, Happening::ShiftStarts(i));
                if end != u64::MAX {
                    self.schedule(end, Happening::ShiftEnds(i));
                }
            }
        }
    }

    fn schedule(&mut self, at: u64, what: Happening) {
        self.scheduled += 1;
        self.calendar.push(Reverse((at, self.scheduled, what)));
    }

    fn day_end(&self) -> u64 {
        self.start_ms + self.profile.interval_ms() * self.intervals as u64
    }

    /// The next arrival of `stream` after `from`: Poisson at each interval's rate (memoryless,
    /// so a draw that crosses into the next interval starts again at its boundary).
    fn next_arrival(&mut self, stream: usize, from: u64) -> Option<u64> {
        let (start, width) = (self.profile.start_ms(), self.profile.interval_ms());
        let counts = &self.profile.arrivals[stream].per_interval;
        let mut t = from;
        loop {
            let i = usize::try_from((t - start) / width).ok()?;
            let expected = *counts.get(i)?;
            let boundary = start + width * (i as u64 + 1);
            if expected > 0.0 {
                let mean_gap_ms = width as f64 / expected;
                let next = t + ms(self.rng.exponential(mean_gap_ms) / 1000.0);
                if next < boundary {
                    return Some(next);
                }
            }
            t = boundary;
        }
    }

    fn run(&mut self) {
        let end = self.day_end();
        while let Some(Reverse((now, _, what))) = self.calendar.pop() {
            if now > end && self.open == 0 && !self.arrivals_pending() {
                break;
            }
            match what {
                Happening::ShiftStarts(a) => self.shift_starts(now, a),
                Happening::ShiftEnds(a) => self.set_presence(now, a, Presence::Away),
                Happening::Arrives(stream) => self.arrives(now, stream),
                Happening::Recorded(i) => self.recorded_arrives(now, i),
                Happening::AgentCommand(i) => self.agent_command(now, i),
                Happening::GivesUp(c) => self.gives_up(now, c),
                Happening::Finishes(c, generation) => {
                    if self.customers[c].generation == generation && !self.customers[c].done {
                        let conversation = self.customers[c].id;
                        self.step(now, Input::Command(Command::Resolve { conversation }));
                    }
                }
                Happening::Tick => {
                    if self.next_tick == Some(now) {
                        self.next_tick = None;
                        self.step(now, Input::Tick);
                    }
                }
            }
        }
        for a in 0..self.agents.len() {
            self.account(a, end);
        }
        self.report.unfinished = self
            .customers
            .iter()
            .filter(|c| c.answered.is_none() && !c.abandoned)
            .count() as u64;
    }

    fn arrivals_pending(&self) -> bool {
        self.calendar
            .iter()
            .any(|Reverse((_, _, w))| matches!(w, Happening::Arrives(_) | Happening::Recorded(_)))
    }

    fn shift_starts(&mut self, now: u64, a: usize) {
        let profile = AgentProfile {
            agent: self.agents[a].id.clone(),
            skills: self.agents[a]
                .group
                .map(|g| self.profile.roster[g].skills.clone())
                .unwrap_or_default(),
            capacity: self.agents[a].capacity,
            channel_capacity: Default::default(),
        };
        self.step(now, Input::Command(Command::UpsertAgent(profile)));
        self.set_presence(now, a, Presence::Online);
    }

    fn set_presence(&mut self, now: u64, a: usize, presence: Presence) {
        self.account(a, now);
        self.agents[a].online = presence == Presence::Online;
        let agent = self.agents[a].id.clone();
        self.step(
            now,
            Input::Command(Command::SetPresence { agent, presence }),
        );
    }

    fn arrives(&mut self, now: u64, stream_index: usize) {
        if let Some(next) = self.next_arrival(stream_index, now) {
            self.schedule(next, Happening::Arrives(stream_index));
        }
        let stream = &self.profile.arrivals[stream_index];
        let channel = ChannelRef {
            kind: stream.channel,
            account: stream.account.clone(),
        };
        let contact = format!("customer-{}", self.customers.len());
        let inbound = Inbound {
            conversation: ConversationId::derive(&self.tenant, &channel, &contact, None),
            channel,
            contact_id: contact,
            tags: stream.tags.clone(),
            language: stream.language.clone(),
            text: stream.text.clone(),
        };
        let handling = ms(stream.handling.sample(&mut self.rng));
        let patience = stream
            .patience
            .as_ref()
            .map(|p| ms(p.sample(&mut self.rng)));
        self.admit(now, inbound, handling, patience);
    }

    fn recorded_arrives(&mut self, now: u64, i: usize) {
        let Some(arrival) = self.recorded.and_then(|r| r.arrivals.get(i)) else {
            return;
        };
        if self
            .by_id
            .get(&arrival.inbound.conversation)
            .is_some_and(|c| !self.customers[*c].done)
        {
            // Still open here (this routing answered it later than the recording did).
            return;
        }
        self.admit(
            now,
            arrival.inbound.clone(),
            arrival.handling_ms,
            arrival.patience_ms,
        );
    }

    /// A recorded agent's profile or presence, applied when it happened.
    fn agent_command(&mut self, now: u64, i: usize) {
        let Some((_, command)) = self.recorded.and_then(|r| r.agents.get(i)) else {
            return;
        };
        match command {
            Command::UpsertAgent(profile) => {
                let a = match self.agent_by_id.get(&profile.agent) {
                    Some(&a) => a,
                    None => {
                        let a = self.agents.len();
                        self.agent_by_id.insert(profile.agent.clone(), a);
                        self.agents.push(Agent {
                            id: profile.agent.clone(),
                            group: None,
                            capacity: profile.capacity.max(1),
                            load: 0,
                            online: false,
                            accounted: now,
                        });
                        a
                    }
                };
                self.account(a, now);
                self.agents[a].capacity = profile.capacity.max(1);
                self.step(now, Input::Command(command.clone()));
            }
            Command::SetPresence { agent, presence } => {
                if let Some(&a) = self.agent_by_id.get(agent) {
                    self.set_presence(now, a, *presence);
                }
            }
            Command::RemoveAgent { agent } => {
                if let Some(&a) = self.agent_by_id.get(agent) {
                    self.set_presence(now, a, Presence::Offline);
                }
            }
            _ => {}
        }
    }

    /// A customer's first message reaches the engine; they wait at most `patience` ms.
    fn admit(&mut self, now: u64, inbound: Inbound, handling: u64, patience: Option<u64>) {
        let c = self.customers.len();
        let id = inbound.conversation;
        let interval = usize::try_from((now - self.start_ms) / self.profile.interval_ms())
            .unwrap_or(usize::MAX);
        self.customers.push(Customer {
            id,
            arrived: now,
            interval,
            queue: None,
            answered: None,
            abandoned: false,
            done: false,
            remaining: handling,
            agent: None,
            generation: 0,
        });
        self.by_id.insert(id, c);
        self.open += 1;
        if let Some(patience) = patience {
            self.schedule(now + patience, Happening::GivesUp(c));
        }
        self.step(now, Input::Inbound(inbound));
    }

    fn gives_up(&mut self, now: u64, c: usize) {
        let customer = &mut self.customers[c];
        if customer.answered.is_some() || customer.done {
            return;
        }
        customer.abandoned = true;
        let conversation = customer.id;
        self.step(now, Input::Command(Command::Resolve { conversation }));
    }

    /// Gives the engine one input, acts on what it decided (accepting offers at once), and
    /// puts its next timer on the calendar.
    fn step(&mut self, now: u64, input: Input) {
        let mut inputs = vec![input];
        while let Some(input) = inputs.pop() {
            for output in self.engine.handle(Timestamp(now), &input) {
                if let Output::Event(event) = output {
                    if let Some(accept) = self.on_event(now, event) {
                        inputs.push(accept);
                    }
                }
            }
        }
        if let Some(Timestamp(due)) = self.engine.next_timer() {
            let due = due.max(now);
            if self.next_tick.is_none_or(|t| due < t) {
                self.next_tick = Some(due);
                self.schedule(due, Happening::Tick);
            }
        }
    }

    /// Follows one routing event; an offer is answered with its acceptance.
    fn on_event(&mut self, now: u64, event: RoutingEvent) -> Option<Input> {
        match event {
            RoutingEvent::Queued {
                conversation,
                queue,
                ..
            }
            | RoutingEvent::AfterHours {
                conversation,
                queue,
                ..
            } => {
                let q = self.queue_index.get(&queue).copied();
                if let Some(c) = self.by_id.get(&conversation) {
                    let customer = &mut self.customers[*c];
                    customer.queue = customer.queue.or(q);
                }
            }
            RoutingEvent::Offered {
                conversation,
                agent,
                ..
            } => {
                return Some(Input::Command(Command::Accept {
                    agent,
                    conversation,
                }))
            }
            RoutingEvent::Assigned {
                conversation,
                agent,
                ..
            } => self.assigned(now, conversation, &agent),
            RoutingEvent::Requeued { conversation, .. } => self.released(now, conversation, false),
            RoutingEvent::Resolved { conversation, .. }
            | RoutingEvent::Expired { conversation, .. } => self.released(now, conversation, true),
            RoutingEvent::Rejected { .. } => self.report.rejected += 1,
            _ => {}
        }
        None
    }

    fn assigned(&mut self, now: u64, conversation: ConversationId, agent: &AgentId) {
        let (Some(&c), Some(&a)) = (self.by_id.get(&conversation), self.agent_by_id.get(agent))
        else {
            return;
        };
        self.account(a, now);
        self.agents[a].load += 1;
        let customer = &mut self.customers[c];
        customer.answered.get_or_insert(now);
        customer.agent = Some((a, now));
        customer.generation += 1;
        let (finish, generation) = (now + customer.remaining, customer.generation);
        self.schedule(finish, Happening::Finishes(c, generation));
    }

    /// The conversation left its agent: requeued (handling pauses) or ended.
    fn released(&mut self, now: u64, conversation: ConversationId, ended: bool) {
        let Some(&c) = self.by_id.get(&conversation) else {
            return;
        };
        if let Some((a, since)) = self.customers[c].agent.take() {
            self.account(a, now);
            self.agents[a].load = self.agents[a].load.saturating_sub(1);
            let customer = &mut self.customers[c];
            customer.remaining = customer.remaining.saturating_sub(now - since);
            customer.generation += 1;
        }
        if ended && !self.customers[c].done {
            self.customers[c].done = true;
            self.open -= 1;
            self.tally(c);
        }
    }

    /// Counts an ended conversation in its queue's arrival interval.
    fn tally(&mut self, c: usize) {
        let customer = &self.customers[c];
        let queue = customer.queue.unwrap_or_else(|| {
            self.queue_index
                .get(&self.profile.routing.default_queue)
                .copied()
                .unwrap_or(0)
        });
        let Some(tally) = self.report.tally_mut(queue, customer.interval) else {
            return;
        };
        let wait = customer
            .answered
            .map(|at| (at - customer.arrived) as f64 / 1000.0);
        *tally = tally.plus(&Tally::one(
            wait,
            customer.abandoned,
            self.profile.target.within_secs,
        ));
    }

    /// Accounts agent `a`'s staffed and busy time up to `now`, interval by interval.
    fn account(&mut self, a: usize, now: u64) {
        let agent = &mut self.agents[a];
        let from = agent.accounted;
        if now <= from {
            return;
        }
        agent.accounted = now;
        if !agent.online && agent.load == 0 {
            return;
        }
        let busy = f64::from(agent.load.min(agent.capacity)) / f64::from(agent.capacity);
        self.report.accrue(from, now, busy);
    }
}

/// Seconds to whole milliseconds.
fn ms(secs: f64) -> u64 {
    (secs * 1000.0).round().max(0.0) as u64
}
