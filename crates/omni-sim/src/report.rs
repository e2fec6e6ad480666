//! What a simulated day shows, per queue and interval: service level, average speed of
//! answer, abandonment, and the agents' occupancy; as a table for people and CSV for
//! spreadsheets.

use chrono::{DateTime, FixedOffset};
use std::fmt::Write as _;

use crate::profile::{Profile, Target};

/// The counts of one queue in one interval (by arrival), or summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    /// Customers who arrived.
    pub offered: u64,
    /// Assigned to an agent.
    pub answered: u64,
    /// Assigned within the target time.
    pub in_time: u64,
    /// Left before being assigned.
    pub abandoned: u64,
    /// Seconds waited by the answered customers, summed.
    pub wait_secs: f64,
}

impl Tally {
    /// One customer: answered after `wait` seconds (or never), abandoned or not.
    pub fn one(wait: Option<f64>, abandoned: bool, within_secs: f64) -> Self {
        Self {
            offered: 1,
            answered: u64::from(wait.is_some()),
            in_time: u64::from(wait.is_some_and(|w| w <= within_secs)),
            abandoned: u64::from(abandoned),
            wait_secs: wait.unwrap_or(0.0),
        }
    }

    /// The sum of two tallies.
    #[must_use]
    pub fn plus(&self, other: &Self) -> Self {
        Self {
            offered: self.offered + other.offered,
            answered: self.answered + other.answered,
            in_time: self.in_time + other.in_time,
            abandoned: self.abandoned + other.abandoned,
            wait_secs: self.wait_secs + other.wait_secs,
        }
    }

    /// Share of all arrivals answered within the target (abandoned ones count against it).
    pub fn service_level(&self) -> Option<f64> {
        ratio(self.in_time as f64, self.offered)
    }

    /// Average speed of answer: mean wait of the answered customers, in seconds.
    pub fn asa(&self) -> Option<f64> {
        ratio(self.wait_secs, self.answered)
    }

    /// Share of arrivals who left before being answered.
    pub fn abandon_rate(&self) -> Option<f64> {
        ratio(self.abandoned as f64, self.offered)
    }
}

fn ratio(x: f64, n: u64) -> Option<f64> {
    (n > 0).then(|| x / n as f64)
}

/// One queue's day.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueReport {
    /// The queue.
    pub queue: String,
    /// Its tallies, one per interval.
    pub intervals: Vec<Tally>,
}

impl QueueReport {
    /// The whole day.
    pub fn total(&self) -> Tally {
        self.intervals
            .iter()
            .fold(Tally::default(), |sum, t| sum.plus(t))
    }
}

/// A simulated day's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// When the first interval starts.
    pub start: DateTime<FixedOffset>,
    /// Minutes per interval.
    pub interval_minutes: u32,
    /// The target the `in_time` counts were measured against.
    pub target: Target,
    /// Every queue of the routing config.
    pub queues: Vec<QueueReport>,
    /// Agent-seconds staffed (online, or still finishing work) per interval.
    pub staffed_secs: Vec<f64>,
    /// Agent-seconds busy per interval (a conversation takes 1/capacity of its agent).
    pub busy_secs: Vec<f64>,
    /// Customers never answered who did not give up either: nobody with their skills was
    /// left (the engine expired them, or they were still waiting when the day's work ended).
    pub unfinished: u64,
    /// Commands the engine refused (0 unless the profile drives it into a corner).
    pub rejected: u64,
    start_ms: u64,
    interval_ms: u64,
}

impl Report {
    /// An empty report for these queues, `intervals` of `profile`'s width from `start_ms`
    /// (shown in the profile's UTC offset).
    pub fn new(profile: &Profile, queues: &[String], start_ms: u64, intervals: usize) -> Self {
        let n = intervals;
        let start = chrono::DateTime::from_timestamp_millis(i64::try_from(start_ms).unwrap_or(0))
            .map_or(profile.start, |t| t.with_timezone(profile.start.offset()));
        Self {
            start,
            interval_minutes: profile.interval_minutes,
            target: profile.target,
            queues: queues
                .iter()
                .map(|q| QueueReport {
                    queue: q.clone(),
                    intervals: vec![Tally::default(); n],
                })
                .collect(),
            staffed_secs: vec![0.0; n],
            busy_secs: vec![0.0; n],
            unfinished: 0,
            rejected: 0,
            start_ms,
            interval_ms: profile.interval_ms(),
        }
    }

    /// The tally of `queue` in `interval`, if both exist.
    pub fn tally_mut(&mut self, queue: usize, interval: usize) -> Option<&mut Tally> {
        self.queues.get_mut(queue)?.intervals.get_mut(interval)
    }

    /// Accounts one agent's time from `from` to `to` (ms since the epoch), `busy` of it
    /// handling, split over the intervals it spans; time outside the day is not reported.
    pub fn accrue(&mut self, from: u64, to: u64, busy: f64) {
        let mut t = from.max(self.start_ms);
        while t < to {
            let i = ((t - self.start_ms) / self.interval_ms) as usize;
            if i >= self.staffed_secs.len() {
                return;
            }
            let boundary = self.start_ms + self.interval_ms * (i as u64 + 1);
            let until = boundary.min(to);
            let secs = (until - t) as f64 / 1000.0;
            self.staffed_secs[i] += secs;
            self.busy_secs[i] += secs * busy;
            t = until;
        }
    }

    /// Share of staffed time spent handling, in `interval`.
    pub fn occupancy(&self, interval: usize) -> Option<f64> {
        let staffed = *self.staffed_secs.get(interval)?;
        (staffed > 0.0).then(|| self.busy_secs[interval] / staffed)
    }

    /// The whole day's occupancy.
    pub fn total_occupancy(&self) -> Option<f64> {
        let staffed: f64 = self.staffed_secs.iter().sum();
        (staffed > 0.0).then(|| self.busy_secs.iter().sum::<f64>() / staffed)
    }

    /// Whether every queue that had customers met the target over the day.
    pub fn meets(&self, target: Target) -> bool {
        self.queues.iter().all(|q| {
            q.total()
                .service_level()
                .is_none_or(|sl| sl >= target.service_level)
        }) && self.unfinished == 0
    }

    fn interval_start(&self, i: usize) -> String {
        let at =
            self.start + chrono::Duration::minutes(i64::from(self.interval_minutes) * i as i64);
        at.format("%H:%M").to_string()
    }

    /// The report as CSV: one row per queue and interval (with arrivals), then one total row
    /// per queue (`interval` = `total`).
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "queue,interval,offered,answered,answered_in_time,abandoned,service_level,asa_secs,abandon_rate,occupancy\n",
        );
        for q in &self.queues {
            for (i, t) in q.intervals.iter().enumerate() {
                if t.offered > 0 {
                    let _ = writeln!(
                        out,
                        "{}",
                        self.csv_row(&q.queue, &self.interval_start(i), t, self.occupancy(i))
                    );
                }
            }
            let _ = writeln!(
                out,
                "{}",
                self.csv_row(&q.queue, "total", &q.total(), self.total_occupancy())
            );
        }
        out
    }

    fn csv_row(&self, queue: &str, interval: &str, t: &Tally, occupancy: Option<f64>) -> String {
        let f = |x: Option<f64>| x.map_or(String::new(), |x| format!("{x:.4}"));
        format!(
            "{queue},{interval},{},{},{},{},{},{},{},{}",
            t.offered,
            t.answered,
            t.in_time,
            t.abandoned,
            f(t.service_level()),
            f(t.asa()),
            f(t.abandon_rate()),
            f(occupancy)
        )
    }

    /// The report as an aligned table for a terminal.
    pub fn table(&self) -> String {
        let pct = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{:.1}%", x * 100.0));
        let secs = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.0}s"));
        let mut out = format!(
            "service level: answered within {}s, share of all arrivals (target {:.0}%)\n",
            self.target.within_secs,
            self.target.service_level * 100.0
        );
        let _ = writeln!(
            out,
            "{:<14} {:>6} {:>8} {:>8} {:>8} {:>7} {:>9} {:>10}",
            "queue", "from", "offered", "answered", "SL", "ASA", "abandon", "occupancy"
        );
        for q in &self.queues {
            let rows = q
                .intervals
                .iter()
                .enumerate()
                .filter(|(_, t)| t.offered > 0);
            for (i, t) in rows {
                let _ = writeln!(
                    out,
                    "{:<14} {:>6} {:>8} {:>8} {:>8} {:>7} {:>9} {:>10}",
                    q.queue,
                    self.interval_start(i),
                    t.offered,
                    t.answered,
                    pct(t.service_level()),
                    secs(t.asa()),
                    pct(t.abandon_rate()),
                    pct(self.occupancy(i))
                );
            }
            let t = q.total();
            let _ = writeln!(
                out,
                "{:<14} {:>6} {:>8} {:>8} {:>8} {:>7} {:>9} {:>10}",
                q.queue,
                "total",
                t.offered,
                t.answered,
                pct(t.service_level()),
                secs(t.asa()),
                pct(t.abandon_rate()),
                pct(self.total_occupancy())
            );
        }
        if self.unfinished > 0 {
            let _ = writeln!(
                out,
                "{} customers were never answered: nobody with their skills was left",
                self.unfinished
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_measures_against_all_arrivals() {
        let t = [
            Tally::one(Some(10.0), false, 120.0),
            Tally::one(Some(200.0), false, 120.0),
            Tally::one(None, true, 120.0),
            Tally::one(Some(120.0), false, 120.0),
        ]
        .iter()
        .fold(Tally::default(), |s, t| s.plus(t));
        assert_eq!(
            (t.offered, t.answered, t.in_time, t.abandoned),
            (4, 3, 2, 1)
        );
        assert_eq!(t.service_level(), Some(0.5));
        assert_eq!(t.asa(), Some(110.0));
        assert_eq!(t.abandon_rate(), Some(0.25));
        assert_eq!(Tally::default().service_level(), None);
    }
}
