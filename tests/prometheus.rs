//! Prometheus end to end: the shipped config, recording rules and alerts in `deploy/prometheus/`
//! pass promtool (syntax and unit tests), the daemon's real `/metrics` passes
//! `promtool check metrics`, and a real Prometheus server scrapes a running daemon and
//! evaluates the rules on what it scraped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use omni_e2e::{free_port, metric_value, workspace, Broker, Daemon};
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const RULE_FILES: [&str; 2] = [
    "rules/omnirouter-recording.yml",
    "rules/omnirouter-alerts.yml",
];

fn prom_dir() -> PathBuf {
    workspace().join("deploy/prometheus")
}

/// Runs `cmd` and fails the test with its whole output unless it exits 0.
fn must_succeed(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{what}: cannot run ({e}); is promtool installed (`make deps`)?")
    });
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `deploy/prometheus/tests/*.yml` promtool unit-test files.
fn unit_test_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(prom_dir().join("tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Values of `key: value` lines (`- alert: X`, `- record: Y`, …) in a YAML file.
fn yaml_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start().trim_start_matches("- ");
            let v = l.strip_prefix(key)?.strip_prefix(':')?;
            Some(v.trim().trim_matches(['\'', '"']).to_owned())
        })
        .collect()
}

#[test]
fn rule_files_pass_promtool_check_and_their_unit_tests() {
    let dir = prom_dir();
    must_succeed(
        Command::new("promtool")
            .args(["check", "rules"])
            .args(RULE_FILES)
            .current_dir(&dir),
        "promtool check rules",
    );
    let tests = unit_test_files();
    assert!(tests.len() >= 3, "unit tests missing: {tests:?}");
    let out = must_succeed(
        Command::new("promtool")
            .args(["test", "rules"])
            .args(&tests)
            .current_dir(&dir),
        "promtool test rules",
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));

    // Every alert and every recording rule has a unit test, and every alert links its runbook
    // at the docs/operations.md anchor the runbook section uses.
    let tests_text: String = tests
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let tested_alerts = yaml_values(&tests_text, "alertname");
    let tested_exprs = yaml_values(&tests_text, "expr");
    let alerts_text = std::fs::read_to_string(dir.join(RULE_FILES[1])).unwrap();
    let alerts = yaml_values(&alerts_text, "alert");
    assert_eq!(alerts.len(), 12, "{alerts:?}");
    for alert in &alerts {
        assert!(
            tested_alerts.iter().filter(|a| *a == alert).count() >= 2,
            "alert {alert} needs a firing and a not-firing unit test"
        );
        let runbook = format!(
            "runbook_url: https://github.com/omnirouter/omnirouter/blob/main/docs/operations.md#runbook-{}",
            alert.to_lowercase()
        );
        let rule = alerts_text
            .split("- alert: ")
            .find(|block| block.starts_with(&format!("{alert}\n")))
            .unwrap();
        assert!(
            rule.contains(&runbook),
            "alert {alert} must link `{runbook}`"
        );
        assert!(
            rule.contains("severity: ")
                && rule.contains("summary: ")
                && rule.contains("description: "),
            "alert {alert} needs a severity label and summary/description annotations"
        );
    }
    let records_text = std::fs::read_to_string(dir.join(RULE_FILES[0])).unwrap();
    let records = yaml_values(&records_text, "record");
    assert!(records.len() >= 4, "{records:?}");
    for record in &records {
        assert!(
            tested_exprs.contains(record),
            "recording rule {record} has no unit test"
        );
    }
}

#[test]
fn prometheus_config_passes_promtool_check_config() {
    must_succeed(
        Command::new("promtool")
            .args(["check", "config", "prometheus.yml"])
            .current_dir(prom_dir()),
        "promtool check config",
    );
}

/// A customer, an agent and the agent API of the `demo` tenant.
struct Traffic<'a> {
    daemon: &'a Daemon,
    client: reqwest::Client,
}

impl<'a> Traffic<'a> {
    fn new(daemon: &'a Daemon) -> Self {
        Self {
            daemon,
            client: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        omni_e2e::post_json(&self.daemon.url(path), token, body).await
    }

    async fn command(&self, body: Value) {
        let (status, answer) = self
            .post("/v1/tenants/demo/commands", "demo-agent-token", &body)
            .await;
        assert_eq!(status, 202, "{body}: {answer}");
    }

    async fn agent_online(&self) {
        self.command(
            json!({"command": "upsert_agent", "agent": "lan", "skills": {"vi": 4}, "capacity": 3}),
        )
        .await;
        self.command(json!({"command": "set_presence", "agent": "lan", "presence": "online"}))
            .await;
    }

    /// A customer message; returns the conversation id.
    async fn customer_message(&self, contact: &str, text: &str) -> String {
        let body = json!({"contact": {"id": contact, "language": "vi"}, "text": text,
                          "client_message_id": format!("{contact}-{text}")});
        let (status, answer) = self.post("/v1/inbound/demo", "demo-token", &body).await;
        assert_eq!(status, 202, "{answer}");
        answer["conversation_id"].as_str().unwrap().to_owned()
    }

    async fn wait_assigned(&self, conv: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self
                .client
                .get(
                    self.daemon
                        .url(&format!("/v1/tenants/demo/conversations/{conv}")),
                )
                .bearer_auth("demo-agent-token")
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let view: Value = r.json().await.unwrap_or(Value::Null);
            if status == 200 && view["state"] == "assigned" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "conversation {conv} not assigned: {status} {view}\nlog:\n{}",
                self.daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn reply(&self, conv: &str, contact: &str) {
        let body = json!({"conversation_id": conv, "channel": {"kind": "api", "account": "default"},
                          "recipient": contact, "text": "Dạ, shop chào bạn ạ", "agent_id": "lan"});
        let (status, answer) = self
            .post("/v1/tenants/demo/replies", "demo-agent-token", &body)
            .await;
        assert_eq!(status, 202, "{answer}");
    }

    /// Waits until the daemon's `/metrics` shows `name{tenant="demo"}` at `at_least`.
    async fn wait_metric(&self, name: &str, at_least: f64) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let m = self.daemon.metrics().await;
            if metric_value(&m, name, &["tenant=\"demo\""]) >= at_least {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never reached {at_least}:\n{m}\nlog:\n{}",
                self.daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One conversation from message to answered; returns the daemon's metrics afterwards.
    async fn answered_conversation(&self, contact: &str, answered_before: f64) -> String {
        let conv = self.customer_message(contact, "Chào shop").await;
        self.wait_assigned(&conv).await;
        self.reply(&conv, contact).await;
        self.wait_metric("omni_first_response_seconds_count", answered_before + 1.0)
            .await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemons_metrics_pass_promtool_check_metrics() {
    let broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[]).await;
    let t = Traffic::new(&daemon);
    t.agent_online().await;
    let conv = t.customer_message("cust-1", "Chào shop").await;
    t.wait_assigned(&conv).await;
    t.reply(&conv, "cust-1").await;
    t.wait_metric("omni_first_response_seconds_count", 1.0)
        .await;
    // Resolution, satisfaction, a reopen, a duplicate and a rejected request: more families
    // with labelled series on the page.
    t.command(json!({"command": "resolve", "conversation": conv}))
        .await;
    t.command(json!({"command": "csat", "conversation": conv, "score": 5}))
        .await;
    t.wait_metric("omni_conversations_resolved_total", 1.0)
        .await;
    t.command(json!({"command": "reopen", "conversation": conv}))
        .await;
    t.customer_message("cust-1", "Chào shop").await; // the same client_message_id again
    let (status, _) = t
        .post(
            "/v1/inbound/demo",
            "not-the-token",
            &json!({"contact": {"id": "x"}, "text": "y"}),
        )
        .await;
    assert_eq!(status, 401);
    t.wait_metric("omni_conversations_reopened_total", 1.0)
        .await;
    // Gauges are refreshed every router tick and Kafka statistics interval: wait for them.
    let families = [
        "omni_first_response_seconds_bucket",
        "omni_response_seconds_sum",
        "omni_queue_wait_seconds_count",
        "omni_resolution_seconds_count",
        "omni_csat_score_count",
        "omni_conversations_created_total",
        "omni_conversations_resolved_total",
        "omni_conversations_reopened_total",
        "omni_backlog_conversations",
        "omni_queue_oldest_wait_seconds",
        "omni_agents",
        "omni_agent_utilization_ratio",
        "omni_messages_received_total",
        "omni_ingress_rejected_total",
        "omni_ingress_duplicates_total",
        "omni_ingress_request_duration_seconds_bucket",
        "omni_kafka_produced_total",
        "omni_kafka_brokers_up",
        "omni_kafka_consumer_lag_messages",
        "omni_router_inputs_total",
        "omni_sla_target_seconds",
        "omni_queue_open",
        "omni_http_requests_total",
        "omni_http_request_duration_seconds_bucket",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let metrics = daemon.metrics().await;
        let missing: Vec<&str> = families
            .iter()
            .copied()
            .filter(|f| !metrics.lines().any(|l| l.starts_with(&format!("{f}{{"))))
            .collect();
        if missing.is_empty() {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{missing:?} not on /metrics:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Each queue's own targets, from config/default.toml (demo/general: 60 s first response).
    assert!(
        metrics.contains(
            r#"omni_sla_target_seconds{bound="60",queue="general",sla="first_response",tenant="demo"} 60"#
        ) && metrics.contains(r#"omni_queue_open{queue="general",tenant="demo"} 1"#),
        "{metrics}"
    );

    // Every endpoint is counted by its route template (the API channel, the agent API), with
    // the status it answered; the process and the runtime are on the page too.
    for (route, method, status) in [
        ("/v1/inbound/{tenant}", "POST", "202"),
        ("/v1/inbound/{tenant}", "POST", "401"),
        ("/v1/tenants/{tenant}/commands", "POST", "202"),
        ("/v1/tenants/{tenant}/replies", "POST", "202"),
    ] {
        let labels = [
            format!("route=\"{route}\""),
            format!("method=\"{method}\""),
            format!("status=\"{status}\""),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        assert!(
            metric_value(&metrics, "omni_http_requests_total", &labels) >= 1.0,
            "{route} {method} {status} not counted:\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("route=\"/v1/inbound/demo\""),
        "a path became a label"
    );
    for family in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "omni_tokio_workers",
    ] {
        assert!(
            metric_value(&metrics, family, &[]) > 0.0,
            "{family} missing or zero:\n{metrics}"
        );
    }

    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (is it installed? `make deps`)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    // Exit 1 is a parse error, 3 lint problems (missing HELP, naming): both are failures.
    assert!(
        out.status.success(),
        "promtool check metrics: {}\n--- stdout\n{}\n--- stderr\n{}\n--- /metrics\n{metrics}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private Prometheus server on 127.0.0.1, with its own config and TSDB in a temp dir;
/// stopped with SIGTERM (by PID) when dropped.
struct Prometheus {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Prometheus {
    /// Starts Prometheus with the shipped `deploy/prometheus/prometheus.yml` and rules, made to
    /// scrape `target` every second and evaluate the rules every second.
    fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = std::fs::read_to_string(prom_dir().join("prometheus.yml")).unwrap();
        for (from, to) in [
            ("scrape_interval: 15s", "scrape_interval: 1s"),
            ("evaluation_interval: 15s", "evaluation_interval: 1s"),
            ("scrape_timeout: 10s", "scrape_timeout: 1s"),
            ("\"omnirouter:8080\"", &format!("\"{target}\"")),
        ] {
            assert!(config.contains(from), "prometheus.yml has no `{from}`");
            config = config.replace(from, to);
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        std::fs::create_dir(dir.path().join("rules")).unwrap();
        for rules in RULE_FILES {
            std::fs::copy(prom_dir().join(rules), dir.path().join(rules)).unwrap();
        }
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus (is it installed? `make deps`)");
        Self {
            port,
            dir,
            child: Some(child),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(self.url("/-/ready")).await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GET `path` of the HTTP API; the `data` of a `"status": "success"` answer.
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let url = reqwest::Url::parse_with_params(&self.url(path), params).unwrap();
        let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        assert_eq!(body["status"], "success", "{path} {params:?}: {body}");
        body["data"].clone()
    }

    /// The value of each sample an instant query returns (NaN kept as NaN).
    async fn query(&self, promql: &str) -> Vec<f64> {
        let data = self.api("/api/v1/query", &[("query", promql)]).await;
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap())
            .collect()
    }

    /// Polls `promql` until it returns a single finite sample, for at most `timeout`.
    async fn wait_value(
        &self,
        promql: &str,
        timeout: Duration,
        accept: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let values = self.query(promql).await;
            if let [v] = values[..] {
                if v.is_finite() && accept(v) {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "`{promql}` still returns {values:?} after {timeout:?}; targets: {}\nlog:\n{}",
                self.api("/api/v1/targets", &[]).await,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            omni_e2e::stop_child(child, Duration::from_secs(10));
        }
    }
}

fn sample_sum(metrics: &str, name: &str) -> f64 {
    metric_value(
        metrics,
        name,
        &["tenant=\"demo\"", "queue=\"general\"", "channel=\"api\""],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_the_daemon_and_evaluates_the_rules() {
    let broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[]).await;
    let prometheus = Prometheus::start(&format!("127.0.0.1:{}", daemon.port));
    prometheus.wait_ready().await;

    let t = Traffic::new(&daemon);
    t.agent_online().await;
    let first = t.answered_conversation("cust-1", 0.0).await;

    // The first response time reaches Prometheus (the first scraped sample takes ~5 s).
    let count = prometheus
        .wait_value(
            "omni_first_response_seconds_count{tenant=\"demo\"}",
            Duration::from_secs(30),
            |v| v >= 1.0,
        )
        .await;
    println!("omni_first_response_seconds_count in Prometheus: {count}");

    // A second answered conversation, so the rates over the scraped samples are not zero.
    let second = t.answered_conversation("cust-2", 1.0).await;
    let response = sample_sum(&second, "omni_response_seconds_sum")
        - sample_sum(&first, "omni_response_seconds_sum");
    let answered = sample_sum(&second, "omni_response_seconds_count")
        - sample_sum(&first, "omni_response_seconds_count");
    let first_response = sample_sum(&second, "omni_first_response_seconds_sum")
        - sample_sum(&first, "omni_first_response_seconds_sum");
    assert!(answered >= 1.0, "{second}");

    // ART per queue: the mean response time of the answers in the window, as the daemon
    // measured them. While only two or three samples of the new series are in the window,
    // rate() extrapolates the count and the sum differently (a counter is not extrapolated
    // below zero); from then on the extrapolation cancels out of the ratio.
    let expected_art = response / answered;
    let art = prometheus
        .wait_value(
            "omni:art_seconds:rate1h{tenant=\"demo\",queue=\"general\"}",
            Duration::from_secs(30),
            |v| (v - expected_art).abs() <= 1e-6 + expected_art * 1e-6,
        )
        .await;
    println!("ART recorded by Prometheus: {art} s (daemon: {expected_art} s)");

    // p90 first response: one answer in the window, within the first bucket (10 s) when the
    // machine is not crawling → 0.9 × 10 s.
    let p90 = prometheus
        .wait_value(
            "omni:first_response_seconds:p90_1h{tenant=\"demo\",queue=\"general\"}",
            Duration::from_secs(30),
            |v| first_response >= 10.0 || (v - 9.0).abs() < 1e-9,
        )
        .await;
    println!("p90 first response recorded by Prometheus: {p90} s (last one: {first_response} s)");

    // Service level against the queue's own target (demo/general: 60 s, joined on the
    // histogram bucket at that bound): every first response so far was within it.
    let in_time = first_response < 60.0;
    let sl = prometheus
        .wait_value(
            "omni:first_response_service_level:ratio_rate1h{tenant=\"demo\",queue=\"general\"}",
            Duration::from_secs(30),
            |v| !in_time || (v - 1.0).abs() < 1e-9,
        )
        .await;
    println!("service level within demo/general's own target: {sl}");

    // Every rule of both files is loaded and evaluates without error on the real series.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let groups = prometheus.api("/api/v1/rules", &[]).await["groups"].clone();
        let rules: Vec<Value> = groups
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect();
        let bad: Vec<&Value> = rules.iter().filter(|r| r["health"] == "err").collect();
        assert!(bad.is_empty(), "rules failing: {bad:?}");
        if rules.len() == 26 && rules.iter().all(|r| r["health"] == "ok") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rules not all evaluated: {rules:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every query of the Grafana dashboard is PromQL Prometheus parses, with the dashboard's
/// variables given values (checked by `promtool check rules` on a rule file of the queries).
#[test]
fn dashboard_queries_parse_as_promql() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace().join("deploy/grafana/dashboards/omnirouter.json"))
            .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    let mut stack = vec![&dashboard["panels"]];
    while let Some(panels) = stack.pop() {
        for p in panels.as_array().into_iter().flatten() {
            stack.push(&p["panels"]);
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    exprs.push(e.to_owned());
                }
            }
        }
    }
    assert!(exprs.len() > 10, "{} queries", exprs.len());
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e
                .replace("$tenant", ".*")
                .replace("$queue", ".*")
                .replace("$__rate_interval", "5m")
                .replace("$window", "1h");
            json!({"record": format!("dashboard:query{i}"), "expr": e})
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.yml");
    std::fs::write(
        &file,
        json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string(),
    )
    .unwrap();
    must_succeed(
        Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(&file),
        "promtool check rules on the dashboard's queries",
    );
}
