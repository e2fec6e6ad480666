//! Tenants without restarts: the daemon, started with a config file of its own, takes a new
//! tenant on SIGHUP, refuses a broken file it sees change (the config in force keeps serving,
//! the rejection is counted), and drops a removed tenant, all without restarting.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use omni_e2e::{command_event, metric_value, post_json, python_produce, workspace, Broker, Daemon};
use std::time::{Duration, Instant};

/// Polls `check` until it holds, for at most 30 s; panics with the log if it never does.
async fn eventually<F, Fut>(daemon: &Daemon, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never happened: {what}; daemon log:\n{}", daemon.log());
}

async fn inbound(daemon: &Daemon, tenant: &str, token: &str) -> u16 {
    let id = format!(
        "m-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let body = serde_json::json!({"contact": {"id": "cust-1"}, "text": "Xin chào", "client_message_id": id});
    post_json(&daemon.url(&format!("/v1/inbound/{tenant}")), token, &body)
        .await
        .0
}

async fn reloads(daemon: &Daemon, result: &str) -> f64 {
    let label = format!("result=\"{result}\"");
    metric_value(
        &daemon.metrics().await,
        "omni_config_reloads_total",
        &[&label],
    )
}

fn base_config() -> String {
    std::fs::read_to_string(workspace().join("config/default.toml")).unwrap()
}

const T2: &str = "\n[tenants.t2]\napi_token = \"t2-s3cret-token\"\n";

#[tokio::test]
async fn tenants_are_added_refused_and_removed_without_a_restart() {
    let broker = Broker::memory();
    let base = base_config();
    let daemon = Daemon::start_with_config(&broker, &base, &[]).await;
    assert_eq!(inbound(&daemon, "demo", "demo-token").await, 202);
    assert_eq!(
        inbound(&daemon, "t2", "t2-s3cret-token").await,
        404,
        "t2 is not configured yet"
    );

    // Add t2, and change a key the running listener cannot take: SIGHUP applies the tenant and
    // says what waits for a restart.
    let bigger_bodies = base.replace("max_body_bytes = 65536", "max_body_bytes = 131072");
    assert_ne!(
        bigger_bodies, base,
        "default.toml sets server.max_body_bytes"
    );
    daemon.write_config(&format!("{bigger_bodies}{T2}"));
    daemon.hangup();
    eventually(&daemon, "t2 is accepted after SIGHUP", || async {
        inbound(&daemon, "t2", "t2-s3cret-token").await == 202
    })
    .await;
    assert_eq!(inbound(&daemon, "t2", "wrong-token").await, 401);
    assert_eq!(inbound(&daemon, "demo", "demo-token").await, 202);
    assert!(reloads(&daemon, "applied").await >= 1.0);
    assert!(
        daemon
            .log()
            .contains("needs a restart: server.max_body_bytes"),
        "{}",
        daemon.log()
    );

    // A broken file, noticed by the file watch alone: refused, counted, and the config in
    // force keeps serving.
    daemon.write_config(&format!(
        "{bigger_bodies}{T2}\n[tenants.Bad]\napi_token = \"x\"\n"
    ));
    eventually(
        &daemon,
        "the broken config is counted as rejected",
        || async { reloads(&daemon, "rejected").await >= 1.0 },
    )
    .await;
    let log = daemon.log();
    assert!(
        log.contains("config reload refused") && log.contains("tenants.Bad"),
        "the refusal names the bad key: {log}"
    );
    let metrics = daemon.metrics().await;
    assert_eq!(
        metric_value(&metrics, "omni_config_last_reload_successful", &[]),
        0.0
    );
    assert!(
        metric_value(
            &metrics,
            "omni_config_last_reload_success_timestamp_seconds",
            &[]
        ) > 0.0
    );
    assert_eq!(inbound(&daemon, "t2", "t2-s3cret-token").await, 202);
    assert_eq!(inbound(&daemon, "demo", "demo-token").await, 202);

    // Remove t2: refused again, everything else serves.
    let applied = reloads(&daemon, "applied").await;
    daemon.write_config(&base);
    daemon.hangup();
    eventually(&daemon, "t2 is refused once removed", || async {
        inbound(&daemon, "t2", "t2-s3cret-token").await == 404
    })
    .await;
    assert_eq!(inbound(&daemon, "demo", "demo-token").await, 202);
    assert!(reloads(&daemon, "applied").await > applied);
    assert_eq!(
        metric_value(
            &daemon.metrics().await,
            "omni_config_last_reload_successful",
            &[]
        ),
        1.0
    );
    assert!(
        !daemon.log().contains("t2-s3cret-token"),
        "secrets are never logged"
    );

    // Reloads leave shutdown as it was: SIGTERM drains and exits 0.
    let mut daemon = daemon;
    let status = daemon.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        daemon.log()
    );
}

/// A record for a tenant the router does not know yet (a rolling update adding a tenant
/// reaches the other replicas first) is held, not committed or dropped, and applied once a
/// reloaded config knows the tenant.
#[tokio::test(flavor = "multi_thread")]
async fn records_of_a_tenant_not_yet_configured_wait_for_the_config_that_adds_it() {
    let broker = Broker::memory();
    let base = base_config();
    let daemon = Daemon::start_with_config(&broker, &base, &[]).await;
    let commands = [
        serde_json::json!({"command": "upsert_agent", "agent": "mai", "skills": {}, "capacity": 2}),
        serde_json::json!({"command": "set_presence", "agent": "mai", "presence": "online"}),
    ]
    .map(|data| {
        (
            "omni.commands.v1".to_owned(),
            "t3".to_owned(),
            command_event("t3", data),
            None,
        )
    });
    python_produce(&broker.bootstrap(), "murmur2_random", &commands);
    eventually(&daemon, "the router holds t3's records", || async {
        metric_value(&daemon.metrics().await, "omni_router_held_records", &[]) >= 2.0
    })
    .await;
    assert!(
        daemon.log().contains("holding its partition"),
        "the hold is logged: {}",
        daemon.log()
    );

    daemon.write_config(&format!(
        "{base}\n[tenants.t3]\napi_token = \"t3-token\"\nagent_api_token = \"t3-agent\"\n"
    ));
    daemon.hangup();
    let client = reqwest::Client::new();
    eventually(
        &daemon,
        "t3's agent, created before t3 was configured, is online",
        || async {
            let r = client
                .get(daemon.url("/v1/tenants/t3/agents"))
                .bearer_auth("t3-agent")
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => {
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    v["agents"][0]["id"] == "mai" && v["agents"][0]["presence"] == "online"
                }
                _ => false,
            }
        },
    )
    .await;
    assert_eq!(
        metric_value(&daemon.metrics().await, "omni_router_held_records", &[]),
        0.0
    );
}
