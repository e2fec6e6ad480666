//! Outbound replies with three replicas on one broker: no reply part reaches the provider twice
//! while replicas are SIGKILLed and restarted, a call whose answer is lost is reported
//! `outcome_unknown` and never resent, and one page's send rate holds for the deployment.
//!
//! Replies are written to `omni.outbound.v1` as a CRM writes them (Python confluent-kafka);
//! Messenger sends go to a local Graph stand-in that records every part with its arrival time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use omni_e2e::outbound::{fates, messenger_env, messenger_reply, page_of, Graph, Part};
use omni_e2e::{cluster_env, env_refs, python_produce, Broker, Daemon};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const OUTBOUND: &str = "omni.outbound.v1";

/// Writes replies to the outbound topic, each pinned to `partition` when given (a CRM that
/// picks partitions itself), else placed by murmur2 of the tenant (the contract).
fn produce(bootstrap: &str, replies: &[(Value, Option<i32>)]) {
    let records: Vec<(String, String, Value, Option<i32>)> = replies
        .iter()
        .map(|(r, p)| {
            (
                OUTBOUND.to_owned(),
                r["tenant"].as_str().unwrap().to_owned(),
                r.clone(),
                *p,
            )
        })
        .collect();
    let bootstrap = bootstrap.to_owned();
    tokio::task::block_in_place(|| python_produce(&bootstrap, "murmur2_random", &records));
}

/// Parts received per (reply, content): the count of each.
fn counts(parts: &[Part]) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for p in parts {
        *out.entry((p.reply.clone(), p.content.clone())).or_default() += 1;
    }
    out
}

/// Waits until every reply in `ids` has a fate on the delivery topic; returns the fates by
/// reply (every delivery event of it).
async fn wait_for_fates(
    bootstrap: &str,
    ids: &BTreeSet<String>,
    timeout: Duration,
    daemons: &[Daemon],
    killed: &[String],
    graph: &Graph,
) -> BTreeMap<String, Vec<(String, String)>> {
    let deadline = Instant::now() + timeout;
    loop {
        let b = bootstrap.to_owned();
        let read = tokio::task::block_in_place(|| fates(&b));
        let mut by_reply: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (id, status, reason) in read {
            if ids.contains(&id) {
                by_reply.entry(id).or_default().push((status, reason));
            }
        }
        if by_reply.len() == ids.len() {
            return by_reply;
        }
        if Instant::now() >= deadline {
            let missing: Vec<&String> = ids
                .iter()
                .filter(|id| !by_reply.contains_key(*id))
                .collect();
            panic!(
                "only {} of {} replies have a fate on omni.delivery.v1\n{}",
                by_reply.len(),
                ids.len(),
                whereabouts(bootstrap, &missing, daemons, killed, graph)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// For a failure message: where each missing reply is in the outbound topic, and what every
/// replica, live or killed, logged about it or about the outbound group.
fn whereabouts(
    bootstrap: &str,
    missing: &[&String],
    daemons: &[Daemon],
    killed: &[String],
    graph: &Graph,
) -> String {
    let b = bootstrap.to_owned();
    let (records, committed) = tokio::task::block_in_place(|| {
        (
            omni_e2e::read_log(&b, OUTBOUND, Duration::from_secs(2)),
            omni_e2e::committed_offsets(&b, "omnirouter-outbound", OUTBOUND),
        )
    });
    let mut out = format!("outbound group committed (partition, offset): {committed:?}\n");
    for id in missing {
        let places: Vec<(i32, i64)> = records
            .iter()
            .filter(|r| {
                r.value
                    .as_deref()
                    .and_then(|v| serde_json::from_slice::<Value>(v).ok())
                    .is_some_and(|v| v["id"] == id.as_str())
            })
            .map(|r| (r.partition, r.offset))
            .collect();
        let parts: Vec<String> = graph
            .parts()
            .into_iter()
            .filter(|p| &p.reply == *id)
            .map(|p| p.content)
            .collect();
        out.push_str(&format!(
            "missing {id} at (partition, offset) {places:?}, parts at the Graph: {parts:?}\n"
        ));
    }
    let logs = daemons
        .iter()
        .map(|d| ("live", d.log()))
        .chain(killed.iter().map(|l| ("killed", l.clone())));
    for (i, (state, log)) in logs.enumerate() {
        for line in log.lines().filter(|l| {
            !l.contains("Client stats")
                && (l.contains("omnirouter-outbound")
                    || l.contains("outbound")
                    || missing.iter().any(|id| l.contains(id.as_str())))
        }) {
            out.push_str(&format!("[{i} {state}] {line}\n"));
        }
    }
    out
}

fn env_for(graph: &Graph, tenants: &[&str], extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = cluster_env(tenants);
    env.extend(messenger_env(graph, tenants));
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    env
}

/// What the waves wrote, and what the kills left behind.
#[derive(Default)]
struct Waves {
    /// Every reply written.
    ids: BTreeSet<String>,
    /// Replies whose first part the stand-in answers only after the send timeout.
    slow: BTreeSet<String>,
    /// Parts of the replies that are not slow.
    expected_parts: usize,
    /// Written after the last kill: nothing of theirs was at a killed replica's provider call.
    after_last_kill: BTreeSet<String>,
    /// The logs of the killed replicas, for diagnostics.
    killed_logs: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_reply_part_is_sent_twice_while_replicas_are_killed_and_restarted() {
    let broker = Broker::memory();
    let bootstrap = broker.bootstrap();
    // A part whose text says SLOW is accepted by the stand-in, which then answers only after
    // the send timeout: its fate is unknown and it must not be sent again.
    // Every answer takes 150 ms, so a kill lands while replies are half sent.
    let graph = Graph::start(Duration::from_millis(150), "SLOW", Duration::from_secs(6)).await;
    let tenants = ["t1", "t2", "t3", "t4"];
    let env = env_for(
        &graph,
        &tenants,
        &[
            ("OMNI__MESSENGER__TIMEOUT_SECS", "2"),
            ("OMNI__OUTBOUND__INITIAL_BACKOFF_MS", "100"),
            // Each record's path through the outbound consumer, for a failure message.
            (
                "RUST_LOG",
                "info,omni_bus::consumer=debug,omni_channel::outbound=debug",
            ),
        ],
    );
    let refs = env_refs(&env);
    let mut daemons = Daemon::start_many(&broker, 3, &refs).await;

    let waves = replies_in_waves_with_a_replica_killed_between_them(
        &bootstrap,
        &graph,
        &mut daemons,
        &refs,
        &tenants,
    )
    .await;
    let fates = wait_for_fates(
        &bootstrap,
        &waves.ids,
        Duration::from_secs(120),
        &daemons,
        &waves.killed_logs,
        &graph,
    )
    .await;
    let parts = graph.parts();
    let counts = counts(&parts);
    no_part_reached_the_provider_twice(&counts, &daemons);
    every_reply_has_one_fate_matching_the_parts_sent(&fates, &counts, &waves.slow);
    report_resumes_rejoins_and_rewinds(&daemons, &waves.killed_logs).await;
    let sent = fates.values().filter(|f| f[0].0 == "sent").count();
    let unknown = fates.len() - sent;
    println!(
        "replies: {}, sent: {sent}, outcome_unknown: {unknown} (slow: {}), parts at the provider: {} (expected for sent replies: {})",
        fates.len(),
        waves.slow.len(),
        parts.len(),
        waves.expected_parts
    );
    // Only replies at the provider when their replica was killed may be of unknown fate: the
    // last wave, written after the last kill, is sent in full (its slow reply aside).
    for id in &waves.after_last_kill {
        assert_eq!(
            fates[id][0].0, "sent",
            "{id}, written after the last kill: {:?}",
            fates[id]
        );
    }
}

/// Replies of three parts each (text + two attachments), in four waves of 16; between waves
/// one replica is SIGKILLed while the wave is being sent, and another started in its place.
async fn replies_in_waves_with_a_replica_killed_between_them(
    bootstrap: &str,
    graph: &Graph,
    daemons: &mut [Daemon],
    refs: &[(&str, &str)],
    tenants: &[&str],
) -> Waves {
    let mut w = Waves::default();
    let mut killed: Option<usize> = None;
    for wave in 0..4 {
        let mut batch = Vec::new();
        for i in 0..16 {
            let tenant = tenants[i % tenants.len()];
            let text = if i == 5 {
                format!("w{wave} r{i} SLOW")
            } else {
                format!("w{wave} r{i} text")
            };
            let attachments = vec![
                format!("http://127.0.0.1:9/w{wave}/r{i}/a.jpg"),
                format!("http://127.0.0.1:9/w{wave}/r{i}/b.jpg"),
            ];
            let reply = messenger_reply(tenant, "psid-1", &text, &attachments);
            let id = reply["id"].as_str().unwrap().to_owned();
            if i == 5 {
                w.slow.insert(id.clone());
            } else {
                w.expected_parts += 3;
                if wave == 3 {
                    w.after_last_kill.insert(id.clone());
                }
            }
            w.ids.insert(id);
            batch.push((reply, None));
        }
        produce(bootstrap, &batch);
        if let Some(victim) = killed.take() {
            w.killed_logs.push(daemons[victim].log());
            // The replacement joins at once, before the broker expired the dead member's
            // session: tansu 0.6 may then leave what the dead member held with nobody, and the
            // replicas' outbound consumers rejoin their group to get it assigned again
            // (omni_bus::liveness; see tests/tansu/).
            daemons[victim] = Daemon::spawn(bootstrap, refs);
            daemons[victim].wait_ready(Duration::from_secs(60)).await;
        }
        if wave == 3 {
            break;
        }
        // Kill a replica while this wave is being sent; the next wave is written meanwhile.
        graph
            .wait_for(graph.parts().len() + 3, Duration::from_secs(30))
            .await;
        let victim = wave % daemons.len();
        daemons[victim].terminate_hard();
        killed = Some(victim);
    }

    w
}

/// No part reached the provider twice, whatever the kills interrupted.
fn no_part_reached_the_provider_twice(
    counts: &BTreeMap<(String, String), usize>,
    daemons: &[Daemon],
) {
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "parts sent more than once: {twice:?}\nlogs:\n{}",
        daemons
            .iter()
            .map(Daemon::log)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Every reply has exactly one fate, and the parts at the provider agree with it: a sent reply
/// has all three, a slow one at most its first (reported `outcome_unknown`, not resent), any
/// other unknown one was at the provider when its replica was killed.
fn every_reply_has_one_fate_matching_the_parts_sent(
    fates: &BTreeMap<String, Vec<(String, String)>>,
    counts: &BTreeMap<(String, String), usize>,
    slow: &BTreeSet<String>,
) {
    for (id, fate) in fates {
        let statuses: BTreeSet<&(String, String)> = fate.iter().collect();
        assert_eq!(statuses.len(), 1, "one fate per reply: {id} {fate:?}");
        let (status, reason) = &fate[0];
        let sent_parts = counts.keys().filter(|(r, _)| r == id).count();
        if slow.contains(id) {
            assert_eq!(
                (status.as_str(), reason.as_str()),
                ("failed", "outcome_unknown"),
                "a part accepted whose answer was lost is reported, not resent: {id}"
            );
            // 0 when its replica was killed after recording the part as at the provider and
            // before the stand-in read the request.
            assert!(
                sent_parts <= 1,
                "nothing after the part of unknown fate: {id}: {sent_parts} parts"
            );
        } else if status == "sent" {
            assert_eq!(sent_parts, 3, "every part of a sent reply arrived: {id}");
        } else {
            // A replica killed while a part was at the provider: reported, not resent.
            assert_eq!(reason, "outcome_unknown", "{id}: {fate:?}");
        }
    }
}

/// Prints how often the live replicas took a reply again with stored progress, rejoined the
/// outbound group for partitions without a live owner, and rewound to a committed offset.
async fn report_resumes_rejoins_and_rewinds(daemons: &[Daemon], killed_logs: &[String]) {
    let mut resumed = BTreeMap::new();
    for d in daemons {
        let m = d.metrics().await;
        for state in ["finished", "partial", "at_provider"] {
            let label = format!("state=\"{state}\"");
            *resumed.entry(state).or_insert(0.0) +=
                omni_e2e::metric_value(&m, "omni_outbound_resumed_total", &[label.as_str()]);
        }
    }
    println!("replies taken again with stored progress (live replicas): {resumed:?}");
    let mut rejoins = 0.0;
    for d in daemons {
        rejoins += omni_e2e::metric_value(
            &d.metrics().await,
            "omni_kafka_group_rejoins_total",
            &["group=\"omnirouter-outbound\""],
        );
    }
    println!(
        "outbound group rejoins for partitions without a live owner (live replicas): {rejoins}"
    );
    // tansu skips the rest of a batch fetched from inside it (tests/tansu/): how often a
    // replica had to rewind to its committed offset in this run.
    let rewinds: usize = daemons
        .iter()
        .map(Daemon::log)
        .chain(killed_logs.iter().cloned())
        .map(|log| log.matches("rewinding\"").count())
        .sum();
    println!("partitions rewound to their committed offset (all replicas): {rewinds}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_page_is_held_to_its_rate_across_three_replicas() {
    const RATE: f64 = 4.0;
    /// The Messenger sender's bucket size (`MessengerSender`: 20 sends at once).
    const BURST: f64 = 20.0;
    const REPLIES: usize = 60;
    let broker = Broker::memory();
    let bootstrap = broker.bootstrap();
    let graph = Graph::start(Duration::ZERO, "", Duration::ZERO).await;
    let env = env_for(&graph, &["rt"], &[("OMNI__MESSENGER__RATE_PER_PAGE", "4")]);
    let refs = env_refs(&env);
    let daemons = Daemon::start_many(&broker, 3, &refs).await;

    // A third placed by the contract, the rest pinned to every partition in turn (a CRM that
    // picks partitions itself): without one owner per tenant each replica would send them
    // with a bucket of its own.
    let mut ids = BTreeSet::new();
    let replies: Vec<(Value, Option<i32>)> = (0..REPLIES)
        .map(|i| {
            let reply = messenger_reply("rt", "psid-9", &format!("rate {i}"), &[]);
            ids.insert(reply["id"].as_str().unwrap().to_owned());
            let partition = (i % 3 != 0).then(|| i32::try_from(i % 4).unwrap());
            (reply, partition)
        })
        .collect();
    produce(&bootstrap, &replies);

    let parts = graph.wait_for(REPLIES, Duration::from_secs(90)).await;
    let fates = wait_for_fates(
        &bootstrap,
        &ids,
        Duration::from_secs(60),
        &daemons,
        &[],
        &graph,
    )
    .await;
    assert!(fates.values().all(|f| f[0].0 == "sent"), "{fates:?}");
    // Settle: a late duplicate would show now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let parts = if graph.parts().len() > parts.len() {
        graph.parts()
    } else {
        parts
    };
    assert_eq!(parts.len(), REPLIES, "each reply sent once");
    assert!(parts.iter().all(|p| p.page == page_of("rt")));
    let t0 = parts[0].at;
    for (k, p) in parts.iter().enumerate() {
        let elapsed = p.at.duration_since(t0).as_secs_f64();
        let allowed = BURST + RATE * elapsed + 1.0;
        assert!(
            (k + 1) as f64 <= allowed,
            "send {} came {elapsed:.2}s after the first: over {RATE}/s plus a burst of {BURST}",
            k + 1
        );
    }
    let span = parts.last().unwrap().at.duration_since(t0).as_secs_f64();
    let observed = (REPLIES as f64 - BURST) / span;
    println!("{REPLIES} sends over {span:.2}s: {observed:.2}/s after the burst (limit {RATE}/s)");
    // The misrouted ones were forwarded to the tenant's partition, not sent where they landed.
    let mut forwarded_or_left = 0.0;
    for d in &daemons {
        let m = d.metrics().await;
        forwarded_or_left += omni_e2e::metric_value(&m, "omni_outbound_misrouted_total", &[]);
    }
    assert!(
        forwarded_or_left >= 1.0,
        "the pinned replies were seen on the wrong partitions"
    );
}
