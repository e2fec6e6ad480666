//! A contact-centre day as a TOML file: when it starts, how many customers arrive on which
//! channel per interval, how long they take to handle and how long they wait before giving up,
//! who works when with which skills, the routing configuration (the same keys as a tenant's
//! `[tenants.<id>.routing]`) and the service-level target. `config/simulate.example.toml`
//! documents every key.

use chrono::{DateTime, FixedOffset, NaiveTime};
use omni_core::ChannelKind;
use omni_routing::{RoutingConfig, Skill};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

use crate::rng::Distribution;

/// A simulated day.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// When the first interval starts (RFC 3339, with the site's UTC offset: shifts and the
    /// queues' opening hours are read in it).
    pub start: DateTime<FixedOffset>,
    /// Minutes per reporting interval.
    #[serde(default = "default_interval")]
    pub interval_minutes: u32,
    /// Seed of the random draws: the same seed gives the same customers.
    #[serde(default)]
    pub seed: u64,
    /// The service level to meet (and to search a roster for).
    #[serde(default)]
    pub target: Target,
    /// Queues, rules and strategies, as in a tenant's routing config.
    pub routing: RoutingConfig,
    /// Who arrives: one stream per kind of contact (not used when a recorded day is replayed).
    #[serde(default)]
    pub arrivals: Vec<Stream>,
    /// Who answers: groups of identical agents (not used when a recorded day is replayed).
    #[serde(default)]
    pub roster: Vec<AgentGroup>,
}

fn default_interval() -> u32 {
    15
}

/// A service-level target: `service_level` of the customers answered within `within_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Answer within this many seconds of arrival.
    pub within_secs: f64,
    /// Share of all arrivals (abandoned ones included) answered in time, 0–1.
    pub service_level: f64,
}

impl Default for Target {
    fn default() -> Self {
        Self {
            within_secs: 120.0,
            service_level: 0.8,
        }
    }
}

/// One kind of contact: where it comes from (the routing rules pick its queue from this, as
/// they do for a real message), how many arrive, how long they take, how long they wait.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stream {
    /// A name for errors.
    pub name: String,
    /// The channel they write on.
    #[serde(default = "default_channel")]
    pub channel: ChannelKind,
    /// The channel account (a page, a number), for rules that match on it.
    #[serde(default)]
    pub account: String,
    /// The contacts' language, for rules.
    #[serde(default)]
    pub language: Option<String>,
    /// Contact tags, for rules.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The first message's text, for keyword rules.
    #[serde(default)]
    pub text: String,
    /// Expected arrivals in each interval, from the start (Poisson arrivals at that rate).
    pub per_interval: Vec<f64>,
    /// Time from assignment to resolution.
    pub handling: Distribution,
    /// How long a customer waits for an agent before leaving; none: they never leave.
    #[serde(default)]
    pub patience: Option<Distribution>,
}

fn default_channel() -> ChannelKind {
    ChannelKind::Livechat
}

/// Agents with the same skills, capacity and shift.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentGroup {
    /// The group's name; its agents are `<name>-001`, `<name>-002`, …
    pub name: String,
    /// How many agents.
    pub count: u32,
    /// Skills with proficiency 1–5.
    #[serde(default)]
    pub skills: BTreeMap<Skill, u8>,
    /// Conversations at once per agent.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// Working hours, `["08:00", "17:00"]` in the start's offset; none: the whole day. At the
    /// end of a shift an agent takes no new conversations and finishes the ones they have.
    #[serde(default)]
    pub shift: Option<[String; 2]>,
}

fn default_capacity() -> u32 {
    1
}

/// Why a profile cannot be simulated.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown or missing keys.
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    /// A key's value cannot be used.
    #[error("{key}: {reason}")]
    Invalid {
        /// The key, as written in the file.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl Profile {
    /// Reads and checks the profile at `path`.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and checks a profile.
    pub fn parse(text: &str) -> Result<Self, ProfileError> {
        let profile: Self = toml::from_str(text)?;
        profile.check()?;
        Ok(profile)
    }

    fn check(&self) -> Result<(), ProfileError> {
        let invalid = |key: String, reason: &str| ProfileError::Invalid {
            key,
            reason: reason.to_owned(),
        };
        if self.interval_minutes == 0 {
            return Err(invalid("interval_minutes".into(), "must be above 0"));
        }
        let t = self.target;
        if !(t.within_secs.is_finite() && t.within_secs >= 0.0) {
            return Err(invalid("target.within_secs".into(), "must be 0 or more"));
        }
        if !(0.0..=1.0).contains(&t.service_level) {
            return Err(invalid("target.service_level".into(), "must be 0-1"));
        }
        self.routing.validate().map_err(|e| ProfileError::Invalid {
            key: "routing".into(),
            reason: e.to_string(),
        })?;
        for (i, s) in self.arrivals.iter().enumerate() {
            let key = |k: &str| format!("arrivals[{i}] ({}).{k}", s.name);
            if s.per_interval.iter().any(|n| !(n.is_finite() && *n >= 0.0)) {
                return Err(invalid(key("per_interval"), "counts must be 0 or more"));
            }
            if let Some(p) = s.handling.problem() {
                return Err(invalid(key("handling"), p));
            }
            if let Some(p) = s.patience.as_ref().and_then(Distribution::problem) {
                return Err(invalid(key("patience"), p));
            }
        }
        for (i, g) in self.roster.iter().enumerate() {
            let key = |k: &str| format!("roster[{i}] ({}).{k}", g.name);
            if self.roster[..i].iter().any(|other| other.name == g.name) {
                return Err(invalid(key("name"), "another group has this name"));
            }
            if g.capacity == 0 {
                return Err(invalid(key("capacity"), "must be above 0"));
            }
            if g.skills.values().any(|l| !(1..=5).contains(l)) {
                return Err(invalid(key("skills"), "proficiency is 1-5"));
            }
            if let Some(shift) = &g.shift {
                for at in shift {
                    if NaiveTime::parse_from_str(at, "%H:%M").is_err() {
                        return Err(invalid(key("shift"), "times are HH:MM"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Intervals in the day: the longest arrival list.
    pub fn intervals(&self) -> usize {
        self.arrivals
            .iter()
            .map(|s| s.per_interval.len())
            .max()
            .unwrap_or(0)
    }

    /// Milliseconds per interval.
    pub fn interval_ms(&self) -> u64 {
        u64::from(self.interval_minutes) * 60_000
    }

    /// The start in milliseconds since the Unix epoch.
    pub fn start_ms(&self) -> u64 {
        u64::try_from(self.start.timestamp_millis()).unwrap_or(0)
    }

    /// When an agent of `group` starts and ends work, in ms since the epoch, within the day;
    /// a shift ending before it starts runs past midnight.
    pub fn shift_ms(&self, group: &AgentGroup) -> (u64, u64) {
        let day_end = self.start_ms() + self.interval_ms() * self.intervals() as u64;
        let Some([from, to]) = &group.shift else {
            return (self.start_ms(), u64::MAX);
        };
        let at = |hhmm: &str| {
            let t = NaiveTime::parse_from_str(hhmm, "%H:%M").unwrap_or(NaiveTime::MIN);
            let date = self.start.date_naive();
            let local = date.and_time(t);
            let utc =
                local - chrono::Duration::seconds(i64::from(self.start.offset().local_minus_utc()));
            u64::try_from(utc.and_utc().timestamp_millis()).unwrap_or(0)
        };
        let (mut begin, mut end) = (at(from), at(to));
        if end <= begin {
            end += 24 * 3_600_000;
        }
        if end <= self.start_ms() {
            begin += 24 * 3_600_000;
            end += 24 * 3_600_000;
        }
        (begin.max(self.start_ms()).min(day_end), end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SMALL: &str = r#"
start = "2026-12-04T08:00:00+07:00"
[routing]
default_queue = "general"
[routing.queues.general]
skills = { vi = 1 }
[[arrivals]]
name = "chat"
per_interval = [10, 20]
handling = { distribution = "exponential", mean_secs = 300 }
patience = { distribution = "exponential", mean_secs = 120 }
[[roster]]
name = "vi"
count = 3
skills = { vi = 3 }
shift = ["08:00", "08:30"]
"#;

    #[test]
    fn a_profile_reads_with_its_defaults() {
        let p = Profile::parse(SMALL).unwrap();
        assert_eq!(p.interval_minutes, 15);
        assert_eq!(p.target, Target::default());
        assert_eq!(p.intervals(), 2);
        assert_eq!(p.arrivals[0].channel, ChannelKind::Livechat);
        let (begin, end) = p.shift_ms(&p.roster[0]);
        assert_eq!(begin, p.start_ms());
        assert_eq!(end - begin, 30 * 60_000);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("count = 3", "count = -1", "count"),
            (
                "mean_secs = 300",
                "mean_secs = 0",
                "arrivals[0] (chat).handling",
            ),
            ("\"08:30\"]", "\"8h30\"]", "roster[0] (vi).shift"),
            (
                "per_interval = [10, 20]",
                "per_interval = [10, -2]",
                "per_interval",
            ),
            (
                "default_queue = \"general\"",
                "default_queue = \"nowhere\"",
                "routing",
            ),
            ("name = \"chat\"", "name = \"chat\"\nmystery = 1", "mystery"),
            ("shift = [", "[[roster]]\nname = \"vi\"\ncount = 1\n[[roster]]\nname = \"x\"\ncount = 1\nshift = [", "roster[1] (vi).name"),
        ];
        for (from, to, named) in cases {
            let text = SMALL.replace(from, to);
            assert_ne!(text, SMALL, "{from}");
            let err = Profile::parse(&text).unwrap_err().to_string();
            assert!(err.contains(named), "{to}: {err}");
        }
    }
}
