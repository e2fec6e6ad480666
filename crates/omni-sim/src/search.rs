//! The smallest roster that meets the target: the profile's roster scaled as a whole (each
//! group keeps its share of the agents), found by bisection on the number of agents, every
//! candidate simulated on the same customers (same seed).

use crate::day::simulate;
use crate::profile::Profile;
use crate::report::Report;

/// The smallest roster found, and its day.
#[derive(Debug, Clone)]
pub struct Found {
    /// Agents per group, in the profile's order.
    pub counts: Vec<u32>,
    /// The day with that roster.
    pub report: Report,
}

/// The profile's groups scaled to `total` agents, each keeping its share (at least one agent
/// for a group that had any).
pub fn scaled(profile: &Profile, total: u32) -> Vec<u32> {
    let base: u32 = profile.roster.iter().map(|g| g.count).sum();
    profile
        .roster
        .iter()
        .map(|g| {
            if g.count == 0 || base == 0 {
                0
            } else {
                let share = f64::from(g.count) * f64::from(total) / f64::from(base);
                (share.round() as u32).max(1)
            }
        })
        .collect()
}

fn with_counts(profile: &Profile, counts: &[u32]) -> Profile {
    let mut p = profile.clone();
    for (g, n) in p.roster.iter_mut().zip(counts) {
        g.count = *n;
    }
    p
}

/// Searches up to `limit` agents in all; `None` if even that many do not meet the target.
pub fn smallest_roster(profile: &Profile, limit: u32) -> Option<Found> {
    let meets = |total: u32| {
        let counts = scaled(profile, total);
        let report = simulate(&with_counts(profile, &counts));
        report
            .meets(profile.target)
            .then_some(Found { counts, report })
    };
    let mut best = meets(limit)?;
    let (mut low, mut high) = (0_u32, limit);
    // Invariant: `high` meets the target (its day is `best`), `low` does not or is nothing.
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        match meets(mid) {
            Some(found) => {
                high = mid;
                best = found;
            }
            None => low = mid,
        }
    }
    Some(best)
}
