//! Routing configuration: queues, the rules that choose a queue, and tenant-wide settings.
//! Deserialized from the operator's config, then [`RoutingConfig::validate`]d once; the engine
//! only ever sees a valid configuration.

use omni_core::ChannelKind;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

use crate::hours::BusinessHours;
use crate::model::{QueueId, Skill};
use crate::output::SlaKind;

/// Why a routing configuration was refused; names the offending key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid routing config {key}: {reason}")]
pub struct ConfigError {
    /// The key, e.g. `queues.billing.overflow[0].spill_to`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

fn err(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// How a queue picks among the agents who could take a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The agent whose last assignment (or log-in) is oldest.
    LongestIdle,
    /// The lowest open/capacity ratio; ties to the longest idle, so the first to log in is not
    /// flooded.
    LeastLoaded,
    /// Agents in turn, by id.
    RoundRobin,
    /// The highest proficiency in the required skills; ties to least loaded, then longest idle.
    BestSkill,
}

impl Strategy {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::LongestIdle => "longest_idle",
            Strategy::LeastLoaded => "least_loaded",
            Strategy::RoundRobin => "round_robin",
            Strategy::BestSkill => "best_skill",
        }
    }
}

/// Service-level targets of a queue, in seconds. A breach emits an event and a metric; the
/// targets should also be histogram bucket bounds so "% within target" is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sla {
    /// Time from the customer's first message to the first agent reply.
    pub first_response_secs: Option<u64>,
    /// Time from any later unanswered customer message to the next agent reply.
    pub next_response_secs: Option<u64>,
    /// Time from the first message to resolution.
    pub resolution_secs: Option<u64>,
    /// Warn (a `sla_at_risk` event and metric) when this share of a target, in percent
    /// (1-99), has passed without it being met: a supervisor can still act.
    pub at_risk_percent: Option<u8>,
    /// Count targets in the queue's opening hours only: the clock stops while the queue is
    /// closed (an e-mail at 17:25 with a 1 h target is due at 08:35 the next working day), and
    /// the first-response and response times are measured the same way. `true` for every
    /// target, or a list of them (`["first_response", "next_response"]`, leaving resolution on
    /// the wall clock). Needs `hours`.
    pub business_hours_only: BusinessHoursOnly,
}

/// Which service-level targets count opening hours only ([`Sla::business_hours_only`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(from = "RawBusinessHoursOnly")]
pub struct BusinessHoursOnly {
    /// The first-response target (and the first-response time measured).
    pub first_response: bool,
    /// The next-response target (and the response times measured).
    pub next_response: bool,
    /// The resolution target.
    pub resolution: bool,
}

impl BusinessHoursOnly {
    /// Every target, or none.
    pub fn all(on: bool) -> Self {
        Self {
            first_response: on,
            next_response: on,
            resolution: on,
        }
    }

    /// Whether target `kind` counts opening hours only.
    pub fn covers(self, kind: SlaKind) -> bool {
        match kind {
            SlaKind::FirstResponse => self.first_response,
            SlaKind::NextResponse => self.next_response,
            SlaKind::Resolution => self.resolution,
        }
    }

    /// Whether any target does.
    pub fn any(self) -> bool {
        self.first_response || self.next_response || self.resolution
    }
}

/// `business_hours_only` as written: `true`/`false`, or a list of targets.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawBusinessHoursOnly {
    All(bool),
    Some(Vec<SlaKind>),
}

impl From<RawBusinessHoursOnly> for BusinessHoursOnly {
    fn from(raw: RawBusinessHoursOnly) -> Self {
        match raw {
            RawBusinessHoursOnly::All(on) => Self::all(on),
            RawBusinessHoursOnly::Some(kinds) => Self {
                first_response: kinds.contains(&SlaKind::FirstResponse),
                next_response: kinds.contains(&SlaKind::NextResponse),
                resolution: kinds.contains(&SlaKind::Resolution),
            },
        }
    }
}

/// What an overflow step does once a conversation has waited long enough.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OverflowAction {
    /// Accept agents with this much less proficiency in the required skills (never below 1).
    RelaxProficiency(u8),
    /// Move the conversation to another queue, keeping its arrival time.
    SpillTo(QueueId),
}

/// One overflow step: after `after_secs` of waiting in this queue, apply `action`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverflowStep {
    /// Seconds of waiting (since arrival) before the step applies.
    pub after_secs: u64,
    /// What to do.
    pub action: OverflowAction,
}

/// What happens to a conversation that arrives while its queue is closed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AfterHours {
    /// Wait in the queue until it opens (an `after_hours` event lets a bot tell the customer).
    #[default]
    Wait,
    /// Go to another queue (e.g. a 24/7 team).
    SpillTo(QueueId),
}

/// A queue: who may serve it, how agents are chosen, and its service levels.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Required skills with minimum proficiency (1–5).
    #[serde(default)]
    pub skills: BTreeMap<Skill, u8>,
    /// Base priority: higher is served first. Conversations age: every `aging_step_secs` of
    /// waiting is worth one priority point.
    #[serde(default)]
    pub priority: i32,
    /// How an agent is chosen.
    #[serde(default = "default_strategy")]
    pub strategy: Strategy,
    /// Offer to an agent, who accepts or declines within this time; `None` assigns directly.
    #[serde(default)]
    pub offer_timeout_secs: Option<u64>,
    /// Service-level targets.
    #[serde(default)]
    pub sla: Sla,
    /// Overflow steps, in order of `after_secs`.
    #[serde(default)]
    pub overflow: Vec<OverflowStep>,
    /// Opening hours; `None` means always open.
    #[serde(default)]
    pub hours: Option<BusinessHours>,
    /// What happens outside the hours.
    #[serde(default)]
    pub after_hours: AfterHours,
    /// After-conversation work: a resolved conversation keeps holding its agent's place for
    /// this long (or until the agent says `ready`), so wrap-up is not mistaken for free
    /// capacity. `None`: capacity frees at resolution.
    #[serde(default)]
    pub wrap_up_secs: Option<u64>,
    /// A customer not assigned an agent within this long of their first message has stopped
    /// waiting: the conversation ends as abandoned and frees its place. `None`: never.
    #[serde(default)]
    pub abandon_after_secs: Option<u64>,
    /// A waiting conversation that every eligible agent declined (or let time out) is offered
    /// to them again this long after the last refusal, instead of waiting for an agent who has
    /// not refused it yet (overflow steps still apply meanwhile).
    #[serde(default = "default_declined_retry")]
    pub declined_retry_secs: u64,
    /// A one-question satisfaction survey sent to the customer on their own channel when an
    /// agent resolves their conversation. `None`: no survey.
    #[serde(default)]
    pub csat_survey: Option<CsatSurvey>,
}

/// A queue's CSAT survey: asked once per resolution of a conversation an agent handled (never
/// after abandonment); the customer's answer (a score 1-5 as the first line of their next
/// message, within `answer_within_secs`) becomes the conversation's CSAT score instead of
/// reopening it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsatSurvey {
    /// The channel kinds that get it; empty: every channel.
    #[serde(default)]
    pub channels: Vec<ChannelKind>,
    /// The question, sent as written: say how to answer ("Reply with a number from 1 to 5").
    /// The live chat widget adds stars and Messenger quick replies 1-5.
    pub question: String,
    /// How long after the resolution an answer counts.
    #[serde(default = "default_survey_window")]
    pub answer_within_secs: u64,
}

impl CsatSurvey {
    /// Whether a conversation on `kind` gets the survey.
    pub fn covers(&self, kind: ChannelKind) -> bool {
        self.channels.is_empty() || self.channels.contains(&kind)
    }
}

fn default_survey_window() -> u64 {
    24 * 3600
}

fn default_strategy() -> Strategy {
    Strategy::LeastLoaded
}

fn default_declined_retry() -> u64 {
    300
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            skills: BTreeMap::new(),
            priority: 0,
            strategy: Strategy::LeastLoaded,
            offer_timeout_secs: None,
            sla: Sla::default(),
            overflow: Vec::new(),
            hours: None,
            after_hours: AfterHours::Wait,
            wrap_up_secs: None,
            abandon_after_secs: None,
            declined_retry_secs: default_declined_retry(),
            csat_survey: None,
        }
    }
}

/// When a rule applies to a new conversation. Every condition given must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleMatch {
    /// The channel kind.
    pub channel: Option<ChannelKind>,
    /// The channel account (page id, phone number, mailbox…).
    pub account: Option<String>,
    /// Any of these words in the first message (case-insensitive).
    pub keywords: Vec<String>,
    /// Any of these contact tags.
    pub tags: Vec<String>,
    /// The contact's language (BCP 47 primary tag, e.g. `vi`).
    pub language: Option<String>,
}

/// A rule: the first one that matches a new conversation chooses its queue, and may add skills
/// and raise priority.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Conditions.
    #[serde(rename = "match", default)]
    pub when: RuleMatch,
    /// The queue to use.
    pub queue: QueueId,
    /// Extra required skills for this conversation.
    #[serde(default)]
    pub add_skills: BTreeMap<Skill, u8>,
    /// Added to the queue's priority.
    #[serde(default)]
    pub priority_boost: i32,
}

/// A tenant's routing configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Queues by id.
    pub queues: BTreeMap<QueueId, QueueConfig>,
    /// Rules, tried in order.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Where a conversation goes when no rule matches.
    pub default_queue: QueueId,
    /// Seconds of waiting worth one priority point.
    #[serde(default = "default_aging")]
    pub aging_step_secs: u64,
    /// Prefer the contact's last agent if they were assigned within this window.
    #[serde(default = "default_sticky")]
    pub sticky_window_secs: u64,
    /// A customer message this soon after resolution reopens the conversation (FCR counts it);
    /// later, it starts a new contact.
    #[serde(default = "default_reopen")]
    pub reopen_window_secs: u64,
    /// How long a resolved conversation is remembered, from its resolution: a reopening, a late
    /// CSAT score or a late reply still finds it (and first-contact resolution counts the
    /// reopening). Then it is forgotten (its state record becomes a tombstone); a later message
    /// starts a new conversation. At least `reopen_window_secs`. Default 7 days.
    #[serde(default = "default_resolved_retention")]
    pub resolved_retention_secs: u64,
    /// An unresolved conversation with no activity (customer message, agent reply, or a
    /// command naming it: accept, decline, transfer, reopen) for this long is abandoned: it is
    /// expired (an `expired` routing event), its agent's capacity frees, and it is forgotten.
    /// Default 7 days: longer than any weekend or holiday pause of an e-mail thread that is
    /// still alive, short enough that a tenant's state holds at most a week of traffic.
    #[serde(default = "default_expire_after")]
    pub expire_after_secs: u64,
    /// An online agent who lets this many offers in a row time out is set `away` (an
    /// `agent_away` event says why) and their offers go to others; 0: never. Default 3.
    #[serde(default = "default_away_after_missed")]
    pub away_after_missed_offers: u32,
    /// The time zone whose midnight ends an agent's KPI day (the `agent_day` summaries).
    #[serde(default = "default_kpi_timezone")]
    pub kpi_timezone: String,
}

fn default_aging() -> u64 {
    60
}
fn default_sticky() -> u64 {
    24 * 3600
}
fn default_reopen() -> u64 {
    72 * 3600
}
fn default_resolved_retention() -> u64 {
    7 * 24 * 3600
}
fn default_expire_after() -> u64 {
    7 * 24 * 3600
}
fn default_kpi_timezone() -> String {
    "Asia/Ho_Chi_Minh".into()
}
fn default_away_after_missed() -> u32 {
    3
}

impl RoutingConfig {
    /// A configuration with one always-open queue named `default` and no rules.
    pub fn single_queue(queue: QueueConfig) -> Self {
        let id = QueueId::from("default");
        Self {
            queues: BTreeMap::from([(id.clone(), queue)]),
            rules: Vec::new(),
            default_queue: id,
            aging_step_secs: default_aging(),
            sticky_window_secs: default_sticky(),
            reopen_window_secs: default_reopen(),
            resolved_retention_secs: default_resolved_retention(),
            expire_after_secs: default_expire_after(),
            away_after_missed_offers: default_away_after_missed(),
            kpi_timezone: default_kpi_timezone(),
        }
    }

    /// Checks references and ranges; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.queues.is_empty() {
            return Err(err("queues", "configure at least one queue"));
        }
        if !self.queues.contains_key(&self.default_queue) {
            return Err(err(
                "default_queue",
                format!("no queue named {:?}", self.default_queue.0),
            ));
        }
        if self.aging_step_secs == 0 {
            return Err(err("aging_step_secs", "must be at least 1"));
        }
        if self.resolved_retention_secs < self.reopen_window_secs {
            return Err(err(
                "resolved_retention_secs",
                format!(
                    "must be at least reopen_window_secs ({}): a conversation is remembered \
                     for as long as it can be reopened",
                    self.reopen_window_secs
                ),
            ));
        }
        if self.kpi_timezone.parse::<chrono_tz::Tz>().is_err() {
            return Err(err(
                "kpi_timezone",
                format!("unknown time zone {:?}", self.kpi_timezone),
            ));
        }
        if self.expire_after_secs == 0 {
            return Err(err("expire_after_secs", "must be at least 1"));
        }
        let known: BTreeSet<&QueueId> = self.queues.keys().collect();
        for (id, q) in &self.queues {
            self.validate_queue(id, q, &known)?;
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if !known.contains(&rule.queue) {
                return Err(err(
                    format!("rules[{i}].queue"),
                    format!("no queue named {:?}", rule.queue.0),
                ));
            }
            for (skill, level) in &rule.add_skills {
                if !(1..=5).contains(level) {
                    return Err(err(
                        format!("rules[{i}].add_skills.{}", skill.0),
                        "proficiency is 1-5",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl RoutingConfig {
    /// One queue's keys: skills, offers, overflow, hours and work states.
    fn validate_queue(
        &self,
        id: &QueueId,
        q: &QueueConfig,
        known: &BTreeSet<&QueueId>,
    ) -> Result<(), ConfigError> {
        let key = format!("queues.{id}");
        for (skill, level) in &q.skills {
            if !(1..=5).contains(level) {
                return Err(err(
                    format!("{key}.skills.{}", skill.0),
                    "proficiency is 1-5",
                ));
            }
        }
        if q.offer_timeout_secs == Some(0) {
            return Err(err(
                format!("{key}.offer_timeout_secs"),
                "must be at least 1",
            ));
        }
        let mut last = 0;
        for (i, step) in q.overflow.iter().enumerate() {
            let k = format!("{key}.overflow[{i}]");
            if step.after_secs < last {
                return Err(err(k, "steps must be in order of after_secs"));
            }
            last = step.after_secs;
            if let OverflowAction::SpillTo(target) = &step.action {
                if !known.contains(target) {
                    return Err(err(
                        format!("{k}.spill_to"),
                        format!("no queue named {:?}", target.0),
                    ));
                }
                if target == id {
                    return Err(err(
                        format!("{k}.spill_to"),
                        "a queue cannot spill into itself",
                    ));
                }
            }
        }
        if let AfterHours::SpillTo(target) = &q.after_hours {
            if !known.contains(target) || target == id {
                return Err(err(
                    format!("{key}.after_hours.spill_to"),
                    format!("must name another queue, got {:?}", target.0),
                ));
            }
        }
        self.validate_work(&key, q)?;
        if let Some(hours) = &q.hours {
            hours
                .validate()
                .map_err(|reason| err(format!("{key}.hours"), reason))?;
        }
        Ok(())
    }

    /// A queue's wrap-up, patience, retry, SLA warning and survey keys.
    fn validate_work(&self, key: &str, q: &QueueConfig) -> Result<(), ConfigError> {
        if q.wrap_up_secs == Some(0) {
            return Err(err(format!("{key}.wrap_up_secs"), "must be at least 1"));
        }
        if q.abandon_after_secs == Some(0) {
            return Err(err(
                format!("{key}.abandon_after_secs"),
                "must be at least 1",
            ));
        }
        if q.declined_retry_secs == 0 {
            return Err(err(
                format!("{key}.declined_retry_secs"),
                "must be at least 1",
            ));
        }
        if let Some(survey) = &q.csat_survey {
            if survey.question.trim().is_empty() {
                return Err(err(
                    format!("{key}.csat_survey.question"),
                    "must not be empty",
                ));
            }
            if survey.answer_within_secs == 0
                || survey.answer_within_secs > self.resolved_retention_secs
            {
                return Err(err(
                    format!("{key}.csat_survey.answer_within_secs"),
                    format!(
                        "must be 1 to resolved_retention_secs ({}): the conversation is \
                         remembered that long",
                        self.resolved_retention_secs
                    ),
                ));
            }
        }
        if q.sla
            .at_risk_percent
            .is_some_and(|p| !(1..=99).contains(&p))
        {
            return Err(err(format!("{key}.sla.at_risk_percent"), "must be 1-99"));
        }
        if q.sla.business_hours_only.any() && q.hours.is_none() {
            return Err(err(
                format!("{key}.sla.business_hours_only"),
                "the queue has no `hours` to count in",
            ));
        }
        Ok(())
    }
}
