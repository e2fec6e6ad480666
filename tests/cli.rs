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
fn help_explains_both_commands() {
    let out = Command::new(omnirouter_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        help.contains("run") && help.contains("check-config"),
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
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("kafka"));
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
