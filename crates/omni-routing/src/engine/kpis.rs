//! Per-agent KPIs of the current day (handled, handling time, first response, occupancy, CSAT):
//! kept in the engine so they survive a failover like any other state, read from the agent
//! API, and summed up in one `agent_day` event per agent at the end of each day. Never
//! Prometheus labels: agents come and go, label sets must not.

use chrono::{Days, TimeZone};
use chrono_tz::Tz;
use omni_core::ConversationId;
use serde::{Deserialize, Serialize};

use crate::model::{Presence, Timestamp};
use crate::output::{Output, RoutingEvent};

use super::timers::Timer;
use super::{AgentIdx, Engine};

/// An agent's figures since the start of the day (sums, so that restoring and adding are
/// exact; averages are computed when read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentDay {
    /// Conversations the agent resolved.
    pub handled: u32,
    /// Milliseconds from assignment to resolution, summed over `handled`.
    pub handling_ms: u64,
    /// First replies of a contact the agent gave.
    pub first_replies: u32,
    /// Milliseconds from the customer's first message to those replies, summed.
    pub first_reply_ms: u64,
    /// Milliseconds online or away (staffed).
    pub staffed_ms: u64,
    /// Milliseconds of that holding a conversation or a wrap-up (occupied).
    pub busy_ms: u64,
    /// CSAT scores of conversations the agent handled, summed, and how many.
    pub csat_sum: u32,
    /// How many CSAT scores.
    pub csat_count: u32,
    /// Staffed and busy time are counted up to here.
    pub since: Timestamp,
}

/// An agent's KPIs of the day as the agent API shows them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AgentKpis {
    /// Conversations resolved.
    pub handled: u32,
    /// Average handling time (assignment to resolution), seconds.
    pub aht_secs: Option<f64>,
    /// Average first response time of the contacts they answered first, seconds.
    pub first_response_secs: Option<f64>,
    /// Share of staffed time spent handling or wrapping up.
    pub occupancy: Option<f64>,
    /// Seconds online or away.
    pub staffed_secs: f64,
    /// Average CSAT score of the conversations they handled.
    pub csat: Option<f64>,
    /// How many CSAT scores.
    pub csat_count: u32,
}

impl AgentDay {
    /// The KPIs as of `now`, counting the time since the last change in the state the agent
    /// has been in since (`staffed`, `busy`).
    pub fn at(&self, now: Timestamp, staffed: bool, busy: bool) -> AgentKpis {
        let gap = now.0.saturating_sub(self.since.0);
        let staffed_ms = self.staffed_ms + if staffed { gap } else { 0 };
        let busy_ms = self.busy_ms + if staffed && busy { gap } else { 0 };
        let mean = |sum: u64, n: u32| (n > 0).then(|| sum as f64 / 1000.0 / f64::from(n));
        AgentKpis {
            handled: self.handled,
            aht_secs: mean(self.handling_ms, self.handled),
            first_response_secs: mean(self.first_reply_ms, self.first_replies),
            occupancy: (staffed_ms > 0).then(|| busy_ms as f64 / staffed_ms as f64),
            staffed_secs: staffed_ms as f64 / 1000.0,
            csat: (self.csat_count > 0)
                .then(|| f64::from(self.csat_sum) / f64::from(self.csat_count)),
            csat_count: self.csat_count,
        }
    }

    fn active(&self) -> bool {
        self.staffed_ms > 0 || self.handled > 0 || self.first_replies > 0 || self.csat_count > 0
    }
}

/// The first local midnight after `at` in `tz`.
pub(super) fn next_midnight(tz: &Tz, at: Timestamp) -> Timestamp {
    let ms = i64::try_from(at.0).unwrap_or(i64::MAX);
    let next = tz
        .timestamp_millis_opt(ms)
        .single()
        .and_then(|local| local.date_naive().checked_add_days(Days::new(1)))
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .and_then(|midnight| tz.from_local_datetime(&midnight).earliest())
        .and_then(|t| u64::try_from(t.timestamp_millis()).ok());
    // A time zone without that midnight (never for real zones): a day from now.
    next.map_or(at.plus_secs(24 * 3600), Timestamp)
}

impl Engine {
    /// Counts an agent's staffed and busy time up to `now` (before anything about them
    /// changes; `update_agent` calls it while an input is being handled).
    pub(super) fn accrue(&mut self, a: AgentIdx, now: Timestamp) {
        let Some(agent) = self.agents.get(a) else {
            return;
        };
        let gap = now.0.saturating_sub(agent.day.since.0);
        if gap == 0 {
            return;
        }
        let staffed = !agent.removed && agent.presence != Presence::Offline;
        let busy = staffed && agent.load() > 0;
        let day = &mut self.agents[a].day;
        if staffed {
            day.staffed_ms += gap;
        }
        if busy {
            day.busy_ms += gap;
        }
        day.since = now;
    }

    /// The day of agent `a`, to add to (recorded as changed). Counts do not move the agent in
    /// any index, so this is not an `update_agent`.
    fn day_of(&mut self, a: AgentIdx) -> &mut AgentDay {
        self.changes.agents.insert(a);
        &mut self.agents[a].day
    }

    /// Credits a first reply to an agent.
    pub(super) fn credit_first_reply(&mut self, a: AgentIdx, secs: f64) {
        let day = self.day_of(a);
        day.first_replies += 1;
        day.first_reply_ms += (secs * 1000.0) as u64;
    }

    /// Credits a resolution (and its handling time) to an agent.
    pub(super) fn credit_resolution(&mut self, a: AgentIdx, handling: Timestamp, now: Timestamp) {
        let day = self.day_of(a);
        day.handled += 1;
        day.handling_ms += now.0.saturating_sub(handling.0);
    }

    /// Credits a CSAT score to the agent who handled the conversation, if they are still here.
    pub(super) fn credit_csat(&mut self, id: ConversationId, score: u8) {
        let Some(a) = self.conversations.get(&id).and_then(|c| c.handled_by) else {
            return;
        };
        if self.agents.get(a).is_some() {
            let day = self.day_of(a);
            day.csat_sum += u32::from(score);
            day.csat_count += 1;
        }
    }

    /// Sets (or moves) the end-of-day timer (the tenant record carries it).
    pub(super) fn set_day_end(&mut self, at: Timestamp) {
        if let Some(old) = self.day_end.replace(at) {
            self.timers.remove(&(old, Timer::DayEnd));
        }
        self.schedule(at, Timer::DayEnd);
        self.changes.tenant = true;
    }

    /// The day that ended at `at`: one `agent_day` summary per agent who did anything, then
    /// every agent's figures start again, and the next day's end is set.
    pub(super) fn end_day(&mut self, at: Timestamp, out: &mut Vec<Output>) {
        let day = {
            let ms = i64::try_from(at.0.saturating_sub(1)).unwrap_or(i64::MAX);
            self.kpi_tz
                .timestamp_millis_opt(ms)
                .single()
                .map(|t| t.date_naive().to_string())
                .unwrap_or_default()
        };
        for a in self.agents.numbers() {
            if self.agents[a].removed {
                continue;
            }
            self.accrue(a, at);
            let agent = &self.agents[a];
            if agent.day.active() {
                out.push(Output::Event(RoutingEvent::AgentDay {
                    agent: agent.id.clone(),
                    day: day.clone(),
                    kpis: agent.day.at(at, false, false),
                }));
            }
            self.update_agent(a, |ag| {
                ag.day = AgentDay {
                    since: at,
                    ..AgentDay::default()
                }
            });
        }
        self.day_end = None;
        let next = next_midnight(&self.kpi_tz, at);
        self.set_day_end(next);
    }

    /// Starts the end-of-day clock at the first input.
    pub(super) fn ensure_day_end(&mut self, now: Timestamp) {
        if self.day_end.is_none() {
            let at = next_midnight(&self.kpi_tz, now);
            self.set_day_end(at);
        }
    }
}
