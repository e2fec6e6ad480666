//! The `omnirouter` command line as an operator uses it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use omni_e2e::{omnirouter_bin, workspace, Broker, Daemon};
use std::process::Command;

fn check_config(env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(omnirouter_bin());
    cmd.arg("--config")
        .arg(workspace().join("config/default.toml"))
        .arg("check-config");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_explains_every_command() {
    let out = Command::new(omnirouter_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        help.contains("run") && help.contains("check-config") && help.contains("simulate"),
        "{help}"
    );
    assert!(
        help.contains("OMNI__"),
        "help should say how to override config: {help}"
    );
}

#[test]
fn check_config_accepts_the_default_and_names_bad_keys() {
    let (ok, msg) = check_config(&[]);
    assert!(ok, "{msg}");
    assert!(!msg.contains("demo-token"), "secret printed: {msg}");

    let (ok, msg) = check_config(&[("OMNI__KAFKA__PUBLISH_TIMEOUT_MS", "0")]);
    assert!(!ok);
    assert!(msg.contains("kafka.publish_timeout_ms"), "{msg}");

    let (ok, msg) = check_config(&[("OMNI__SERVER__LISTEN", "not-an-address")]);
    assert!(!ok);
    assert!(msg.contains("server.listen"), "{msg}");

    let (ok, msg) = check_config(&[("OMNI__KAFKA__PRODUCER__ACKS", "1")]);
    assert!(!ok);
    assert!(msg.contains("kafka.producer.acks"), "{msg}");
}

#[test]
fn check_config_connect_reports_an_unreachable_broker() {
    let port = omni_e2e::free_port();
    let (ok, msg) = check_config(&[(
        "OMNI__KAFKA__BOOTSTRAP_SERVERS",
        &format!("127.0.0.1:{port}"),
    )]);
    assert!(ok, "{msg}");
    let out = Command::new(omnirouter_bin())
        .arg("--config")
        .arg(workspace().join("config/default.toml"))
        .args(["check-config", "--connect"])
        .env(
            "OMNI__KAFKA__BOOTSTRAP_SERVERS",
            format!("127.0.0.1:{port}"),
        )
        .output()
        .unwrap();
    // 69 (EX_UNAVAILABLE), as docs/operations.md says: not 2, which means a bad config.
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("kafka check failed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line_and_never_hold_secrets() {
    let broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[]).await;
    let r = reqwest::Client::new()
        .post(daemon.url("/v1/inbound/demo"))
        .bearer_auth("wrong-token")
        .json(&serde_json::json!({"contact": {"id": "c"}, "text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let log = daemon.log();
    assert!(!log.is_empty());
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    for secret in ["demo-token", "demo-secret", "wrong-token"] {
        assert!(!log.contains(secret), "log holds {secret}");
    }
}

fn simulate(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(omnirouter_bin())
        .arg("simulate")
        .args(args)
        .current_dir(workspace())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The example day, as docs/routing.md shows it: a table per queue and interval on standard
/// output, the same figures as CSV in a file, with no broker and no config.
#[test]
fn simulate_prints_the_example_day_and_writes_its_csv() {
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("day.csv");
    let (code, table, stderr) = simulate(&[
        "config/simulate.example.toml",
        "--csv",
        csv_path.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        table.contains("queue") && table.contains("occupancy"),
        "{table}"
    );
    assert!(table.contains("general         total"), "{table}");
    assert!(stderr.contains("simulated"), "{stderr}");
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    let header = csv.lines().next().unwrap();
    assert_eq!(
        header,
        "queue,interval,offered,answered,answered_in_time,abandoned,service_level,asa_secs,abandon_rate,occupancy"
    );
    let total: Vec<&str> = csv
        .lines()
        .find(|l| l.starts_with("general,total,"))
        .unwrap()
        .split(',')
        .collect();
    let offered: u64 = total[2].parse().unwrap();
    let answered: u64 = total[3].parse().unwrap();
    let abandoned: u64 = total[5].parse().unwrap();
    assert!(
        offered > 2_000 && answered + abandoned <= offered,
        "{total:?}"
    );
    // The same seed, the same day: the CSV on standard output matches the file.
    let (code, stdout_csv, _) = simulate(&["config/simulate.example.toml", "--csv", "-"]);
    assert_eq!(code, Some(0));
    assert_eq!(stdout_csv, csv);
}

/// --search finds a roster that meets the target (and says so), or exits 1 when none up to
/// the limit does; a bad profile exits 2 naming its key.
#[test]
fn simulate_searches_a_roster_and_refuses_a_bad_profile() {
    let (code, out, stderr) = simulate(&["config/simulate.example.toml", "--search", "120"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        out.starts_with("smallest roster meeting the target:"),
        "{out}"
    );
    let (code, _, stderr) = simulate(&["config/simulate.example.toml", "--search", "3"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no roster of up to 3 agents"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let example =
        std::fs::read_to_string(workspace().join("config/simulate.example.toml")).unwrap();
    std::fs::write(&bad, example.replace("count = 14", "count = \"many\"")).unwrap();
    let (code, _, stderr) = simulate(&[bad.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("count"), "{stderr}");
}

/// A recorded day replayed through a profile's routing: the same figures the recording
/// implies (one customer answered at once, one who gave up while the only agent was busy, one
/// answered after 3 minutes), as CSV on standard output and the summary on standard error.
#[test]
fn simulate_replays_a_recorded_day() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("routing.toml");
    std::fs::write(
        &profile,
        "start = \"2026-12-03T00:00:00+07:00\"\n[routing]\ndefault_queue = \"general\"\n\
         [routing.queues.general]\nskills = { vi = 1 }\n",
    )
    .unwrap();
    let records = workspace().join("testdata/simulate/recorded-day.jsonl");
    let (code, csv, stderr) = simulate(&[
        profile.to_str().unwrap(),
        "--replay",
        records.to_str().unwrap(),
        "--tenant",
        "shop",
        "--csv",
        "-",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "replayed 3 customers and 2 agent commands of tenant shop (1 records skipped)"
        ),
        "{stderr}"
    );
    assert!(
        csv.lines()
            .any(|l| l.starts_with("general,total,3,2,1,1,0.3333,90.0000,0.3333,")),
        "{csv}"
    );
    // The profile alone has nobody to simulate; --replay needs its tenant.
    let (code, _, stderr) = simulate(&[profile.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--replay"), "{stderr}");
    let (code, _, stderr) = simulate(&[
        profile.to_str().unwrap(),
        "--replay",
        records.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--tenant"), "{stderr}");
}

/// `omnirouter <args>` with the shipped config against `bootstrap`, as an operator runs it.
fn operator(bootstrap: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(omnirouter_bin());
    cmd.arg("--config")
        .arg(workspace().join("config/default.toml"))
        .args(args)
        .env("OMNI__KAFKA__BOOTSTRAP_SERVERS", bootstrap)
        .env("OMNI__KAFKA__PARTITIONS", "3");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `cmd` to its end, failing the test after 60 s.
fn finish(mut cmd: Command) -> std::process::Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg(id.to_string()).status();
            panic!("omnirouter did not finish in 60 s");
        }
    }
}

#[test]
fn user_hash_prints_the_widgets_identity_hash() {
    let hash = |env: &[(&str, &str)]| {
        let out = finish(operator(
            "127.0.0.1:1",
            &[
                "user-hash",
                "--tenant",
                "demo",
                "--widget",
                "web",
                "cust-42",
            ],
            env,
        ));
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    // config/default.toml: identity_secret = "demo-identity-secret"; the environment overrides.
    assert_eq!(
        hash(&[]),
        format!(
            "{}\n",
            omni_channel::signature::hmac_sha256_hex(b"demo-identity-secret", b"cust-42")
        )
    );
    let rotated = "a-rotated-identity-secret";
    assert_eq!(
        hash(&[(
            "OMNI__TENANTS__DEMO__LIVECHAT__WIDGETS__WEB__IDENTITY_SECRET",
            rotated
        )]),
        format!(
            "{}\n",
            omni_channel::signature::hmac_sha256_hex(rotated.as_bytes(), b"cust-42")
        )
    );
    let out = finish(operator(
        "127.0.0.1:1",
        &[
            "user-hash",
            "--tenant",
            "demo",
            "--widget",
            "nope",
            "cust-42",
        ],
        &[],
    ));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no live chat widget"));
}

async fn customer_message(daemon: &Daemon, contact: &str) -> String {
    let (status, v) = omni_e2e::post_json(
        &daemon.url("/v1/inbound/demo"),
        "demo-token",
        &serde_json::json!({"contact": {"id": contact}, "text": format!("chào từ {contact}"),
                            "client_message_id": contact}),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    v["conversation_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_follows_one_conversation_and_nothing_else() {
    let broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[]).await;
    let a = customer_message(&daemon, "cust-a").await;
    let b = customer_message(&daemon, "cust-b").await;
    assert_ne!(a, b);
    let bootstrap = broker.bootstrap();
    let cmd = operator(
        &bootstrap,
        &[
            "tail",
            "--tenant",
            "demo",
            "--conversation",
            &a,
            "--from-beginning",
            "--json",
            "--count",
            "2",
        ],
        &[],
    );
    let out = tokio::task::block_in_place(|| finish(cmd));
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines.iter().all(|e| e["subject"] == a.as_str()),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|e| e["type"] == "omni.message.received"
            && e["data"]["message"]["text"] == "chào từ cust-a"),
        "{lines:?}"
    );
    // The summary form: one line per event, the conversation on it.
    let cmd = operator(
        &bootstrap,
        &[
            "tail",
            "--conversation",
            &b,
            "--from-beginning",
            "--count",
            "1",
            "--topics",
            "omni.inbound.v1",
        ],
        &[],
    );
    let out = tokio::task::block_in_place(|| finish(cmd));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("omni.message.received  demo")
            && text.contains(&b)
            && text.contains("from cust-b: \"chào từ cust-b\""),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_publishes_dead_letters_again_and_counts_a_time_range() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
    let broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[]).await;
    let bootstrap = broker.bootstrap();
    // A command the router cannot read: dead-lettered.
    let bad = br#"{"specversion":"1.0","type":"omni.command","tenant":"demo","data":{"command":"teleport"}}"#;
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
        key: "traceparent",
        value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    });
    producer
        .send(
            BaseRecord::to("omni.commands.v1")
                .key("demo")
                .payload(&bad[..])
                .headers(headers),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    assert_eq!(producer.flush(std::time::Duration::from_secs(30)), Ok(()));
    let letters = |n: usize| {
        let b = bootstrap.clone();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let log = omni_e2e::read_log(
                &b,
                "omni.dead-letter.v1",
                std::time::Duration::from_millis(500),
            );
            if log.len() >= n {
                return log;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} dead letter(s), want {n}",
                log.len()
            );
        }
    };
    tokio::task::block_in_place(|| letters(1));

    let dry = operator(&bootstrap, &["replay", "--dead-letters", "--dry-run"], &[]);
    let out = tokio::task::block_in_place(|| finish(dry));
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.contains("selected 1, published 0 (dry run)"), "{said}");
    let other = operator(
        &bootstrap,
        &[
            "replay",
            "--dead-letters",
            "--from-topic",
            "omni.outbound.v1",
        ],
        &[],
    );
    let out = tokio::task::block_in_place(|| finish(other));
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("selected 0, published 0"));

    let replay = operator(
        &bootstrap,
        &[
            "replay",
            "--dead-letters",
            "--from-topic",
            "omni.commands.v1",
        ],
        &[],
    );
    let out = tokio::task::block_in_place(|| finish(replay));
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("selected 1, published 1"));
    // Back on its topic byte for byte, its own headers kept and the dead-letter ones gone; the
    // router, which still cannot read it, dead-letters it again.
    let b = bootstrap.clone();
    let commands = tokio::task::block_in_place(|| {
        omni_e2e::read_log(&b, "omni.commands.v1", std::time::Duration::from_secs(1))
    });
    let copies: Vec<_> = commands
        .iter()
        .filter(|r| r.value.as_deref() == Some(&bad[..]))
        .collect();
    assert_eq!(copies.len(), 2, "{commands:?}");
    assert_eq!(copies[1].key, b"demo");
    assert!(copies[1].headers.contains_key("traceparent"));
    assert!(!copies[1]
        .headers
        .keys()
        .any(|k| k.starts_with("omni-dead-letter-")));
    tokio::task::block_in_place(|| letters(2));

    // A time range of a topic: only the records written since the given time.
    // (Each step waits for the clock's next millisecond, so the times are strictly ordered.)
    let next_ms = || {
        let now = chrono::Utc::now().timestamp_millis();
        while chrono::Utc::now().timestamp_millis() <= now {
            std::hint::spin_loop();
        }
    };
    customer_message(&daemon, "before").await;
    next_ms();
    let since = chrono::Utc::now().to_rfc3339();
    next_ms();
    customer_message(&daemon, "after-1").await;
    customer_message(&daemon, "after-2").await;
    let range = operator(
        &bootstrap,
        &[
            "replay",
            "--topic",
            "omni.inbound.v1",
            "--since",
            &since,
            "--dry-run",
        ],
        &[],
    );
    let out = tokio::task::block_in_place(|| finish(range));
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.contains("from omni.inbound.v1, selected 2,"), "{said}");
}
