//! Tenants without restarts: the daemon, started with a config file of its own, takes a new
//! tenant on SIGHUP, refuses a broken file it sees change (the config in force keeps serving,
//! the rejection is counted), and drops a removed tenant, all without restarting.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use omni_e2e::{free_port, metric_value, omnirouter_bin, post_json, stop_child, workspace, Broker};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The daemon started with `--config <temp dir>/omnirouter.toml`, which the test rewrites.
struct Daemon {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Daemon {
    async fn start(broker: &Broker, config: &str) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("omnirouter.toml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("omnirouter.log")).unwrap();
        let child = Command::new(omnirouter_bin())
            .arg("--config")
            .arg(dir.path().join("omnirouter.toml"))
            .args(["--log-format", "json", "run"])
            .env("OMNI__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("OMNI__KAFKA__BOOTSTRAP_SERVERS", broker.bootstrap())
            .env("OMNI__KAFKA__PARTITIONS", "3")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start omnirouter");
        let d = Self {
            port,
            dir,
            child: Some(child),
        };
        let client = reqwest::Client::new();
        d.eventually("/readyz answers 200", || async {
            matches!(client.get(d.url("/readyz")).send().await, Ok(r) if r.status() == 200)
        })
        .await;
        d
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("omnirouter.toml")
    }

    /// Replaces the config file the way an editor or a config-management tool does: a new file
    /// renamed over the old one.
    fn write_config(&self, config: &str) {
        let tmp = self.dir.path().join("omnirouter.toml.new");
        std::fs::write(&tmp, config).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }

    fn hangup(&self) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let ok = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        assert!(ok.success(), "kill -HUP {pid}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("omnirouter.log")).unwrap_or_default()
    }

    async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Polls `check` until it holds, for at most 30 s; panics with the log if it never does.
    async fn eventually<F, Fut>(&self, what: &str, mut check: F)
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
        panic!("never happened: {what}; daemon log:\n{}", self.log());
    }

    async fn inbound(&self, tenant: &str, token: &str) -> u16 {
        let id = format!(
            "m-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let body = serde_json::json!({"contact": {"id": "cust-1"}, "text": "Xin chào", "client_message_id": id});
        post_json(&self.url(&format!("/v1/inbound/{tenant}")), token, &body)
            .await
            .0
    }

    async fn reloads(&self, result: &str) -> f64 {
        let label = format!("result=\"{result}\"");
        metric_value(
            &self.metrics().await,
            "omni_config_reloads_total",
            &[&label],
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn base_config() -> String {
    std::fs::read_to_string(workspace().join("config/default.toml")).unwrap()
}

const T2: &str = "\n[tenants.t2]\napi_token = \"t2-s3cret-token\"\n";

#[tokio::test]
async fn tenants_are_added_refused_and_removed_without_a_restart() {
    let broker = Broker::memory();
    let base = base_config();
    let daemon = Daemon::start(&broker, &base).await;
    assert_eq!(daemon.inbound("demo", "demo-token").await, 202);
    assert_eq!(
        daemon.inbound("t2", "t2-s3cret-token").await,
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
    daemon
        .eventually("t2 is accepted after SIGHUP", || async {
            daemon.inbound("t2", "t2-s3cret-token").await == 202
        })
        .await;
    assert_eq!(daemon.inbound("t2", "wrong-token").await, 401);
    assert_eq!(daemon.inbound("demo", "demo-token").await, 202);
    assert!(daemon.reloads("applied").await >= 1.0);
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
    daemon
        .eventually("the broken config is counted as rejected", || async {
            daemon.reloads("rejected").await >= 1.0
        })
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
    assert_eq!(daemon.inbound("t2", "t2-s3cret-token").await, 202);
    assert_eq!(daemon.inbound("demo", "demo-token").await, 202);

    // Remove t2: refused again, everything else serves.
    let applied = daemon.reloads("applied").await;
    daemon.write_config(&base);
    daemon.hangup();
    daemon
        .eventually("t2 is refused once removed", || async {
            daemon.inbound("t2", "t2-s3cret-token").await == 404
        })
        .await;
    assert_eq!(daemon.inbound("demo", "demo-token").await, 202);
    assert!(daemon.reloads("applied").await > applied);
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
    let status = stop_child(daemon.child.take().unwrap(), Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        daemon.log()
    );
}
