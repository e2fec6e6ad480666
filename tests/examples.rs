//! The CRM examples of `examples/` against a daemon and the real broker: each puts its agent
//! online over Kafka, reads the customer's conversation and its assignment, and replies on
//! `omni.outbound.v1` as the contract asks (keyed by tenant on the murmur2 partition, a
//! structured-mode CloudEvent with its content-type header), which the router counts as the
//! conversation's first response.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use omni_e2e::{metric_value, read_log, workspace, Broker, Daemon, LogRead};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const OUTBOUND: &str = "omni.outbound.v1";
const INBOUND: &str = "omni.inbound.v1";
/// How long an example may take to reply (its own `--max-seconds` is a little longer, so the
/// test's failure, with the output so far, comes first).
const REPLY_WITHIN: Duration = Duration::from_secs(90);

/// An example running as a child process, its stdout collected line by line; killed on drop.
struct Example {
    name: &'static str,
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Example {
    fn spawn(name: &'static str, mut cmd: Command) -> Self {
        let mut child = cmd
            .current_dir(workspace())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start the {name} example: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let lines = stdout.clone();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let text = stderr.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut text = text.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Self {
            name,
            child,
            stdout,
            stderr,
        }
    }

    /// The JSON lines printed so far (a line that is not JSON fails the test: stdout is the
    /// example's report, one JSON object per line).
    fn reports(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{}: not a JSON line ({e}): {l}", self.name))
            })
            .collect()
    }

    /// What the example printed, for failure messages.
    fn output(&self) -> String {
        format!(
            "{} stdout:\n{}\n{} stderr:\n{}",
            self.name,
            self.stdout.lock().unwrap().join("\n"),
            self.name,
            self.stderr.lock().unwrap()
        )
    }

    /// Waits until a report satisfies `check`, failing if the example exits first or `timeout`
    /// passes.
    async fn wait_for(&mut self, what: &str, timeout: Duration, check: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.reports().iter().any(&check) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // Its last lines may still be in the pipe.
                tokio::time::sleep(Duration::from_millis(200)).await;
                assert!(
                    self.reports().iter().any(&check),
                    "{what}: the example exited ({status}) without it\n{}",
                    self.output()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the example to exit by itself; its exit status.
    async fn exit_status(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the example did not exit within {timeout:?}\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The arguments both examples take.
fn crm_args(broker: &Broker, agent: &str, reply: &str) -> Vec<String> {
    [
        "--bootstrap",
        &broker.bootstrap(),
        "--tenant",
        "demo",
        "--agent",
        agent,
        "--reply",
        reply,
        "--replies",
        "1",
        "--max-seconds",
        &(REPLY_WITHIN.as_secs() + 30).to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

fn python_example(broker: &Broker, agent: &str, reply: &str) -> Example {
    let python = workspace().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: `make deps` creates .venv with confluent-kafka",
        python.display()
    );
    let mut cmd = Command::new(python);
    cmd.arg("examples/python/crm.py")
        .args(crm_args(broker, agent, reply));
    Example::spawn("python", cmd)
}

fn node_example(broker: &Broker, agent: &str, reply: &str) -> Example {
    let kafkajs: PathBuf = workspace().join("examples/node/node_modules/kafkajs");
    assert!(
        kafkajs.exists(),
        "{} missing: `make deps` runs `npm ci --prefix examples/node`",
        kafkajs.display()
    );
    let mut cmd = Command::new("node");
    // tansu 0.6 refuses kafkajs's InitProducerId v1: the example's documented opt-out.
    cmd.arg("examples/node/crm.js")
        .args(crm_args(broker, agent, reply))
        .arg("--no-idempotence");
    Example::spawn("node", cmd)
}

/// Reads `topic` from the beginning until records satisfy `check` (or fails after 30 s); all
/// those that do.
async fn wait_for_records(
    broker: &Broker,
    topic: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Vec<(LogRead, Value)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bootstrap = broker.bootstrap();
        let topic_name = topic.to_owned();
        let log = tokio::task::spawn_blocking(move || {
            read_log(&bootstrap, &topic_name, Duration::from_secs(1))
        })
        .await
        .unwrap();
        let found: Vec<(LogRead, Value)> = log
            .iter()
            .filter_map(|r| {
                let value: Value = serde_json::from_slice(r.value.as_deref()?).ok()?;
                check(&value).then(|| (r.clone(), value))
            })
            .collect();
        if !found.is_empty() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no such record on {topic}: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The whole CRM flow with one example: agent online, a customer writes, the router assigns the
/// conversation to the example's agent, the example replies, the router counts the reply.
async fn crm_example_replies_to_its_assigned_conversation(
    start: fn(&Broker, &str, &str) -> Example,
    agent: &str,
) {
    // SQLite storage, as `make run`: it hands out record batches as their producer wrote them
    // (omnirouter's LZ4 frames with block checksums), as Kafka does.
    let broker = Broker::durable();
    let daemon = Daemon::start(&broker, &[]).await;
    let reply_text = format!("Dạ, {agent} chào anh/chị ạ.");
    let mut example = start(&broker, agent, &reply_text);

    example
        .wait_for("the agent online", REPLY_WITHIN, |r| {
            r["did"] == "agent_online" && r["agent"] == agent
        })
        .await;
    // The router has the agent (from the example's commands on omni.commands.v1) online with
    // the `general` queue's skill before the customer writes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, agents, _) = daemon
            .get_served("demo", "agents", "demo-agent-token")
            .await;
        let online = agents["agents"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["id"] == agent && x["presence"] == "online")
        });
        if status == 200 && online {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent {agent} not online in the router: {status} {agents}\n{}\nlog:\n{}",
            example.output(),
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A Vietnamese-speaking customer: the `general` queue (skill vi), where the agent is.
    let (status, accepted) = omni_e2e::post_json(
        &daemon.url("/v1/inbound/demo"),
        "demo-token",
        &json!({"contact": {"id": "cust-1", "name": "Chị Hoa", "language": "vi"},
                "text": "Chào shop, đơn hàng của em đâu rồi ạ?", "client_message_id": "m-1"}),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let conv = accepted["conversation_id"].as_str().unwrap().to_owned();

    // The example read the conversation, saw it assigned to its agent, replied, and stopped.
    example
        .wait_for("the customer's message read", REPLY_WITHIN, |r| {
            r["did"] == "read_message" && r["conversation_id"] == conv.as_str()
        })
        .await;
    example
        .wait_for("the assignment read", REPLY_WITHIN, |r| {
            r["did"] == "read_assignment"
                && r["conversation_id"] == conv.as_str()
                && r["agent"] == agent
        })
        .await;
    example
        .wait_for("the reply", REPLY_WITHIN, |r| {
            r["did"] == "replied" && r["conversation_id"] == conv.as_str()
        })
        .await;
    let status = example.exit_status(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "exit {status} after replying\n{}",
        example.output()
    );
    let reports = example.reports();
    assert_eq!(
        reports.last().unwrap(),
        &json!({"did": "done", "replies": 1}),
        "{}",
        example.output()
    );
    let replied = reports.iter().find(|r| r["did"] == "replied").unwrap();

    // The router took it as the agent's reply, the conversation's first response, where it
    // landed: a reply on another partition would have been copied to the right one first.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = daemon.metrics().await;
        let labels = ["tenant=\"demo\"", "queue=\"general\"", "channel=\"api\""];
        if metric_value(&m, "omni_first_response_seconds_count", &labels) >= 1.0 {
            let misrouted = metric_value(
                &m,
                "omni_router_misrouted_total",
                &["topic=\"omni.outbound.v1\""],
            );
            assert_eq!(
                misrouted, 0.0,
                "the reply was not on its tenant's partition"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no first response on /metrics:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The reply on omni.outbound.v1, as the contract asks: once, where the example wrote it.
    let copies = wait_for_records(&broker, OUTBOUND, "the reply", |v| {
        v["type"] == "omni.message.send" && v["subject"] == conv.as_str()
    })
    .await;
    assert_eq!(copies.len(), 1, "{copies:?}");
    let (record, event) = &copies[0];
    let data = &event["data"];
    assert_eq!(data["agent_id"], agent, "{event}");
    assert_eq!(data["conversation_id"], conv.as_str(), "{event}");
    assert_eq!(data["tenant"], "demo", "{event}");
    assert_eq!(data["recipient"], "cust-1", "{event}");
    assert_eq!(
        data["channel"],
        json!({"kind": "api", "account": "default"}),
        "{event}"
    );
    assert_eq!(data["text"], reply_text.as_str(), "{event}");
    assert_eq!(event["id"], replied["event_id"], "{event}");
    for (file, instance) in [
        ("cloudevent.schema.json", event),
        ("outbound-message.schema.json", data),
    ] {
        let errors: Vec<String> = omni_e2e::schema(file)
            .iter_errors(instance)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{file}: {errors:?}\n{event}");
    }
    assert_eq!(record.key, b"demo");
    let content_type = record.headers.get("content-type");
    assert_eq!(
        content_type.map(|v| String::from_utf8_lossy(v)).as_deref(),
        Some("application/cloudevents+json"),
        "headers: {:?}",
        record.headers.keys().collect::<Vec<_>>()
    );
    assert_eq!(replied["partition"], record.partition, "{replied}");
    assert_eq!(replied["offset"], record.offset, "{replied}");
    // On the partition of the daemon's own records of tenant demo: murmur2's (librdkafka's
    // default, CRC32, gives partition 0 of 3).
    let inbound = wait_for_records(&broker, INBOUND, "the customer's message", |v| {
        v["subject"] == conv.as_str()
    })
    .await;
    assert_eq!(record.partition, omni_bus::partition_for(b"demo", 3));
    assert_eq!(record.partition, inbound[0].0.partition);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_crm_example_replies_to_its_assigned_conversation() {
    crm_example_replies_to_its_assigned_conversation(python_example, "mai").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_crm_example_replies_to_its_assigned_conversation() {
    crm_example_replies_to_its_assigned_conversation(node_example, "tuan").await;
}
