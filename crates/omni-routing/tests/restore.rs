#![allow(missing_docs)]
// Test helpers outside `#[test]` functions: failing loudly is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]
//! A restored engine makes exactly the decisions the live one would have made.
//!
//! Every case builds a random configuration and team (the generators of `properties.rs`, in
//! `common/`) and a random input sequence, and runs two engines side by side:
//!
//! - **A** handles every input, uninterrupted;
//! - **B** is run the way the router runs a tenant: after every step its `take_changes()` go
//!   into a compacted store (the latest JSON record per key; a tombstone removes the key), and
//!   at random points B is thrown away and rebuilt with `Engine::restore(config, <the store>,
//!   <time of the last input>)`, as a new owner of the tenant would.
//!
//! After every step B's outputs must serialize byte for byte like A's, and both must wait for
//! the same next timer; a restore from a consistent state must produce no outputs and no
//! changes; at the end both snapshots are equal.

mod common;

use std::collections::BTreeMap;

use common::{scenario, steps, Act, Scenario, World};
use omni_routing::{Engine, Input, StateChange, StateEntry, Timestamp};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// The compacted changelog topic of one tenant: the latest record per key.
#[derive(Default)]
struct Store(BTreeMap<String, String>);

impl Store {
    fn apply(&mut self, changes: Vec<StateChange>) {
        for c in changes {
            match c.entry {
                Some(e) => {
                    assert_eq!(e.key(), c.key);
                    self.0
                        .insert(c.key, serde_json::to_string(&e).expect("records serialize"));
                }
                None => {
                    self.0.remove(&c.key);
                }
            }
        }
    }

    fn entries(&self) -> Vec<StateEntry> {
        self.0
            .values()
            .map(|v| serde_json::from_str(v).expect("records deserialize"))
            .collect()
    }
}

struct Run {
    scenario: Scenario,
    world: World,
    a: Engine,
    b: Engine,
    store: Store,
    now: Timestamp,
    log: Vec<String>,
}

impl Run {
    fn new(scenario: Scenario) -> Self {
        let world = World::new(&scenario);
        let engine = || Engine::new(scenario.config.clone()).expect("generated config is valid");
        Self {
            a: engine(),
            b: engine(),
            world,
            store: Store::default(),
            now: scenario.start,
            scenario,
            log: Vec::new(),
        }
    }

    fn fail(&self, what: String) -> TestCaseError {
        TestCaseError::fail(format!(
            "{what}\nconfig: {:?}\nsteps:\n{}",
            self.scenario.config,
            self.log.join("\n")
        ))
    }

    fn step(&mut self, input: Input) -> Result<(), TestCaseError> {
        self.log.push(format!(
            "  t=+{}s {input:?}",
            self.now.0.saturating_sub(self.scenario.start.0) / 1000
        ));
        let a = serde_json::to_string(&self.a.handle(self.now, &input)).expect("serialize");
        let b = serde_json::to_string(&self.b.handle(self.now, &input)).expect("serialize");
        self.a.take_changes();
        self.store.apply(self.b.take_changes());
        if a != b {
            return Err(self.fail(format!(
                "outputs differ after a restore:\nlive:     {a}\nrestored: {b}"
            )));
        }
        if self.a.next_timer() != self.b.next_timer() {
            return Err(self.fail(format!(
                "next timer differs: live {:?}, restored {:?}",
                self.a.next_timer(),
                self.b.next_timer()
            )));
        }
        Ok(())
    }

    /// Replaces B by an engine restored from the store at the time of the last input.
    fn restore(&mut self) -> Result<(), TestCaseError> {
        self.log.push("  -- restore --".into());
        let (mut b, out) =
            Engine::restore(self.scenario.config.clone(), self.store.entries(), self.now)
                .expect("config is valid");
        let changes = b.take_changes();
        if !out.is_empty() || !changes.is_empty() {
            return Err(self.fail(format!(
                "restore from a consistent state changed something:\noutputs: {out:?}\n\
                 changes: {changes:?}"
            )));
        }
        self.store.apply(changes);
        if let Err(e) = b.check_invariants() {
            return Err(self.fail(format!("restored engine broken: {e}")));
        }
        if b.snapshot() != self.a.snapshot() {
            return Err(self.fail(format!(
                "restored state differs:\nlive:     {:?}\nrestored: {:?}",
                self.a.snapshot(),
                b.snapshot()
            )));
        }
        self.b = b;
        Ok(())
    }

    fn run(mut self, steps: &[(u64, Act)], cuts: &[bool]) -> Result<(), TestCaseError> {
        for input in World::team_inputs(&self.scenario) {
            self.step(input)?;
        }
        for (i, (dt, act)) in steps.iter().enumerate() {
            if cuts.get(i).copied().unwrap_or(false) {
                self.restore()?;
            }
            self.now = self.now.plus_secs(*dt);
            let input = self.world.bind(act, &self.a, &mut self.now);
            self.step(input)?;
        }
        self.restore()?;
        if self.a.snapshot() != self.b.snapshot() {
            return Err(self.fail("final snapshots differ".into()));
        }
        Ok(())
    }
}

/// `cases` cases, or `PROPTEST_CASES` from the environment for a deeper local run.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Snapshot → restore at random points: every later output is byte-identical to the
    /// uninterrupted run's, and the final states are equal.
    #[test]
    fn a_restored_engine_decides_exactly_as_the_live_one(
        scenario in scenario(),
        steps in steps(true),
        cuts in prop::collection::vec(prop::bool::weighted(0.08), 200),
    ) {
        Run::new(scenario).run(&steps, &cuts)?;
    }
}
