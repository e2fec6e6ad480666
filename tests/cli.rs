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
