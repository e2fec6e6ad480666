//! Routing end to end: the daemon's router against the real broker — assignment, the first
//! response time on /metrics, state surviving a restart, and failover between two instances.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use omni_e2e::{metric_value, read_topic, Broker, Daemon};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const ROUTING: &str = "omni.routing.v1";

struct Api<'a> {
    daemon: &'a Daemon,
    tenant: &'a str,
    token: &'a str,
}

impl Api<'_> {
    async fn command(&self, body: Value) {
        let r = reqwest::Client::new()
            .post(
                self.daemon
                    .url(&format!("/v1/tenants/{}/commands", self.tenant)),
            )
            .bearer_auth(self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let (status, body, _) = self.get_served(path).await;
        (status, body)
    }

    /// GET `path` with the instance that answered it (`X-Omni-Served-By`).
    async fn get_served(&self, path: &str) -> (u16, Value, Option<String>) {
        self.daemon.get_served(self.tenant, path, self.token).await
    }

    async fn agent_online(&self, agent: &str, skills: Value, capacity: u32) {
        self.command(json!({"command": "upsert_agent", "agent": agent, "skills": skills, "capacity": capacity}))
            .await;
        self.command(json!({"command": "set_presence", "agent": agent, "presence": "online"}))
            .await;
    }

    /// Waits until `check` accepts what GET `path` returns.
    async fn wait_for(&self, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.get(path).await;
            if status == 200 && check(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: last answer {status} {body}\nlog:\n{}",
                self.daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn customer_message(
    daemon: &Daemon,
    tenant: &str,
    token: &str,
    contact: &str,
    text: &str,
) -> String {
    let r = reqwest::Client::new()
        .post(daemon.url(&format!("/v1/inbound/{tenant}")))
        .bearer_auth(token)
        .json(&json!({"contact": {"id": contact, "language": "vi"}, "text": text, "client_message_id": format!("{contact}-{text}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let v: Value = r.json().await.unwrap();
    v["conversation_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_posted_conversation_is_assigned_and_its_first_response_time_is_on_metrics() {
    let broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[]).await;
    let api = Api {
        daemon: &daemon,
        tenant: "demo",
        token: "demo-agent-token",
    };
    api.agent_online("lan", json!({"vi": 4}), 3).await;
    // An agent without the queue's skill (vi) never gets it.
    api.agent_online("john", json!({"en": 5}), 3).await;
    let conv = customer_message(&daemon, "demo", "demo-token", "cust-1", "Chào shop").await;

    let view = api
        .wait_for(&format!("conversations/{conv}"), "assignment", |v| {
            // The history follows the state once the decision is written to Kafka.
            v["state"] == "assigned"
                && v["history"]
                    .as_array()
                    .is_some_and(|h| h.iter().any(|e| e["type"] == "omni.routing.assigned"))
        })
        .await;
    assert_eq!(view["agent"], "lan");
    assert_eq!(view["queue"], "general");
    let assigned = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "omni.routing.assigned")
        .cloned()
        .unwrap();
    assert!(assigned["data"]["explanation"]["reason"]
        .as_str()
        .unwrap()
        .contains("least loaded"));

    // The agent answers through the API (published to omni.outbound.v1 for the channel).
    let r = reqwest::Client::new()
        .post(daemon.url("/v1/tenants/demo/replies"))
        .bearer_auth("demo-agent-token")
        .json(
            &json!({"conversation_id": conv, "channel": {"kind": "api", "account": "default"},
                      "recipient": "cust-1", "text": "Dạ, shop chào bạn ạ", "agent_id": "lan"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = daemon.metrics().await;
        let labels = ["tenant=\"demo\"", "queue=\"general\"", "channel=\"api\""];
        if metric_value(&m, "omni_first_response_seconds_count", &labels) >= 1.0 {
            assert_eq!(
                metric_value(&m, "omni_queue_wait_seconds_count", &labels),
                1.0
            );
            assert_eq!(
                metric_value(&m, "omni_response_seconds_count", &labels),
                1.0
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no first response on /metrics:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The decision is on omni.routing.v1 as a CloudEvent keyed by tenant.
    let records = read_topic(
        &broker.bootstrap(),
        ROUTING,
        2,
        Duration::from_secs(20),
        Duration::from_secs(1),
    );
    let assigned: Vec<_> = records
        .iter()
        .filter(|r| r.value["type"] == "omni.routing.assigned")
        .collect();
    assert_eq!(assigned.len(), 1, "{records:?}");
    assert_eq!(assigned[0].key, b"demo");
    assert_eq!(assigned[0].value["subject"], conv.as_str());
    assert_eq!(assigned[0].value["data"]["agent"], "lan");
}

#[tokio::test(flavor = "multi_thread")]
async fn routing_state_survives_a_restart() {
    let broker = Broker::memory();
    let mut daemon = Daemon::start(&broker, &[]).await;
    let api = Api {
        daemon: &daemon,
        tenant: "demo",
        token: "demo-agent-token",
    };
    api.agent_online("lan", json!({"vi": 4}), 1).await;
    let first = customer_message(&daemon, "demo", "demo-token", "cust-1", "một").await;
    api.wait_for(&format!("conversations/{first}"), "first assignment", |v| {
        v["state"] == "assigned"
    })
    .await;
    let status = tokio::task::spawn_blocking(move || {
        let s = daemon.terminate(Duration::from_secs(30));
        (s, daemon)
    })
    .await
    .unwrap();
    assert!(status.0.unwrap().success());

    let daemon = Daemon::start(&broker, &[]).await;
    let api = Api {
        daemon: &daemon,
        tenant: "demo",
        token: "demo-agent-token",
    };
    // A second customer: lan is full (capacity 1) — only a restored state knows that.
    let second = customer_message(&daemon, "demo", "demo-token", "cust-2", "hai").await;
    let view = api
        .wait_for(&format!("conversations/{second}"), "second queued", |v| {
            v["state"] == "waiting"
        })
        .await;
    assert_eq!(view["agent"], Value::Null);
    let (_, first_view) = api.get(&format!("conversations/{first}")).await;
    assert_eq!(first_view["state"], "assigned");
    assert_eq!(first_view["agent"], "lan");
    // Resolving the first frees lan, and the second is assigned at once.
    api.command(json!({"command": "resolve", "conversation": first}))
        .await;
    api.wait_for(&format!("conversations/{second}"), "second assigned", |v| {
        v["agent"] == "lan"
    })
    .await;
}

fn cluster_env() -> Vec<(String, String)> {
    omni_e2e::cluster_env(&TENANTS)
}

const TENANTS: [&str; 4] = ["t1", "t2", "t3", "t4"];

/// How a router instance goes away in a failover test.
enum Departure {
    /// SIGTERM: it leaves the group, commits and flushes.
    Stopped,
    /// SIGKILL: nothing is committed or flushed; a replacement instance joins, as an
    /// orchestrator would start one.
    Crashed,
}

/// Two instances share four tenants; one goes away mid-stream; afterwards every conversation
/// is assigned exactly once (replays repeat the same event ids) and the remaining instances'
/// state holds exactly the load the decisions say.
async fn failover(departure: Departure) {
    let broker = Broker::memory();
    let env = cluster_env();
    let env_refs = omni_e2e::env_refs(&env);
    let mut a = Daemon::start(&broker, &env_refs).await;
    let b = Daemon::start(&broker, &env_refs).await;
    for t in TENANTS {
        let api = Api {
            daemon: &b,
            tenant: t,
            token: "agent",
        };
        api.agent_online("agent-1", json!({}), 1000).await;
    }
    let mut conversations: BTreeMap<String, &str> = BTreeMap::new();
    for i in 0..10 {
        for t in TENANTS {
            let c = customer_message(&a, t, "tok", &format!("{t}-early-{i}"), "xin chào").await;
            conversations.insert(c, t);
        }
    }
    if let Err(e) = wait_assigned(&broker, &conversations, Duration::from_secs(60)).await {
        panic!("{e}\nlogs:\n{}\n{}", a.log(), b.log());
    }
    let replacement = match departure {
        Departure::Stopped => {
            let status = tokio::task::block_in_place(|| a.terminate(Duration::from_secs(30)));
            assert!(status.is_some_and(|s| s.success()));
            None
        }
        Departure::Crashed => {
            a.terminate_hard();
            // The orchestrator starts a replacement at once, while the dead member may still
            // be listed in the group: owner epochs keep the two from both applying a tenant.
            Some(Daemon::start(&broker, &env_refs).await)
        }
    };
    for i in 0..10 {
        for t in TENANTS {
            let c = customer_message(&b, t, "tok", &format!("{t}-late-{i}"), "còn ai không?").await;
            conversations.insert(c, t);
        }
    }
    let assigned = match wait_assigned(&broker, &conversations, Duration::from_secs(90)).await {
        Ok(a) => a,
        Err(e) => panic!(
            "{e}\nsurvivor log:\n{}\nreplacement log:\n{}",
            b.log(),
            replacement.as_ref().map(Daemon::log).unwrap_or_default()
        ),
    };
    for (conv, ids) in &assigned {
        assert_eq!(
            ids.len(),
            1,
            "conversation {conv} assigned by {} distinct decisions",
            ids.len()
        );
    }
    // Each tenant is held by one remaining instance, whose restored state has the exact load;
    // every instance answers its reads, the other one by forwarding to the owner.
    let instances: Vec<&Daemon> = std::iter::once(&b).chain(replacement.as_ref()).collect();
    for t in TENANTS {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut owners = BTreeSet::new();
            let mut exact = 0;
            for d in &instances {
                let api = Api {
                    daemon: d,
                    tenant: t,
                    token: "agent",
                };
                let (status, body, served_by) = api.get_served("agents").await;
                if status == 200 && body["agents"][0]["open"] == 20 {
                    exact += 1;
                    owners.extend(served_by);
                }
            }
            if exact == instances.len() && owners.len() == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tenant {t}: {exact} of {} instances answer 20 open, served by {owners:?}",
                instances.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn when_one_router_stops_the_other_takes_over_with_nothing_lost_or_assigned_twice() {
    failover(Departure::Stopped).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_router_is_taken_over_with_nothing_lost_or_assigned_twice() {
    failover(Departure::Crashed).await;
}

/// Reads omni.routing.v1 until every conversation has an assignment; returns the distinct
/// assignment event ids per conversation.
async fn wait_assigned(
    broker: &Broker,
    conversations: &BTreeMap<String, &str>,
    timeout: Duration,
) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let bootstrap = broker.bootstrap();
        let records = tokio::task::spawn_blocking(move || {
            read_topic(
                &bootstrap,
                ROUTING,
                usize::MAX,
                Duration::from_secs(3),
                Duration::ZERO,
            )
        })
        .await
        .unwrap();
        let mut assigned: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for r in records
            .iter()
            .filter(|r| r.value["type"] == "omni.routing.assigned")
        {
            let conv = r.value["subject"].as_str().unwrap_or_default().to_owned();
            assert_eq!(
                Some(&std::str::from_utf8(&r.key).unwrap()),
                conversations
                    .get(&conv)
                    .or(Some(&std::str::from_utf8(&r.key).unwrap())),
                "event keyed by the wrong tenant"
            );
            assigned
                .entry(conv)
                .or_default()
                .insert(r.value["id"].as_str().unwrap().to_owned());
        }
        let missing: Vec<&String> = conversations
            .keys()
            .filter(|c| !assigned.contains_key(*c))
            .collect();
        if missing.is_empty() {
            return Ok(assigned);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} conversations never assigned, e.g. {:?}",
                missing.len(),
                missing.first()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// lan takes a first customer, answers and resolves: she is in wrap-up (her one place still
/// taken), her day counts the conversation, and /metrics has the handling time and the
/// wrap-up gauge.
async fn a_resolved_chat_leaves_its_agent_in_wrap_up_with_her_day_counted(
    daemon: &Daemon,
    api: &Api<'_>,
) {
    api.agent_online("lan", json!({"vi": 4}), 1).await;
    let first = customer_message(daemon, "demo", "demo-token", "cust-1", "Chào shop").await;
    api.wait_for(&format!("conversations/{first}"), "assignment", |v| {
        v["state"] == "assigned"
    })
    .await;
    api.command(json!({"command": "agent_replied", "conversation": first, "agent": "lan"}))
        .await;
    api.command(json!({"command": "resolve", "conversation": first}))
        .await;
    // Resolved, and lan is in wrap-up: her one place is still taken; her day counts it.
    let agents = api
        .wait_for("agents", "wrap-up", |v| v["agents"][0]["wrap_up"] == 1)
        .await;
    let lan = &agents["agents"][0];
    assert_eq!(lan["open"], 0);
    assert_eq!(lan["today"]["handled"], 1);
    assert!(lan["today"]["aht_secs"].as_f64().is_some(), "{lan}");
    assert!(
        lan["today"]["first_response_secs"].as_f64().is_some(),
        "{lan}"
    );
    assert!(
        lan["today"]["occupancy"].as_f64().is_some_and(|o| o > 0.0),
        "{lan}"
    );
    wait_metric(
        daemon,
        "omni_handling_seconds_count",
        &["queue=\"general\""],
        1.0,
    )
    .await;
    wait_metric(
        daemon,
        "omni_agents_working",
        &["tenant=\"demo\"", "activity=\"wrap_up\""],
        1.0,
    )
    .await;
}

/// Events of `event_type` on omni.routing.v1 so far (waits until at least one is there).
fn routing_events(broker: &Broker, event_type: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let records = read_topic(
            &broker.bootstrap(),
            ROUTING,
            usize::MAX,
            Duration::from_secs(2),
            Duration::ZERO,
        );
        let found: Vec<Value> = records
            .into_iter()
            .filter(|r| r.value["type"] == event_type)
            .map(|r| r.value)
            .collect();
        if !found.is_empty() {
            return found;
        }
        assert!(Instant::now() < deadline, "no {event_type} on {ROUTING}");
    }
}

/// Waits until `/metrics` has `name{labels}` at `want`.
async fn wait_metric(daemon: &Daemon, name: &str, labels: &[&str], want: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = daemon.metrics().await;
        if (metric_value(&m, name, labels) - want).abs() < 1e-9 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} is not {want}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrap_up_abandonment_and_the_agent_s_day_show_on_the_api_the_topic_and_metrics() {
    let broker = Broker::memory();
    let daemon = Daemon::start(
        &broker,
        &[
            (
                "OMNI__TENANTS__DEMO__ROUTING__QUEUES__GENERAL__WRAP_UP_SECS",
                "600",
            ),
            (
                "OMNI__TENANTS__DEMO__ROUTING__QUEUES__GENERAL__ABANDON_AFTER_SECS",
                "2",
            ),
        ],
    )
    .await;
    let api = Api {
        daemon: &daemon,
        tenant: "demo",
        token: "demo-agent-token",
    };
    a_resolved_chat_leaves_its_agent_in_wrap_up_with_her_day_counted(&daemon, &api).await;
    // A second customer waits (nobody free) and gives up after the queue's 2 s.
    let second = customer_message(&daemon, "demo", "demo-token", "cust-2", "Alo").await;
    let abandoned = routing_events(&broker, "omni.routing.abandoned");
    assert_eq!(abandoned.len(), 1, "{abandoned:?}");
    assert_eq!(abandoned[0]["subject"], second.as_str());
    assert_eq!(abandoned[0]["data"]["reason"], "patience");
    wait_metric(
        &daemon,
        "omni_conversations_abandoned_total",
        &["queue=\"general\"", "channel=\"api\""],
        1.0,
    )
    .await;

    // lan is ready: the wrap-up ends, is measured, and the next customer goes to her at once.
    api.command(json!({"command": "ready", "agent": "lan"}))
        .await;
    api.wait_for("agents", "ready", |v| v["agents"][0]["wrap_up"] == 0)
        .await;
    wait_metric(
        &daemon,
        "omni_wrap_up_seconds_count",
        &["queue=\"general\""],
        1.0,
    )
    .await;
    let third = customer_message(&daemon, "demo", "demo-token", "cust-3", "Xin chào").await;
    api.wait_for(&format!("conversations/{third}"), "assignment", |v| {
        v["state"] == "assigned" && v["agent"] == "lan"
    })
    .await;
    // The wait estimates told each customer: none for the second (nobody free and a single
    // assignment to judge the pace by), no wait for the third (an agent free).
    let queued = routing_events(&broker, "omni.routing.queued");
    let estimate = |conv: &str| {
        queued
            .iter()
            .find(|e| e["subject"] == conv)
            .map(|e| e["data"]["estimated_wait_secs"].clone())
            .unwrap_or_else(|| panic!("no queued event for {conv}: {queued:?}"))
    };
    assert_eq!(estimate(&second), Value::Null);
    assert_eq!(estimate(&third), json!(0));
}
