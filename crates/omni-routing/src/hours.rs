//! Business hours in a queue's own time zone (default Asia/Ho_Chi_Minh).

use chrono::{Datelike, NaiveDate, TimeZone, Timelike};
use chrono_tz::Tz;
use serde::Deserialize;

use crate::model::Timestamp;

/// Opening hours of a queue: weekly windows in a time zone, minus holidays.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawHours")]
pub struct BusinessHours {
    tz: Tz,
    windows: Vec<Window>,
    holidays: Vec<NaiveDate>,
}

/// One weekly opening window: on `days`, from `from_min` to `to_min` minutes after midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    days: u8,
    from_min: u32,
    to_min: u32,
}

/// Business hours as written in config:
/// `{ timezone = "Asia/Ho_Chi_Minh", open = [{ days = ["mon","tue"], from = "08:00", to = "17:30" }], holidays = ["2027-02-16"] }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHours {
    #[serde(default = "default_tz")]
    timezone: String,
    open: Vec<RawWindow>,
    #[serde(default)]
    holidays: Vec<NaiveDate>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    days: Vec<String>,
    from: String,
    to: String,
}

fn default_tz() -> String {
    "Asia/Ho_Chi_Minh".into()
}

fn parse_hhmm(s: &str) -> Result<u32, String> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not HH:MM"))?;
    let h: u32 = h.parse().map_err(|_| format!("{s:?} is not HH:MM"))?;
    let m: u32 = m.parse().map_err(|_| format!("{s:?} is not HH:MM"))?;
    if h > 24 || m > 59 || (h == 24 && m != 0) {
        return Err(format!("{s:?} is not a time of day"));
    }
    Ok(h * 60 + m)
}

fn day_bit(day: &str) -> Result<u8, String> {
    Ok(match day.to_ascii_lowercase().as_str() {
        "mon" => 1,
        "tue" => 2,
        "wed" => 4,
        "thu" => 8,
        "fri" => 16,
        "sat" => 32,
        "sun" => 64,
        other => return Err(format!("{other:?} is not a day (mon..sun)")),
    })
}

impl TryFrom<RawHours> for BusinessHours {
    type Error = String;
    fn try_from(raw: RawHours) -> Result<Self, String> {
        let tz: Tz = raw
            .timezone
            .parse()
            .map_err(|_| format!("unknown time zone {:?}", raw.timezone))?;
        let mut windows = Vec::new();
        for w in raw.open {
            let mut days = 0;
            for d in &w.days {
                days |= day_bit(d)?;
            }
            let from_min = parse_hhmm(&w.from)?;
            let to_min = parse_hhmm(&w.to)?;
            if to_min <= from_min {
                return Err(format!(
                    "window {}-{} ends before it starts (split overnight windows in two)",
                    w.from, w.to
                ));
            }
            windows.push(Window {
                days,
                from_min,
                to_min,
            });
        }
        Ok(Self {
            tz,
            windows,
            holidays: raw.holidays,
        })
    }
}

impl BusinessHours {
    /// Hours from windows given as `(days, "HH:MM", "HH:MM")` in `timezone` (for tests and code).
    pub fn new(
        timezone: &str,
        windows: &[(&[&str], &str, &str)],
        holidays: Vec<NaiveDate>,
    ) -> Result<Self, String> {
        RawHours {
            timezone: timezone.to_owned(),
            open: windows
                .iter()
                .map(|(days, from, to)| RawWindow {
                    days: days.iter().map(|d| (*d).to_owned()).collect(),
                    from: (*from).to_owned(),
                    to: (*to).to_owned(),
                })
                .collect(),
            holidays,
        }
        .try_into()
    }

    /// Checks the hours make sense (at least one window).
    pub fn validate(&self) -> Result<(), String> {
        if self.windows.is_empty() || self.windows.iter().all(|w| w.days == 0) {
            return Err("no opening window: remove `hours` for an always-open queue".into());
        }
        Ok(())
    }

    fn local(&self, at: Timestamp) -> Option<chrono::DateTime<Tz>> {
        let secs = i64::try_from(at.0 / 1000).ok()?;
        let nanos = u32::try_from((at.0 % 1000) * 1_000_000).ok()?;
        self.tz.timestamp_opt(secs, nanos).single()
    }

    /// True when the queue is open at `at`.
    pub fn is_open(&self, at: Timestamp) -> bool {
        let Some(local) = self.local(at) else {
            return false;
        };
        if self.holidays.contains(&local.date_naive()) {
            return false;
        }
        let bit = 1u8 << local.weekday().num_days_from_monday();
        let minute = local.hour() * 60 + local.minute();
        self.windows
            .iter()
            .any(|w| w.days & bit != 0 && (w.from_min..w.to_min).contains(&minute))
    }

    /// When the queue next opens after `at` (if closed), looking two weeks ahead.
    pub fn next_open(&self, at: Timestamp) -> Option<Timestamp> {
        let local = self.local(at)?;
        let today = local.date_naive();
        let mut best: Option<Timestamp> = None;
        for offset in 0..=14 {
            let date = today + chrono::Days::new(offset);
            if self.holidays.contains(&date) {
                continue;
            }
            let bit = 1u8 << date.weekday().num_days_from_monday();
            for w in self.windows.iter().filter(|w| w.days & bit != 0) {
                let Some(start) = date.and_hms_opt(w.from_min / 60, w.from_min % 60, 0) else {
                    continue;
                };
                let Some(start) = self.tz.from_local_datetime(&start).earliest() else {
                    continue;
                };
                let ms = u64::try_from(start.timestamp_millis()).unwrap_or(0);
                if ms > at.0 && best.is_none_or(|b| ms < b.0) {
                    best = Some(Timestamp(ms));
                }
            }
            if best.is_some() {
                break;
            }
        }
        best
    }
}

impl BusinessHours {
    /// The end of the open stretch `at` is in (windows that adjoin or overlap count as one),
    /// or `None` if `at` is closed. A queue open around the clock ends its stretch after a
    /// few weeks, which is as far as anything here looks.
    fn open_until(&self, at: Timestamp) -> Option<Timestamp> {
        let mut t = at;
        for _ in 0..64 {
            let local = self.local(t)?;
            let date = local.date_naive();
            if self.holidays.contains(&date) {
                break;
            }
            let bit = 1u8 << local.weekday().num_days_from_monday();
            let minute = local.hour() * 60 + local.minute();
            let Some(to_min) = self
                .windows
                .iter()
                .filter(|w| w.days & bit != 0 && (w.from_min..w.to_min).contains(&minute))
                .map(|w| w.to_min)
                .max()
            else {
                break;
            };
            let end = if to_min >= 24 * 60 {
                (date + chrono::Days::new(1)).and_hms_opt(0, 0, 0)?
            } else {
                date.and_hms_opt(to_min / 60, to_min % 60, 0)?
            };
            let end = self.tz.from_local_datetime(&end).earliest()?;
            t = Timestamp(u64::try_from(end.timestamp_millis()).ok()?);
            if !self.is_open(t) {
                break;
            }
        }
        (t > at).then_some(t)
    }

    /// The moment `ms` milliseconds of opening time have passed since `start` (the clock runs
    /// only while open), or `None` if the hours do not open again within two weeks.
    pub fn after_open_ms(&self, start: Timestamp, ms: u64) -> Option<Timestamp> {
        let (mut t, mut left) = (start, ms);
        for _ in 0..1000 {
            if !self.is_open(t) {
                t = self.next_open(t)?;
            }
            let end = self.open_until(t)?;
            let span = end.0 - t.0;
            if left <= span {
                return Some(Timestamp(t.0 + left));
            }
            left -= span;
            t = end;
        }
        None
    }

    /// Milliseconds of opening time between `from` and `to`.
    pub fn open_ms_between(&self, from: Timestamp, to: Timestamp) -> u64 {
        let (mut t, mut total) = (from, 0u64);
        for _ in 0..1000 {
            if t >= to {
                break;
            }
            if !self.is_open(t) {
                match self.next_open(t) {
                    Some(open) => t = open,
                    None => break,
                }
                continue;
            }
            let Some(end) = self.open_until(t) else {
                break;
            };
            let end = end.min(to);
            total += end.0 - t.0;
            t = end;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(rfc3339: &str) -> Timestamp {
        let t = chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap();
        Timestamp(u64::try_from(t.timestamp_millis()).unwrap())
    }

    fn office() -> BusinessHours {
        let holiday = NaiveDate::from_ymd_opt(2027, 2, 16).unwrap(); // a Tuesday (Tết)
        BusinessHours::new(
            "Asia/Ho_Chi_Minh",
            &[
                (&["mon", "tue", "wed", "thu", "fri"], "08:00", "17:30"),
                (&["sat"], "08:00", "12:00"),
            ],
            vec![holiday],
        )
        .unwrap()
    }

    #[test]
    fn open_and_closed_in_vietnam_time() {
        let h = office();
        // 2027-02-15 is a Monday. 08:00 in Ho Chi Minh City is 01:00 UTC.
        assert!(!h.is_open(ts("2027-02-15T00:59:00Z")));
        assert!(h.is_open(ts("2027-02-15T01:00:00Z")));
        assert!(h.is_open(ts("2027-02-15T10:29:59Z")));
        assert!(!h.is_open(ts("2027-02-15T10:30:00Z")));
        // Holiday Tuesday is closed all day.
        assert!(!h.is_open(ts("2027-02-16T03:00:00Z")));
        // Sunday closed.
        assert!(!h.is_open(ts("2027-02-21T03:00:00Z")));
    }

    #[test]
    fn next_open_skips_holidays_and_weekends() {
        let h = office();
        // Monday evening → Wednesday 08:00 local (Tuesday is a holiday).
        assert_eq!(
            h.next_open(ts("2027-02-15T12:00:00Z")),
            Some(ts("2027-02-17T01:00:00Z"))
        );
        // Saturday afternoon → Monday 08:00 local.
        assert_eq!(
            h.next_open(ts("2027-02-20T06:00:00Z")),
            Some(ts("2027-02-22T01:00:00Z"))
        );
    }

    #[test]
    fn the_sla_clock_runs_only_while_open() {
        let h = office();
        let hour = 3_600_000;
        // Monday 17:00 local (10:00 UTC) + 1 h of opening time: 30 min on Monday, Tuesday is
        // a holiday, so 30 min on Wednesday from 08:00 → Wednesday 08:30 local.
        assert_eq!(
            h.after_open_ms(ts("2027-02-15T10:00:00Z"), hour),
            Some(ts("2027-02-17T01:30:00Z"))
        );
        // Saturday 11:00 local + 2 h: 1 h on Saturday, then Monday 08:00-09:00.
        assert_eq!(
            h.after_open_ms(ts("2027-02-20T04:00:00Z"), 2 * hour),
            Some(ts("2027-02-22T02:00:00Z"))
        );
        // Within one open stretch, wall-clock time.
        assert_eq!(
            h.after_open_ms(ts("2027-02-15T02:00:00Z"), hour),
            Some(ts("2027-02-15T03:00:00Z"))
        );
        // And the measure back: the same spans count the same opening time.
        assert_eq!(
            h.open_ms_between(ts("2027-02-15T10:00:00Z"), ts("2027-02-17T01:30:00Z")),
            hour
        );
        assert_eq!(
            h.open_ms_between(ts("2027-02-20T04:00:00Z"), ts("2027-02-22T02:00:00Z")),
            2 * hour
        );
        // Entirely while closed: nothing.
        assert_eq!(
            h.open_ms_between(ts("2027-02-15T12:00:00Z"), ts("2027-02-15T20:00:00Z")),
            0
        );
        // Adjoining windows are one stretch; around the clock never stops.
        let always = BusinessHours::new(
            "UTC",
            &[(
                &["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                "00:00",
                "24:00",
            )],
            vec![],
        )
        .unwrap();
        assert_eq!(
            always.after_open_ms(ts("2027-02-15T23:00:00Z"), 3 * 24 * hour),
            Some(ts("2027-02-18T23:00:00Z"))
        );
    }

    #[test]
    fn bad_hours_are_refused() {
        assert!(
            BusinessHours::new("Mars/Olympus", &[(&["mon"], "08:00", "17:00")], vec![]).is_err()
        );
        assert!(BusinessHours::new("UTC", &[(&["mon"], "18:00", "08:00")], vec![]).is_err());
        assert!(BusinessHours::new("UTC", &[(&["funday"], "08:00", "17:00")], vec![]).is_err());
        assert!(BusinessHours::new("UTC", &[(&["mon"], "8am", "17:00")], vec![]).is_err());
    }
}
