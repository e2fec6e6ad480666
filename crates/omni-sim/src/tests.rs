//! The simulation against queueing theory, and its behaviour on small days.

use crate::erlang::{erlang_a_prediction, erlang_c_prediction, Prediction, Queue};
use crate::profile::Profile;
use crate::search::smallest_roster;
use crate::simulate;

/// One queue for `hours` at a constant `load` (erlangs) on `agents`, exponential handling of
/// `handling` seconds, and exponential patience if given.
fn one_queue(
    agents: u32,
    load: f64,
    handling: f64,
    patience: Option<f64>,
    hours: usize,
) -> Profile {
    let per_interval = load / handling * 900.0;
    let patience = patience.map_or(String::new(), |p| {
        format!("patience = {{ distribution = \"exponential\", mean_secs = {p} }}\n")
    });
    Profile::parse(&format!(
        r#"
start = "2026-12-04T00:00:00+07:00"
seed = 11
target = {{ within_secs = 60, service_level = 0.8 }}
[routing]
default_queue = "q"
[routing.queues.q]
strategy = "longest_idle"
[[arrivals]]
name = "poisson"
per_interval = [{}]
handling = {{ distribution = "exponential", mean_secs = {handling} }}
{patience}
[[roster]]
name = "agent"
count = {agents}
"#,
        vec![per_interval.to_string(); hours * 4].join(", ")
    ))
    .unwrap()
}

fn measured(profile: &Profile) -> Prediction {
    let report = simulate(profile);
    assert_eq!(report.rejected, 0);
    // The first hour warms the queue up from empty: steady state is measured after it.
    let warm = 4;
    let t = report.queues[0].intervals[warm..]
        .iter()
        .fold(crate::report::Tally::default(), |s, t| s.plus(t));
    Prediction {
        service_level: t.service_level().unwrap(),
        asa: t.asa().unwrap(),
        abandonment: t.abandon_rate().unwrap(),
    }
}

/// Service level: within 2.5 points.
const SL_TOLERANCE: f64 = 0.025;
/// ASA: within 20 % (and 1 s, for the short waits of light loads).
const ASA_TOLERANCE: f64 = 0.20;
/// Abandonment: within 1 point.
const ABANDON_TOLERANCE: f64 = 0.01;
/// Simulated hours per load. Without abandonment, waits are long-tailed and long-correlated
/// (busy periods): 2,000 hours (up to 320,000 customers) keep the run's own noise under a
/// third of each tolerance; abandonment shortens both, and 400 hours do.
const HOURS_ERLANG_C: usize = 2_000;
/// See [`HOURS_ERLANG_C`].
const HOURS_ERLANG_A: usize = 400;

fn close(what: &str, sim: Prediction, theory: Prediction) {
    let sl = (sim.service_level - theory.service_level).abs();
    let asa = (sim.asa - theory.asa).abs();
    let ab = (sim.abandonment - theory.abandonment).abs();
    assert!(
        sl < SL_TOLERANCE && asa < ASA_TOLERANCE * theory.asa + 1.0 && ab < ABANDON_TOLERANCE,
        "{what}: simulated {sim:?}, theory {theory:?}"
    );
}

/// M/M/n: the engine's queue gives Erlang C's service level and ASA across loads.
#[test]
fn a_poisson_queue_matches_erlang_c_across_loads() {
    for load in [5.0, 7.0, 8.0] {
        let profile = one_queue(10, load, 180.0, None, HOURS_ERLANG_C);
        let theory = erlang_c_prediction(
            Queue {
                rate: load / 180.0,
                mean_handling: 180.0,
                agents: 10,
            },
            60.0,
        );
        close(
            &format!("Erlang C, {load} erlangs"),
            measured(&profile),
            theory,
        );
    }
}

/// M/M/n+M: with exponential patience, Erlang A's service level, ASA and abandonment.
#[test]
fn an_impatient_queue_matches_erlang_a_across_loads() {
    for load in [8.0, 10.0, 12.0] {
        let profile = one_queue(10, load, 180.0, Some(120.0), HOURS_ERLANG_A);
        let theory = erlang_a_prediction(
            Queue {
                rate: load / 180.0,
                mean_handling: 180.0,
                agents: 10,
            },
            120.0,
            60.0,
        );
        close(
            &format!("Erlang A, {load} erlangs"),
            measured(&profile),
            theory,
        );
    }
}

const DAY: &str = r#"
start = "2026-12-04T08:00:00+07:00"
seed = 3
target = { within_secs = 120, service_level = 0.8 }
[routing]
default_queue = "general"
[routing.queues.general]
skills = { vi = 1 }
[routing.queues.english]
skills = { en = 1 }
[[routing.rules]]
queue = "english"
match = { language = "en" }
[[arrivals]]
name = "vi chat"
language = "vi"
per_interval = [20, 40, 60, 40]
handling = { distribution = "lognormal", mean_secs = 240, sd_secs = 160 }
patience = { distribution = "exponential", mean_secs = 180 }
[[arrivals]]
name = "en chat"
language = "en"
per_interval = [2, 4, 6, 4]
handling = { distribution = "exponential", mean_secs = 300 }
[[roster]]
name = "vi"
count = 12
skills = { vi = 3 }
[[roster]]
name = "bilingual"
count = 2
skills = { vi = 2, en = 3 }
shift = ["08:00", "08:30"]
"#;

#[test]
fn a_day_is_reported_per_queue_and_interval_the_same_way_every_time() {
    let profile = Profile::parse(DAY).unwrap();
    let report = simulate(&profile);
    assert_eq!(
        report,
        simulate(&profile),
        "same profile, same seed, same day"
    );
    let queues: Vec<&str> = report.queues.iter().map(|q| q.queue.as_str()).collect();
    assert_eq!(queues, ["english", "general"]);
    let english = report.queues[0].total();
    let general = report.queues[1].total();
    // Poisson counts near the expected 16 and 160.
    assert!((8..=28).contains(&english.offered), "{english:?}");
    assert!((120..=200).contains(&general.offered), "{general:?}");
    // Only the bilingual agents speak English, and they go at 08:30: English customers never
    // give up, but those after 08:30 are never answered.
    assert_eq!(english.abandoned, 0, "English customers never give up");
    assert!(english.answered < english.offered, "{english:?}");
    assert_eq!(report.unfinished, english.offered - english.answered);
    assert_eq!(
        general.answered + general.abandoned,
        general.offered,
        "every Vietnamese customer is answered or leaves"
    );
    for i in 0..4 {
        let occupancy = report.occupancy(i).unwrap();
        assert!((0.0..=1.0).contains(&occupancy), "{occupancy}");
    }
    let csv = report.csv();
    assert!(csv.starts_with("queue,interval,offered"));
    assert!(
        csv.lines().any(|l| l.starts_with("general,08:00,")),
        "{csv}"
    );
    assert!(
        csv.lines().any(|l| l.starts_with("general,total,")),
        "{csv}"
    );
    assert!(
        report.table().contains("never answered"),
        "{}",
        report.table()
    );
}

#[test]
fn more_agents_never_serve_worse_on_the_same_customers() {
    let profile = Profile::parse(DAY).unwrap();
    let sl = |vi: u32| {
        let mut p = profile.clone();
        p.roster[0].count = vi;
        simulate(&p).queues[1].total().service_level().unwrap()
    };
    let (few, many) = (sl(6), sl(16));
    assert!(few < many, "6 agents: {few}, 16 agents: {many}");
}

#[test]
fn the_search_finds_the_smallest_roster_meeting_the_target() {
    let text = DAY.replace("shift = [\"08:00\", \"08:30\"]", "");
    let profile = Profile::parse(&text).unwrap();
    let found = smallest_roster(&profile, 60).expect("60 agents are enough");
    assert!(found.report.meets(profile.target));
    let total: u32 = found.counts.iter().sum();
    // One agent fewer (scaled the same way) misses it.
    let fewer = crate::search::scaled(&profile, total - 1);
    let mut p = profile.clone();
    for (g, n) in p.roster.iter_mut().zip(&fewer) {
        g.count = *n;
    }
    assert!(
        !simulate(&p).meets(profile.target),
        "{fewer:?} also meets it"
    );
}

#[test]
fn the_example_profiles_read_and_run() {
    let example = Profile::parse(include_str!("../../../config/simulate.example.toml")).unwrap();
    let report = simulate(&example);
    let offered: u64 = report.queues.iter().map(|q| q.total().offered).sum();
    assert!((2_500..3_250).contains(&offered), "{offered}");
    assert_eq!(report.rejected, 0);
    let bench = Profile::parse(include_str!("../../../benches/simulate_day.toml")).unwrap();
    let agents: u32 = bench.roster.iter().map(|g| g.count).sum();
    assert_eq!(agents, 500);
    let expected: f64 = bench.arrivals.iter().flat_map(|s| &s.per_interval).sum();
    assert!((49_900.0..50_100.0).contains(&expected), "{expected}");
}

/// The recorded day replayed: a answered at once; b gives up when they did, the agent still
/// busy with a; c waits for a's 5 minutes to end (3 minutes: past the 2-minute target).
#[test]
fn a_recorded_day_replays_through_the_profiles_routing() {
    let recorded = crate::recorded::parse(&crate::recorded::tests::recorded_day(), "shop").unwrap();
    let profile = Profile::parse(
        r#"
start = "2026-12-03T00:00:00+07:00"
target = { within_secs = 120, service_level = 0.8 }
[routing]
default_queue = "general"
[routing.queues.general]
skills = { vi = 1 }
"#,
    )
    .unwrap();
    let report = crate::replay(&profile, &recorded);
    assert_eq!(report.start.format("%H:%M").to_string(), "08:00");
    let day = report.queues[0].total();
    assert_eq!(
        (day.offered, day.answered, day.in_time, day.abandoned),
        (3, 2, 1, 1),
        "{day:?}"
    );
    assert_eq!(day.wait_secs, 180.0, "c waited 3 minutes");
    assert_eq!(report.unfinished, 0);
    assert!(report.occupancy(0).unwrap() > 0.5);
}
