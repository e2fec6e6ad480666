//! Several router replicas on one broker, as three pods behind one Service: the partitioning
//! contract with a CRM that partitions like the Java client, records on the wrong partition,
//! and a chaos run (a replica killed and restarted, one stopped, one joining, while traffic
//! flows) checked from the topics alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use omni_e2e::{command_event, metric_value, python_produce, read_log, read_topic, Broker, Daemon};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const ROUTING: &str = "omni.routing.v1";
const COMMANDS: &str = "omni.commands.v1";
const STATE: &str = "omni.router-state.v1";
const TENANTS: [&str; 4] = ["t1", "t2", "t3", "t4"];
const OUTBOUND: &str = "omni.outbound.v1";
/// Each tenant's Facebook page (customers also write on Messenger).
fn page(tenant: &str) -> String {
    format!("10491234567890{}", &tenant[1..])
}
/// Each tenant's agents take this many conversations at once.
const CAPACITY: u32 = 3;

/// The cluster's environment; every replica listens for the agent API and metrics apart from
/// its webhooks (`server.admin_listen`), as in the Kubernetes manifests, so forwarded reads go
/// to the owner's admin listener.
fn cluster_env() -> Vec<(String, String)> {
    let mut env = omni_e2e::cluster_env(&TENANTS);
    env.push((omni_e2e::ADMIN_LISTEN.into(), omni_e2e::ADMIN_AUTO.into()));
    for t in TENANTS {
        let up = t.to_uppercase();
        env.push((
            format!("OMNI__TENANTS__{up}__MESSENGER__APP_SECRET"),
            format!("META-SECRET-{t}"),
        ));
        env.push((
            format!("OMNI__TENANTS__{up}__MESSENGER__VERIFY_TOKEN"),
            "VERIFY".into(),
        ));
        env.push((
            format!(
                "OMNI__TENANTS__{up}__MESSENGER__PAGES__{}__ACCESS_TOKEN",
                page(t)
            ),
            "PAGE-TOKEN".into(),
        ));
    }
    env
}

/// A customer message on Messenger, signed as Meta signs it; returns nothing (the webhook
/// answers 200 without ids): the test finds its conversation on the inbound topic.
async fn messenger_message(daemon: &Daemon, tenant: &str, psid: &str) {
    let page = page(tenant);
    let body = format!(
        r#"{{"object":"page","entry":[{{"id":"{page}","time":1700000000000,"messaging":[{{"sender":{{"id":"{psid}"}},"recipient":{{"id":"{page}"}},"timestamp":1700000000000,"message":{{"mid":"m_{psid}","text":"chào shop"}}}}]}}]}}"#
    );
    let signature = omni_channel::signature::hmac_sha256_hex(
        format!("META-SECRET-{tenant}").as_bytes(),
        body.as_bytes(),
    );
    let r = reqwest::Client::new()
        .post(daemon.url(&format!("/v1/webhooks/messenger/{tenant}")))
        .header("x-hub-signature-256", format!("sha256={signature}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", daemon.log());
}

async fn post(daemon: &Daemon, path: &str, token: &str, body: Value) -> (u16, Value) {
    omni_e2e::post_json(&daemon.url_for(path), token, &body).await
}

async fn customer_message(daemon: &Daemon, tenant: &str, contact: &str) -> String {
    let (status, v) = post(
        daemon,
        &format!("/v1/inbound/{tenant}"),
        "tok",
        json!({"contact": {"id": contact}, "text": "xin chào", "client_message_id": contact}),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    v["conversation_id"].as_str().unwrap().to_owned()
}

async fn get(daemon: &Daemon, tenant: &str, path: &str) -> (u16, Value, Option<String>) {
    daemon.get_served(tenant, path, "agent").await
}

/// The routing topic as (id → value), failing if one id carries two different contents.
fn routing_events(broker: &Broker) -> Vec<Value> {
    let records = read_topic(
        &broker.bootstrap(),
        ROUTING,
        usize::MAX,
        Duration::from_secs(3),
        Duration::ZERO,
    );
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for r in records {
        let id = r.value["id"].as_str().unwrap().to_owned();
        if let Some(seen) = by_id.get(&id) {
            assert_eq!(
                seen, &r.value,
                "event id {id} carries two different contents"
            );
        } else {
            by_id.insert(id, r.value);
        }
    }
    by_id.into_values().collect()
}

/// The consumer settings every omnirouter group uses give one member the same partition
/// numbers of every topic it reads. (With `cooperative-sticky`, used before, two members over
/// three 4-partition topics got e.g. all of `commands` on one and half of `inbound` on the
/// other: a tenant's agents and its conversations lived in two engines.)
#[test]
fn two_members_get_the_same_partitions_of_every_input_topic() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let broker = Broker::memory();
    let mut bus = omni_bus::BusConfig {
        bootstrap_servers: broker.bootstrap(),
        partitions: 4,
        ..omni_bus::BusConfig::default()
    };
    bus.consumer
        .insert("session.timeout.ms".into(), "6000".into());
    bus.consumer
        .insert("heartbeat.interval.ms".into(), "500".into());
    let topics = ["omni.inbound.v1", "omni.outbound.v1", "omni.commands.v1"];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(omni_bus::ensure_topics(
            &bus,
            std::sync::Arc::new(
                omni_bus::BusMetrics::register(&prometheus::Registry::new()).unwrap(),
            ),
            Duration::from_secs(10),
        ))
        .unwrap();
    let members: Vec<BaseConsumer> = (0..2)
        .map(|_| {
            let c: BaseConsumer = bus.consumer_config("assignment-test").create().unwrap();
            c.subscribe(&topics).unwrap();
            c
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for m in &members {
            let _ = m.poll(Duration::from_millis(50));
        }
        let per_member: Vec<BTreeMap<&str, BTreeSet<i32>>> = members
            .iter()
            .map(|m| {
                let mut got: BTreeMap<&str, BTreeSet<i32>> = BTreeMap::new();
                for e in m.assignment().unwrap().elements() {
                    let t = topics.iter().find(|t| **t == e.topic()).unwrap();
                    got.entry(t).or_default().insert(e.partition());
                }
                got
            })
            .collect();
        let total: usize = per_member
            .iter()
            .flat_map(|m| m.values())
            .map(BTreeSet::len)
            .sum();
        if total == 12 && per_member.iter().all(|m| m.len() == 3) {
            for m in &per_member {
                let first = m.values().next().unwrap();
                assert!(!first.is_empty());
                for (topic, partitions) in m {
                    assert_eq!(
                        partitions, first,
                        "{topic} split from the other topics: {per_member:?}"
                    );
                }
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "assignment never settled: {per_member:?}"
        );
    }
}

/// A CRM in Python with the Java client's partitioning creates an agent; every replica
/// routes to that agent, and a record the CRM pins to the wrong partition is forwarded, not
/// applied where it landed, and counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_crm_partitioning_like_java_and_a_record_on_the_wrong_partition_reach_the_owner() {
    let broker = Broker::memory();
    let env = cluster_env();
    let env_refs = omni_e2e::env_refs(&env);
    let daemons = Daemon::start_many(&broker, 2, &env_refs).await;
    // murmur2 of "t1" among 4 partitions, computed as the Java client does.
    let home = omni_bus::partition_for(b"t1", 4);
    let wrong = (home + 1) % 4;
    let agent = |id: &str| {
        command_event(
            "t1",
            json!({"command": "upsert_agent", "agent": id, "skills": {}, "capacity": 10}),
        )
    };
    let online = |id: &str| {
        command_event(
            "t1",
            json!({"command": "set_presence", "agent": id, "presence": "online"}),
        )
    };
    python_produce(
        &broker.bootstrap(),
        "murmur2_random",
        &[
            (COMMANDS.into(), "t1".into(), agent("crm-agent"), None),
            (COMMANDS.into(), "t1".into(), online("crm-agent"), None),
            // The same kind of record forced onto the wrong partition.
            (
                COMMANDS.into(),
                "t1".into(),
                agent("pinned-agent"),
                Some(wrong),
            ),
            (
                COMMANDS.into(),
                "t1".into(),
                online("pinned-agent"),
                Some(wrong),
            ),
        ],
    );
    both_agents_are_online_on_every_replica(&daemons).await;
    ten_conversations_are_assigned_to_the_crm_agents(&broker, &daemons).await;
    the_pinned_records_were_forwarded_and_never_applied_off_home(&broker, &daemons, home).await;
}

/// Both agents exist on the tenant's owner, whichever replica is asked.
async fn both_agents_are_online_on_every_replica(daemons: &[Daemon]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut ok = 0;
        for d in daemons {
            let (status, body, _) = get(d, "t1", "agents").await;
            let online: BTreeSet<&str> = body["agents"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|a| a["presence"] == "online")
                        .filter_map(|a| a["id"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            if status == 200 && online == BTreeSet::from(["crm-agent", "pinned-agent"]) {
                ok += 1;
            }
        }
        if ok == daemons.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agents not visible from every replica\n{}\n{}",
            daemons[0].log(),
            daemons[1].log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Ten conversations, posted to either replica, go to the CRM's agents.
async fn ten_conversations_are_assigned_to_the_crm_agents(broker: &Broker, daemons: &[Daemon]) {
    let mut conversations = BTreeSet::new();
    for i in 0..10 {
        conversations.insert(customer_message(&daemons[i % 2], "t1", &format!("c{i}")).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = routing_events(broker);
        let assigned: BTreeSet<&str> = events
            .iter()
            .filter(|e| e["type"] == "omni.routing.assigned")
            .filter_map(|e| e["subject"].as_str())
            .collect();
        if conversations.iter().all(|c| assigned.contains(c.as_str())) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} conversations assigned",
            assigned.len(),
            conversations.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The pinned records were forwarded (counted by whichever replica read them) and every
/// command record on the wrong partition stayed unapplied there: no state was ever written
/// for t1 on any partition but `home`, its own.
async fn the_pinned_records_were_forwarded_and_never_applied_off_home(
    broker: &Broker,
    daemons: &[Daemon],
    home: i32,
) {
    let mut misrouted = 0.0;
    for d in daemons {
        misrouted += metric_value(
            &d.metrics().await,
            "omni_router_misrouted_total",
            &["topic=\"omni.commands.v1\""],
        );
    }
    assert!(misrouted >= 2.0, "misrouted records counted: {misrouted}");
    for r in read_log(&broker.bootstrap(), STATE, Duration::from_secs(2)) {
        if r.key.starts_with(b"t1/") {
            assert_eq!(
                r.partition, home,
                "t1 state written on partition {}",
                r.partition
            );
        }
    }
}

/// Three customers per tenant, each posted to a different live replica.
async fn send_round(
    live: &[Daemon],
    conversations: &mut BTreeMap<String, &'static str>,
    round: usize,
) {
    for (i, t) in TENANTS.iter().enumerate() {
        for j in 0..3 {
            let d = &live[(i + j + round) % live.len()];
            let c = customer_message(d, t, &format!("{t}-r{round}-{j}")).await;
            conversations.insert(c, t);
        }
        let d = &live[(i + round) % live.len()];
        messenger_message(
            d,
            t,
            &format!("{}{round}", 5_384_937_120_339_286_u64 + i as u64),
        )
        .await;
    }
}

/// Three replicas, four tenants, agents from the HTTP API and from a Python CRM; one replica
/// is killed and replaced, another stopped, a fourth joins, while customers keep writing.
#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_survive_a_crash_a_stop_and_a_join_with_every_invariant_intact() {
    let broker = Broker::memory();
    let env = cluster_env();
    let env_refs = omni_e2e::env_refs(&env);
    let mut live: Vec<Daemon> = Daemon::start_many(&broker, 3, &env_refs).await;

    every_tenant_gets_an_agent_from_the_api_and_one_from_a_python_crm(&broker, &live).await;
    let (mut conversations, rounds) =
        customers_write_through_a_crash_a_stop_and_a_join(&broker, &mut live, &env_refs).await;
    messenger_customers_are_published(&broker, &mut conversations, rounds);
    let events =
        every_conversation_is_decided_and_every_agent_filled(&broker, &live, &conversations).await;
    no_conversation_is_assigned_twice_and_no_agent_over_capacity(&events);
    no_two_instances_applied_one_tenant_at_once(&broker);
    replies_from_the_api_and_the_crm_reach_each_tenants_owner(&broker, &live, &conversations).await;
    reads_answer_from_every_replica_served_by_the_owner(&live).await;
}

/// Per tenant: one agent from the HTTP API (any replica), one from the Python CRM.
async fn every_tenant_gets_an_agent_from_the_api_and_one_from_a_python_crm(
    broker: &Broker,
    live: &[Daemon],
) {
    for (i, t) in TENANTS.iter().enumerate() {
        let d = &live[i % live.len()];
        for body in [
            json!({"command": "upsert_agent", "agent": "api-agent", "skills": {}, "capacity": CAPACITY}),
            json!({"command": "set_presence", "agent": "api-agent", "presence": "online"}),
        ] {
            let (status, v) = post(d, &format!("/v1/tenants/{t}/commands"), "agent", body).await;
            assert_eq!(status, 202, "{v}");
        }
    }
    let crm: Vec<_> = TENANTS
        .iter()
        .flat_map(|t| {
            [
                json!({"command": "upsert_agent", "agent": "crm-agent", "skills": {}, "capacity": CAPACITY}),
                json!({"command": "set_presence", "agent": "crm-agent", "presence": "online"}),
            ]
            .map(|data| (COMMANDS.to_owned(), (*t).to_owned(), command_event(t, data), None))
        })
        .collect();
    python_produce(&broker.bootstrap(), "murmur2_random", &crm);
}

/// Customers of every tenant write through every live replica while a replica crashes (and is
/// replaced at once), another is stopped gracefully and a new one joins. Returns every
/// conversation with its tenant, and the number of rounds sent.
async fn customers_write_through_a_crash_a_stop_and_a_join(
    broker: &Broker,
    live: &mut Vec<Daemon>,
    env_refs: &[(&str, &str)],
) -> (BTreeMap<String, &'static str>, usize) {
    let mut conversations: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut round = 0;
    send_round(live, &mut conversations, round).await;

    // The replica owning the most tenants crashes; its replacement starts at once.
    round += 1;
    live.remove(busiest_owner(live).await).terminate_hard();
    live.push(Daemon::start(broker, env_refs).await);
    send_round(live, &mut conversations, round).await;

    // The replica owning the most tenants is stopped gracefully (SIGTERM: it commits and
    // leaves the group).
    round += 1;
    let mut stopped = live.remove(busiest_owner(live).await);
    let status = tokio::task::block_in_place(|| stopped.terminate(Duration::from_secs(30)));
    assert!(status.is_some_and(|s| s.success()), "{}", stopped.log());
    send_round(live, &mut conversations, round).await;

    // A replica joins.
    round += 1;
    live.push(Daemon::start(broker, env_refs).await);
    send_round(live, &mut conversations, round).await;
    (conversations, round + 1)
}

/// The index in `live` of the replica that answers reads for the most tenants, once every
/// tenant is answered by a live replica: crashing or stopping it is sure to force a takeover.
async fn busiest_owner(live: &[Daemon]) -> usize {
    let mut owned = vec![0; live.len()];
    for t in TENANTS {
        owned[owner_of(live, t).await] += 1;
    }
    (0..live.len()).max_by_key(|&i| owned[i]).unwrap()
}

/// The index in `live` of the replica answering `tenant`'s reads (as named by the
/// `x-omni-served-by` header), waiting until a live replica does.
async fn owner_of(live: &[Daemon], tenant: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body, served_by) = get(&live[0], tenant, "agents").await;
        let owner = served_by
            .as_deref()
            .and_then(pid_of_member)
            .and_then(|pid| live.iter().position(|d| d.pid() == Some(pid)));
        match owner {
            Some(i) if status == 200 => return i,
            _ => assert!(
                Instant::now() < deadline,
                "tenant {tenant} has no live owner: {status} {served_by:?} {body}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The process id in a router member name (`<host>-<pid>-<random>`).
fn pid_of_member(member: &str) -> Option<u32> {
    member.rsplit('-').nth(1)?.parse().ok()
}

/// Messenger conversations, from the inbound topic (their ids are derived, not answered).
fn messenger_customers_are_published(
    broker: &Broker,
    conversations: &mut BTreeMap<String, &'static str>,
    rounds: usize,
) {
    let inbound = read_topic(
        &broker.bootstrap(),
        "omni.inbound.v1",
        usize::MAX,
        Duration::from_secs(3),
        Duration::ZERO,
    );
    let mut on_messenger = 0;
    for r in &inbound {
        if r.value["data"]["channel"]["kind"] == "messenger" {
            let t = TENANTS
                .iter()
                .find(|t| r.key == t.as_bytes())
                .expect("inbound keyed by a known tenant");
            conversations.insert(
                r.value["data"]["conversation_id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                t,
            );
            on_messenger += 1;
        }
    }
    assert_eq!(
        on_messenger,
        TENANTS.len() * rounds,
        "messenger customers published"
    );
}

/// Wait until every conversation has a routing decision and every tenant's two agents are
/// full (capacity 3 each, more conversations than that per tenant). Returns the routing events.
async fn every_conversation_is_decided_and_every_agent_filled(
    broker: &Broker,
    live: &[Daemon],
    conversations: &BTreeMap<String, &'static str>,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let events = routing_events(broker);
        let decided: BTreeSet<&str> = events
            .iter()
            .filter(|e| {
                matches!(
                    e["type"].as_str(),
                    Some("omni.routing.queued" | "omni.routing.assigned" | "omni.routing.offered")
                )
            })
            .filter_map(|e| e["subject"].as_str())
            .collect();
        let undecided = conversations
            .keys()
            .filter(|c| !decided.contains(c.as_str()))
            .count();
        let mut full = 0;
        for t in TENANTS {
            let n = events
                .iter()
                .filter(|e| e["type"] == "omni.routing.assigned" && e["tenant"] == t)
                .count();
            if n >= 2 * CAPACITY as usize {
                full += 1;
            }
        }
        if undecided == 0 && full == TENANTS.len() {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "{undecided} conversations without a routing decision, {full} tenants full\nlogs:\n{}",
            live.iter()
                .map(Daemon::log)
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Each conversation assigned at most once (one contact each, nobody resolves), and no
/// agent ever over capacity, reconstructed from the decisions.
fn no_conversation_is_assigned_twice_and_no_agent_over_capacity(events: &[Value]) {
    let mut assignments: BTreeMap<&str, usize> = BTreeMap::new();
    let mut load: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e["type"] == "omni.routing.assigned")
    {
        let conv = e["subject"].as_str().unwrap();
        *assignments.entry(conv).or_default() += 1;
        let agent = e["data"]["agent"].as_str().unwrap();
        let l = load
            .entry((e["tenant"].as_str().unwrap(), agent))
            .or_default();
        *l += 1;
        assert!(*l <= CAPACITY, "agent {agent} over capacity: {l}");
    }
    for (conv, n) in &assignments {
        assert_eq!(*n, 1, "conversation {conv} assigned {n} times");
    }
    // The CRM's agent got work in every tenant.
    for t in TENANTS {
        assert_eq!(
            load.get(&(t, "crm-agent")),
            Some(&CAPACITY),
            "tenant {t}: {load:?}"
        );
    }
}

/// No two instances applied one tenant at once: per state partition, in log order, a claim
/// takes force only with a higher epoch (of two claims of one epoch the first wins and the
/// other claimant backs off), and every state record carries the epoch and member of the
/// claim in force where it was written.
fn no_two_instances_applied_one_tenant_at_once(broker: &Broker) {
    let mut claims = 0;
    let mut in_force: BTreeMap<i32, (u64, String)> = BTreeMap::new();
    for r in read_log(&broker.bootstrap(), STATE, Duration::from_secs(2)) {
        let header = |name: &str| {
            String::from_utf8(
                r.headers
                    .get(name)
                    .unwrap_or_else(|| panic!("state record without {name}"))
                    .clone(),
            )
            .unwrap()
        };
        let epoch: u64 = header("omni-owner-epoch").parse().unwrap();
        let member = header("omni-owner");
        let current = in_force.entry(r.partition).or_default();
        if r.key.starts_with(b"~owner/") {
            if epoch > current.0 {
                *current = (epoch, member);
                claims += 1;
            }
        } else {
            assert_eq!(
                (epoch, &member),
                (current.0, &current.1),
                "partition {} offset {}: a write of {member}'s epoch {epoch} while {}'s epoch {} owned it",
                r.partition,
                r.offset,
                current.1,
                current.0
            );
        }
    }
    // Every partition was claimed, and the busiest owner's crash and stop each moved at
    // least one partition to a new claim.
    assert!(
        claims >= in_force.len() + 2,
        "{claims} claims on {} partitions over a crash and a stop",
        in_force.len()
    );
}

/// Agents answer the first conversation of each tenant (now known to its engine: replies
/// and customer messages are on two topics, with no order between them): through the HTTP
/// API of any replica, and as a Python CRM writing omni.outbound.v1 with murmur2.
/// Both replies reached each tenant's owner: one first response per tenant on /metrics
/// (summed over the replicas: the owner counts it).
async fn replies_from_the_api_and_the_crm_reach_each_tenants_owner(
    broker: &Broker,
    live: &[Daemon],
    conversations: &BTreeMap<String, &'static str>,
) {
    let mut python_replies = Vec::new();
    for (i, t) in TENANTS.iter().enumerate() {
        let (conv, _) = conversations.iter().find(|(_, tt)| *tt == t).unwrap();
        let body = json!({"conversation_id": conv, "channel": {"kind": "api", "account": "default"},
            "recipient": format!("{t}-r0-0"), "text": "Dạ, shop nghe ạ", "agent_id": "api-agent"});
        let (status, v) = post(
            &live[i % live.len()],
            &format!("/v1/tenants/{t}/replies"),
            "agent",
            body,
        )
        .await;
        assert_eq!(status, 202, "{v}");
        python_replies.push((
            OUTBOUND.to_owned(),
            (*t).to_owned(),
            json!({
                "specversion": "1.0", "id": omni_e2e::uuid_like(), "source": "/crm/python",
                "type": "omni.message.send", "time": chrono::Utc::now().to_rfc3339(),
                "datacontenttype": "application/json", "subject": conv, "tenant": t,
                "data": {"tenant": t, "conversation_id": conv,
                         "channel": {"kind": "api", "account": "default"},
                         "recipient": format!("{t}-r0-0"), "text": "Shop gửi thêm thông tin ạ",
                         "agent_id": "crm-agent"}
            }),
            None,
        ));
    }
    python_produce(&broker.bootstrap(), "murmur2_random", &python_replies);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut answered = 0;
        for t in TENANTS {
            let label = format!("tenant=\"{t}\"");
            let mut first = 0.0;
            for d in live {
                first += metric_value(
                    &d.metrics().await,
                    "omni_first_response_seconds_count",
                    &[&label],
                );
            }
            if first >= 1.0 {
                answered += 1;
            }
        }
        if answered == TENANTS.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "first responses seen for {answered} tenants"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Reads answer 200 from every live replica for every tenant, served by the owner.
async fn reads_answer_from_every_replica_served_by_the_owner(live: &[Daemon]) {
    for t in TENANTS {
        let mut owners = BTreeSet::new();
        for d in live {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (status, body, served_by) = get(d, t, "agents").await;
                if status == 200 {
                    assert_eq!(body["agents"].as_array().unwrap().len(), 2, "{body}");
                    let member = served_by.expect("answer without x-omni-served-by");
                    let pid = pid_of_member(&member);
                    assert!(
                        live.iter().any(|d| d.pid() == pid && pid.is_some()),
                        "tenant {t} served by {member}, not a live replica"
                    );
                    owners.insert(member);
                    break;
                }
                assert!(Instant::now() < deadline, "tenant {t}: {status} {body}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        assert_eq!(owners.len(), 1, "tenant {t} served by {owners:?}");
    }
}
