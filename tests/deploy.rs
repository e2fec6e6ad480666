//! Deployment artifacts in `deploy/`, each checked with the tool that consumes it where that
//! tool runs here, and against the daemon itself:
//!
//! - `compose.yaml`: `docker-compose config` (Debian's docker-compose 1.29), then the resolved
//!   file's wiring (Kafka KRaft listeners, depends_on, env file, mounts, Grafana provisioning),
//!   and `omnirouter check-config` with the environment compose gives the container.
//! - `kubernetes/`: `kubernetes-validate --strict` (core kinds), a structural check of the
//!   ServiceMonitor (a CRD the tool has no schema for), the manifests' cross-references, and the
//!   ConfigMap's config accepted by `omnirouter check-config` with the Deployment's environment.
//! - `systemd/omnirouter.service`: `systemd-analyze verify` and `security --offline`.
//! - `Dockerfile`: a lint (no hadolint here), its build context filter, the daemon accepting
//!   its ENTRYPOINT, and the runtime image's packages providing every library the binary links.
//! - `grafana/dashboards/omnirouter.json`: every PromQL metric, type and label checked against
//!   the metrics the crates register and a running daemon exposes.
//!
//! No Docker engine runs here, so no image is built or started: these check the files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use omni_e2e::{omnirouter_bin, workspace, Broker, Daemon};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn deploy(rel: &str) -> PathBuf {
    workspace().join("deploy").join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd`, panicking with `missing` if the program is not installed.
fn run(cmd: &mut Command, missing: &str) -> Output {
    match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{missing}"),
        Err(e) => panic!("{cmd:?}: {e}"),
    }
}

fn python() -> PathBuf {
    let p = workspace().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: `make deps` creates .venv with pyyaml and kubernetes-validate",
        p.display()
    );
    p
}

/// Runs a Python snippet (with pyyaml) that prints JSON.
fn py_json(script: &str, args: &[&str], stdin: Option<&str>) -> Value {
    let mut child = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        input
            .write_all(stdin.unwrap_or_default().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every YAML document of `files`, as `{"file", "doc"}`.
fn yaml_docs(files: &[PathBuf]) -> Vec<Value> {
    const SCRIPT: &str = "import json, sys, yaml\n\
        out = []\n\
        for f in sys.argv[1:]:\n    \
            with open(f) as fh:\n        \
                out += [{'file': f, 'doc': d} for d in yaml.safe_load_all(fh) if d is not None]\n\
        json.dump(out, sys.stdout, default=str)\n";
    let args: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();
    let Value::Array(docs) = py_json(SCRIPT, &args, None) else {
        panic!("not a list")
    };
    docs
}

fn yaml_str(text: &str) -> Value {
    py_json(
        "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout, default=str)",
        &[],
        Some(text),
    )
}

fn toml_str(text: &str) -> Value {
    py_json(
        "import json, sys, tomllib; json.dump(tomllib.loads(sys.stdin.read()), sys.stdout)",
        &[],
        Some(text),
    )
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v}"))
}

/// The port of a `host:port` listen address.
fn port_of(listen: &str) -> u16 {
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

/// `omnirouter <args>` with exactly `env` (nothing inherited): the daemon's verdict on a command
/// line and environment that a deployment gives it.
fn omnirouter(args: &[String], env: &BTreeMap<String, String>) -> Output {
    Command::new(omnirouter_bin())
        .args(args)
        .env_clear()
        .envs(env)
        .output()
        .unwrap()
}

/// Runs a deployment's command line with `run` replaced by `check-config` and the config path
/// replaced by `config`, and returns the daemon's `config ok: …` line.
fn check_command_line(
    what: &str,
    argv: &[String],
    config_path: &str,
    config: &Path,
    env: &BTreeMap<String, String>,
) -> String {
    assert_eq!(
        argv.first()
            .map(|a| Path::new(a).file_name().unwrap().to_str().unwrap()),
        Some("omnirouter"),
        "{what}: runs {argv:?}"
    );
    assert_eq!(
        argv.last().map(String::as_str),
        Some("run"),
        "{what}: {argv:?}"
    );
    assert!(
        argv.iter().any(|a| a == config_path),
        "{what}: {argv:?} does not use {config_path}"
    );
    let args: Vec<String> = argv[1..]
        .iter()
        .map(|a| match a.as_str() {
            "run" => "check-config".to_owned(),
            a if a == config_path => config.to_str().unwrap().to_owned(),
            a => a.to_owned(),
        })
        .collect();
    let out = omnirouter(&args, env);
    assert!(
        out.status.success(),
        "{what}: omnirouter {args:?} refused the config: {}",
        text(&out)
    );
    let verdict = text(&out);
    assert!(verdict.contains("config ok"), "{what}: {verdict}");
    verdict
}

// ---------------------------------------------------------------------------------------------
// docker compose

fn docker_compose(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("docker-compose");
    cmd.arg("-f")
        .arg(deploy("compose.yaml"))
        .args(args)
        .current_dir(workspace())
        .env_remove("OMNIROUTER_ENV_FILE")
        .env_remove("GRAFANA_ADMIN_PASSWORD")
        .env_remove("COMPOSE_FILE")
        .envs(env.iter().copied());
    run(
        &mut cmd,
        "docker-compose not found: `make deps` installs it (Debian package docker-compose)",
    )
}

/// `src:dst[:mode]` → (src, dst).
fn volume(v: &Value) -> (String, String) {
    let s = str_of(v, "volume");
    let mut parts = s.split(':');
    (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    )
}

/// The host path behind `container` in a service's bind mounts.
fn host_path(volumes: &Value, container: &str) -> PathBuf {
    let (src, dst) = volumes
        .as_array()
        .unwrap()
        .iter()
        .map(volume)
        .filter(|(src, dst)| src.starts_with('/') && container.starts_with(dst.as_str()))
        .max_by_key(|(_, dst)| dst.len())
        .unwrap_or_else(|| panic!("{container} is not bind-mounted: {volumes}"));
    let rest = container[dst.len()..].trim_start_matches('/');
    if rest.is_empty() {
        PathBuf::from(src)
    } else {
        PathBuf::from(src).join(rest)
    }
}

fn env_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Listener name → (host, port) of a Kafka `NAME://host:port,…` list.
fn kafka_listeners(list: &str) -> BTreeMap<String, (String, u16)> {
    list.split(',')
        .map(|l| {
            let (name, addr) = l.split_once("://").unwrap();
            let (host, port) = addr.rsplit_once(':').unwrap();
            (name.to_owned(), (host.to_owned(), port.parse().unwrap()))
        })
        .collect()
}

#[test]
fn compose_file_is_valid_and_wired() {
    let resolved = compose_config_resolves_every_service();
    let services = &resolved["services"];
    compose_kafka_is_a_consistent_kraft_single_node(services);
    let listen_port = compose_omnirouter_is_built_here_and_waits_for_kafka(services);
    compose_secrets_come_from_the_env_file_and_the_daemon_accepts_them(services, listen_port);
    compose_bind_mounts_exist(services);
    compose_grafana_provisions_prometheus_and_the_dashboards(services);
    compose_prometheus_scrapes_omnirouter_and_finds_its_rules(services, listen_port);
    compose_env_file_can_be_swapped_and_must_exist();
}

/// `docker-compose config` accepts the file; the resolved file, with every service we ship.
fn compose_config_resolves_every_service() -> Value {
    let out = docker_compose(&["config", "-q"], &[]);
    assert!(
        out.status.success(),
        "docker-compose config -q: {}",
        text(&out)
    );
    let out = docker_compose(&["config"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let resolved = yaml_str(&String::from_utf8(out.stdout).unwrap());
    let services = &resolved["services"];
    for s in ["kafka", "omnirouter", "prometheus", "grafana"] {
        assert!(services[s].is_object(), "service {s} missing: {resolved}");
    }
    resolved
}

/// Kafka, KRaft single node: roles, quorum, listeners consistent.
fn compose_kafka_is_a_consistent_kraft_single_node(services: &Value) {
    let kafka = env_map(&services["kafka"]["environment"]);
    let roles: BTreeSet<&str> = kafka["KAFKA_PROCESS_ROLES"].split(',').collect();
    assert_eq!(roles, BTreeSet::from(["broker", "controller"]));
    let listeners = kafka_listeners(&kafka["KAFKA_LISTENERS"]);
    let advertised = kafka_listeners(&kafka["KAFKA_ADVERTISED_LISTENERS"]);
    let protocols: BTreeMap<&str, &str> = kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
        .split(',')
        .map(|p| p.split_once(':').unwrap())
        .collect();
    for name in listeners.keys() {
        assert!(
            protocols.contains_key(name.as_str()),
            "no protocol for {name}"
        );
    }
    let controller = kafka["KAFKA_CONTROLLER_LISTENER_NAMES"].clone();
    assert!(listeners.contains_key(&controller));
    assert!(
        !advertised.contains_key(&controller),
        "a broker must not advertise the KRaft controller listener"
    );
    let node = kafka["KAFKA_NODE_ID"].clone();
    let voter = format!(
        "{node}@{}:{}",
        services["kafka"]["hostname"].as_str().unwrap_or("kafka"),
        listeners[&controller].1
    );
    assert_eq!(kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"], voter);
    assert!(
        kafka.contains_key("CLUSTER_ID"),
        "KRaft storage needs a cluster id"
    );
    assert!(services["kafka"]["healthcheck"]["test"].is_array());
}

/// omnirouter: built from the workspace with deploy/Dockerfile, after Kafka is healthy, at
/// the broker's advertised in-network listener. Returns the port it listens on.
fn compose_omnirouter_is_built_here_and_waits_for_kafka(services: &Value) -> u16 {
    let kafka = env_map(&services["kafka"]["environment"]);
    let advertised = kafka_listeners(&kafka["KAFKA_ADVERTISED_LISTENERS"]);
    let router = &services["omnirouter"];
    let context = PathBuf::from(str_of(&router["build"]["context"], "build.context"));
    assert_eq!(
        context.canonicalize().unwrap(),
        workspace().canonicalize().unwrap()
    );
    assert!(context
        .join(str_of(&router["build"]["dockerfile"], "dockerfile"))
        .exists());
    assert_eq!(
        router["depends_on"]["kafka"]["condition"],
        "service_healthy"
    );
    let env = env_map(&router["environment"]);
    let internal = &advertised[&kafka["KAFKA_INTER_BROKER_LISTENER_NAME"]];
    assert_eq!(
        env["OMNI__KAFKA__BOOTSTRAP_SERVERS"],
        format!("kafka:{}", internal.1)
    );
    assert_eq!(internal.0, "kafka");
    let listen_port = port_of(&env["OMNI__SERVER__LISTEN"]);
    assert!(env["OMNI__SERVER__LISTEN"].starts_with("0.0.0.0:"));
    assert!(
        router["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| str_of(p, "port").contains(&format!(":{listen_port}/"))),
        "{}",
        router["ports"]
    );
    let health = router["healthcheck"]["test"].to_string();
    assert!(
        health.contains(&format!("127.0.0.1:{listen_port}/readyz")),
        "{health}"
    );
    let grace = str_of(&router["stop_grace_period"], "stop_grace_period");
    assert!(
        grace.trim_end_matches('s').parse::<u64>().unwrap() > 30,
        "stop_grace_period {grace} must exceed server.shutdown_grace_secs (30 s)"
    );
    listen_port
}

/// Secrets come from the env file, not the compose file, and the daemon accepts the
/// container's environment with the image's config.
fn compose_secrets_come_from_the_env_file_and_the_daemon_accepts_them(
    services: &Value,
    listen_port: u16,
) {
    let env = env_map(&services["omnirouter"]["environment"]);
    let raw = read(&deploy("compose.yaml"));
    for key in [
        "OMNI__TENANTS__DEMO__API_TOKEN",
        "OMNI__TENANTS__DEMO__API_HMAC_SECRET",
        "OMNI__TENANTS__DEMO__AGENT_API_TOKEN",
    ] {
        assert!(env.contains_key(key), "{key} not set from the env file");
        assert!(!raw.contains(key), "{key} written in compose.yaml");
    }
    // The daemon accepts that environment with the image's config (config/default.toml).
    let mut daemon_env = env.clone();
    daemon_env.retain(|k, _| k.starts_with("OMNI__"));
    let default = workspace().join("config/default.toml");
    let args = ["--config", default.to_str().unwrap(), "check-config"].map(String::from);
    let out = omnirouter(&args, &daemon_env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("listen 0.0.0.0:{listen_port}, kafka kafka:9092")),
        "{}",
        text(&out)
    );
}

/// Bind mounts exist (deploy/prometheus/ is maintained separately: checked once it exists).
fn compose_bind_mounts_exist(services: &Value) {
    let prometheus_dir = deploy("prometheus");
    for service in ["kafka", "omnirouter", "prometheus", "grafana"] {
        for v in services[service]["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let (src, _) = volume(&v);
            if !src.starts_with('/') {
                continue; // a named volume
            }
            let src = PathBuf::from(src);
            if src.starts_with(&prometheus_dir) && !prometheus_dir.exists() {
                println!(
                    "note: {} not checked: deploy/prometheus/ does not exist yet",
                    src.display()
                );
                continue;
            }
            assert!(
                src.exists(),
                "{service}: bind mount {} missing",
                src.display()
            );
        }
    }
}

/// Grafana: the provisioned datasource is the prometheus service, the dashboard provider
/// reads the directory the dashboards are mounted at, and the home dashboard exists.
fn compose_grafana_provisions_prometheus_and_the_dashboards(services: &Value) {
    let grafana = &services["grafana"];
    let in_grafana = |container: &str| host_path(&grafana["volumes"], container);
    let provisioning = in_grafana("/etc/grafana/provisioning");
    let datasources = yaml_docs(&[provisioning.join("datasources/prometheus.yaml")]);
    let ds = &datasources[0]["doc"]["datasources"][0];
    assert_eq!(ds["type"], "prometheus");
    let prom_port = services["prometheus"]["ports"][0]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/tcp")
        .to_owned();
    assert_eq!(ds["url"], format!("http://prometheus:{prom_port}"));
    let providers = yaml_docs(&[provisioning.join("dashboards/omnirouter.yaml")]);
    let provider_path = str_of(
        &providers[0]["doc"]["providers"][0]["options"]["path"],
        "provider path",
    );
    let dashboards = in_grafana(provider_path);
    assert_eq!(
        dashboards.canonicalize().unwrap(),
        deploy("grafana/dashboards").canonicalize().unwrap()
    );
    let home =
        env_map(&grafana["environment"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].clone();
    assert!(in_grafana(&home).exists(), "home dashboard {home}");
}

/// Prometheus (its files in deploy/prometheus/ are maintained separately): it scrapes the
/// omnirouter service, and its rule files resolve through the mounts.
fn compose_prometheus_scrapes_omnirouter_and_finds_its_rules(services: &Value, listen_port: u16) {
    let prometheus = &services["prometheus"];
    let config_in_container = prometheus["command"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|a| a.as_str()?.strip_prefix("--config.file="))
        .expect("--config.file");
    let config = host_path(&prometheus["volumes"], config_in_container);
    if config.exists() {
        let scrape = &yaml_docs(std::slice::from_ref(&config))[0]["doc"];
        let targets: Vec<String> = scrape["scrape_configs"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|j| j["static_configs"].as_array().cloned().unwrap_or_default())
            .flat_map(|s| s["targets"].as_array().cloned().unwrap_or_default())
            .map(|t| str_of(&t, "target").to_owned())
            .collect();
        assert!(
            targets.contains(&format!("omnirouter:{listen_port}")),
            "prometheus.yml does not scrape omnirouter:{listen_port}: {targets:?}"
        );
        let dir = Path::new(config_in_container).parent().unwrap();
        for rules in scrape["rule_files"].as_array().cloned().unwrap_or_default() {
            let in_container = dir.join(str_of(&rules, "rule file"));
            let on_host = host_path(&prometheus["volumes"], in_container.to_str().unwrap());
            assert!(
                on_host.exists(),
                "rule file {} (host {}) missing",
                in_container.display(),
                on_host.display()
            );
        }
    } else {
        println!("note: {} does not exist yet", config.display());
    }
}

/// OMNIROUTER_ENV_FILE picks another env file: its values reach the container, and a
/// missing one is an error (the file is really read).
fn compose_env_file_can_be_swapped_and_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let custom = dir.path().join("omnirouter.env");
    std::fs::write(&custom, "OMNI__TENANTS__DEMO__API_TOKEN=from-custom-file\n").unwrap();
    let out = docker_compose(
        &["config"],
        &[("OMNIROUTER_ENV_FILE", custom.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", text(&out));
    let custom_env = env_map(
        &yaml_str(&String::from_utf8(out.stdout).unwrap())["services"]["omnirouter"]["environment"],
    );
    assert_eq!(
        custom_env["OMNI__TENANTS__DEMO__API_TOKEN"],
        "from-custom-file"
    );
    let out = docker_compose(
        &["config", "-q"],
        &[(
            "OMNIROUTER_ENV_FILE",
            dir.path().join("absent.env").to_str().unwrap(),
        )],
    );
    assert!(!out.status.success(), "a missing env file must be an error");
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

fn k8s_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The `kind` document called `name`.
fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .map(|d| &d["doc"])
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn by_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .map(|d| &d["doc"])
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} expected");
    found[0]
}

/// `sub`'s key/values all appear in `labels`.
fn selects(sub: &Value, labels: &Value) -> bool {
    let sub = sub.as_object().unwrap();
    !sub.is_empty() && sub.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The Deployment's parts most checks read.
struct Workload<'a> {
    deployment: &'a Value,
    spec: &'a Value,
    pod: &'a Value,
    pod_labels: &'a Value,
    /// The one container.
    c: &'a Value,
    /// Container port name → number.
    port_names: BTreeMap<&'a str, u64>,
}

/// Looks the Deployment's parts up once; it has exactly one container.
fn workload(docs: &[Value]) -> Workload<'_> {
    let deployment = by_kind(docs, "Deployment");
    let spec = &deployment["spec"];
    let pod = &spec["template"]["spec"];
    let pod_labels = &spec["template"]["metadata"]["labels"];
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let port_names: BTreeMap<&str, u64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                str_of(&p["name"], "port name"),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    Workload {
        deployment,
        spec,
        pod,
        pod_labels,
        c,
        port_names,
    }
}

/// The daemon's config as the Deployment gives it: the ConfigMap's text, where the pod reads
/// it, the command line, and the parsed TOML.
struct PodConfig {
    text: String,
    path: String,
    argv: Vec<String>,
    toml: Value,
}

#[test]
fn kubernetes_manifests_validate_and_fit_together() {
    let files = k8s_files();
    let docs = yaml_docs(&files);
    k8s_core_kinds_pass_kubernetes_validate_strict(&docs);
    k8s_manifests_are_namespace_agnostic_and_all_kustomized(&files, &docs);
    let w = workload(&docs);
    k8s_deployment_runs_the_kustomized_image_unprivileged(&docs, &w);
    k8s_probes_and_scrape_annotations_use_the_right_ports(&w);
    let config = k8s_config_is_mounted_where_the_command_reads_it(&docs, &w);
    k8s_grace_period_covers_pre_stop_and_drain(&w, &config.toml);
    let secret_env = k8s_secrets_come_from_the_secret_not_the_configmap(&docs, &w, &config.toml);
    k8s_daemon_accepts_the_config_with_the_pods_environment(&w, &config, &secret_env);
    k8s_service_pdb_and_hpa_select_the_deployment(&docs, &w, &config.toml);
    k8s_service_monitor_is_well_formed_and_scrapes_the_service(&docs);
}

/// The core kinds pass `kubernetes-validate --strict`, which does reject a misspelled field.
fn k8s_core_kinds_pass_kubernetes_validate_strict(docs: &[Value]) {
    // Kinds kubernetes-validate has schemas for; the others are checked below.
    let crd_kinds = ["ServiceMonitor", "Kustomization"];
    let core: Vec<&str> = docs
        .iter()
        .filter(|d| !crd_kinds.contains(&str_of(&d["doc"]["kind"], "kind")))
        .map(|d| str_of(&d["file"], "file"))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(core.len() >= 6, "{core:?}");
    let validate = workspace().join(".venv/bin/kubernetes-validate");
    for version in [None, Some("1.30.0")] {
        let mut cmd = Command::new(&validate);
        cmd.arg("--strict");
        if let Some(v) = version {
            cmd.args(["-k", v]);
        }
        let out = run(
            cmd.args(&core),
            "kubernetes-validate not found: `make deps` installs it into .venv",
        );
        let report = text(&out);
        assert!(
            out.status.success() && !report.contains("Couldn't find schema"),
            "kubernetes-validate --strict {version:?}:\n{report}"
        );
        println!("{report}");
    }
    // The tool passes a kind it has no schema for with a mere warning, and --strict must
    // reject unknown fields: make sure it does on this install.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        read(&deploy("kubernetes/pdb.yaml")).replace("minAvailable: 1", "minAvailabel: 1"),
    )
    .unwrap();
    let out = Command::new(&validate)
        .arg("--strict")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a misspelled field passed: {}",
        text(&out)
    );
}

/// Namespace-agnostic: `kubectl apply -n` / kustomize decide; and the kustomization lists
/// every manifest.
fn k8s_manifests_are_namespace_agnostic_and_all_kustomized(files: &[PathBuf], docs: &[Value]) {
    for d in docs {
        assert!(
            d["doc"]["metadata"]["namespace"].is_null(),
            "{}: sets a namespace",
            d["file"]
        );
    }
    let kustomization = by_kind(docs, "Kustomization");
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| str_of(r, "resource").to_owned())
        .collect();
    let present: BTreeSet<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_str().unwrap().to_owned())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization.yaml resources");
}

/// The kustomization's image override names the container's; non-root, read-only, no
/// privileges: the image's uid.
fn k8s_deployment_runs_the_kustomized_image_unprivileged(docs: &[Value], w: &Workload<'_>) {
    let kustomization = by_kind(docs, "Kustomization");
    let (spec, pod, pod_labels, c) = (w.spec, w.pod, w.pod_labels, w.c);
    assert!(selects(&spec["selector"]["matchLabels"], pod_labels));
    assert_eq!(spec["replicas"], 2);
    let image = str_of(&c["image"], "image");
    assert_eq!(
        kustomization["images"][0]["name"],
        image.split(':').next().unwrap()
    );

    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    for kind in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(c["resources"][kind][r].is_string(), "resources.{kind}.{r}");
        }
    }
}

/// Probes: liveness /healthz, readiness /readyz, a startup probe, on a declared port.
fn k8s_probes_and_scrape_annotations_use_the_right_ports(w: &Workload<'_>) {
    let (spec, c, port_names) = (w.spec, w.c, &w.port_names);
    let probe = |name: &str| -> (&str, u64) {
        let get = &c[name]["httpGet"];
        let port = match &get["port"] {
            Value::String(n) => port_names[n.as_str()],
            p => p.as_u64().unwrap(),
        };
        (str_of(&get["path"], name), port)
    };
    // /healthz is on both listeners; /readyz and /metrics only on the admin one.
    let (http, admin) = (port_names["http"], port_names["admin"]);
    assert_eq!(probe("livenessProbe"), ("/healthz", http));
    assert_eq!(probe("readinessProbe"), ("/readyz", admin));
    assert_eq!(probe("startupProbe").1, http);
    let annotations = &spec["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], admin.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
}

/// The config: mounted from the ConfigMap at the path the command passes.
fn k8s_config_is_mounted_where_the_command_reads_it(docs: &[Value], w: &Workload<'_>) -> PodConfig {
    let configmap = by_kind(docs, "ConfigMap");
    let (pod, c, http) = (w.pod, w.c, w.port_names["http"]);
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "config")
        .unwrap();
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "config")
        .unwrap();
    assert_eq!(volume["configMap"]["name"], configmap["metadata"]["name"]);
    let item = &volume["configMap"]["items"][0];
    let config_text = str_of(&configmap["data"][str_of(&item["key"], "key")], "config");
    let config_path = format!(
        "{}/{}",
        str_of(&mount["mountPath"], "mountPath"),
        str_of(&item["path"], "path")
    );
    let argv: Vec<String> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .chain(c["args"].as_array().unwrap())
        .map(|a| str_of(a, "arg").to_owned())
        .collect();
    let config = toml_str(config_text);
    let listen = str_of(&config["server"]["listen"], "server.listen");
    assert_eq!(u64::from(port_of(listen)), http);
    PodConfig {
        text: config_text.to_owned(),
        path: config_path,
        argv,
        toml: config,
    }
}

/// Shutdown: the grace period covers the preStop sleep and the daemon's drain.
fn k8s_grace_period_covers_pre_stop_and_drain(w: &Workload<'_>, config: &Value) {
    let (pod, c) = (w.pod, w.c);
    let shutdown = config["server"]["shutdown_grace_secs"]
        .as_u64()
        .unwrap_or(30);
    let pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .unwrap();
    assert_eq!(pre_stop[0], "sleep");
    let sleep: u64 = str_of(&pre_stop[1], "sleep").parse().unwrap();
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        termination > sleep + shutdown,
        "terminationGracePeriodSeconds {termination} <= preStop {sleep} + drain {shutdown}"
    );
}

/// No secret in the ConfigMap; the Secret provides them as OMNI__ variables. Returns them.
fn k8s_secrets_come_from_the_secret_not_the_configmap(
    docs: &[Value],
    w: &Workload<'_>,
    config: &Value,
) -> BTreeMap<String, String> {
    let secret = by_kind(docs, "Secret");
    let c = w.c;
    fn keys(v: &Value, out: &mut Vec<String>) {
        if let Value::Object(m) = v {
            for (k, v) in m {
                out.push(k.clone());
                keys(v, out);
            }
        }
    }
    let mut config_keys = Vec::new();
    keys(config, &mut config_keys);
    for secret_key in [
        "api_token",
        "api_hmac_secret",
        "agent_api_token",
        "sasl_password",
    ] {
        assert!(
            !config_keys.iter().any(|k| k == secret_key),
            "the ConfigMap holds {secret_key}"
        );
    }
    let env_from = &c["envFrom"][0]["secretRef"]["name"];
    assert_eq!(env_from, &secret["metadata"]["name"]);
    let secret_env: BTreeMap<String, String> = secret["stringData"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), str_of(v, k).to_owned()))
        .collect();
    assert!(secret_env.keys().all(|k| k.starts_with("OMNI__")));
    assert!(secret_env.values().all(|v| v.starts_with("REPLACE-ME")));
    if config["kafka"]["librdkafka"]["security_protocol"]
        .as_str()
        .is_some_and(|p| p.contains("SASL"))
    {
        assert!(secret_env.contains_key("OMNI__KAFKA__LIBRDKAFKA__SASL_PASSWORD"));
    }
    secret_env
}

/// The daemon accepts the ConfigMap's config with the Deployment's environment (the Secret
/// plus `env`; a fieldRef gets a sample pod name) and its command line.
fn k8s_daemon_accepts_the_config_with_the_pods_environment(
    w: &Workload<'_>,
    pc: &PodConfig,
    secret_env: &BTreeMap<String, String>,
) {
    let c = w.c;
    let (config_text, config_path, argv, config) = (&pc.text, &pc.path, &pc.argv, &pc.toml);
    let listen = str_of(&config["server"]["listen"], "server.listen");
    let mut pod_env = secret_env.clone();
    for e in c["env"].as_array().unwrap() {
        let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(v), _) => v.clone(),
            (_, Value::String(f)) if f == "metadata.name" => "omnirouter-7d9f8b6c5d-x2k4p".into(),
            (_, Value::String(f)) if f == "status.podIP" => "10.1.2.3".into(),
            other => panic!("unexpected env source {other:?}"),
        };
        // Kubernetes expands `$(NAME)` from variables defined earlier in `env`.
        let value = pod_env.iter().fold(value, |v, (name, set)| {
            v.replace(&format!("$({name})"), set)
        });
        pod_env.insert(str_of(&e["name"], "env name").to_owned(), value);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, config_text).unwrap();
    let verdict = check_command_line("deployment", argv, config_path, &file, &pod_env);
    let bootstrap = str_of(&config["kafka"]["bootstrap_servers"], "bootstrap");
    assert!(
        verdict.contains(&format!("listen {listen}, kafka {bootstrap}, 1 tenant(s)")),
        "{verdict}"
    );
    // Without the Secret the tenant has no credentials: they really come from the Secret.
    let mut no_secret = pod_env.clone();
    no_secret.retain(|k, _| !secret_env.contains_key(k));
    let out = omnirouter(
        &[
            "--config".into(),
            file.to_str().unwrap().into(),
            "check-config".into(),
        ],
        &no_secret,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("tenants.demo"), "{}", text(&out));
}

/// Service, PDB, HPA and ServiceMonitor select these pods / this Deployment.
fn k8s_service_pdb_and_hpa_select_the_deployment(docs: &[Value], w: &Workload<'_>, config: &Value) {
    let pdb = by_kind(docs, "PodDisruptionBudget");
    let hpa = by_kind(docs, "HorizontalPodAutoscaler");
    let (deployment, spec, pod_labels, port_names) =
        (w.deployment, w.spec, w.pod_labels, &w.port_names);
    // The public Service reaches the webhooks' port, the admin Service the admin one; the
    // config's admin_listen is that port.
    for (name, port) in [("omnirouter", "http"), ("omnirouter-admin", "admin")] {
        let service = named(docs, "Service", name);
        assert!(selects(&service["spec"]["selector"], pod_labels), "{name}");
        let ports = service["spec"]["ports"].as_array().unwrap();
        assert_eq!(ports.len(), 1, "{name}: one port");
        assert_eq!(ports[0]["targetPort"], port, "{name}");
        assert!(port_names.contains_key(port));
    }
    let admin = str_of(&config["server"]["admin_listen"], "server.admin_listen");
    assert_eq!(u64::from(port_of(admin)), port_names["admin"]);
    let policy = by_kind(docs, "NetworkPolicy");
    assert!(selects(
        &policy["spec"]["podSelector"]["matchLabels"],
        pod_labels
    ));
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    let open_to = |port: &str| {
        rules
            .iter()
            .filter(|r| {
                r["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["port"] == port)
            })
            .map(|r| r["from"].as_array().cloned().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        open_to("http"),
        vec![Vec::<Value>::new()],
        "the public port is open"
    );
    let admin_from = open_to("admin");
    assert_eq!(admin_from.len(), 1);
    assert!(
        admin_from[0]
            .iter()
            .any(|f| selects(&f["podSelector"]["matchLabels"], pod_labels)),
        "the replicas must reach each other's admin port (forwarded reads)"
    );
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels));
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"], "Deployment");
    assert_eq!(target["apiVersion"], deployment["apiVersion"]);
    assert_eq!(target["name"], deployment["metadata"]["name"]);
    assert_eq!(hpa["spec"]["minReplicas"], spec["replicas"]);
    let partitions = config["kafka"]["partitions"].as_u64().unwrap();
    assert!(
        hpa["spec"]["maxReplicas"].as_u64().unwrap() <= partitions,
        "routers beyond kafka.partitions ({partitions}) idle"
    );
    assert!(hpa["spec"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["resource"]["name"] == "cpu"));
}

/// ServiceMonitor (monitoring.coreos.com/v1): no schema in kubernetes-validate, so its
/// structure is checked here, field names included (what --strict does for core kinds).
fn k8s_service_monitor_is_well_formed_and_scrapes_the_service(docs: &[Value]) {
    let service = named(docs, "Service", "omnirouter-admin");
    let public = named(docs, "Service", "omnirouter");
    let monitor = by_kind(docs, "ServiceMonitor");
    let svc_port = &service["spec"]["ports"][0];
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert!(monitor["metadata"]["name"].is_string());
    let allowed = |v: &Value, fields: &[&str], what: &str| {
        for k in v.as_object().unwrap().keys() {
            assert!(fields.contains(&k.as_str()), "{what}: unknown field {k}");
        }
    };
    allowed(
        monitor,
        &["apiVersion", "kind", "metadata", "spec"],
        "ServiceMonitor",
    );
    allowed(
        &monitor["spec"],
        &[
            "selector",
            "endpoints",
            "namespaceSelector",
            "jobLabel",
            "targetLabels",
            "podTargetLabels",
            "sampleLimit",
            "targetLimit",
            "labelLimit",
            "attachMetadata",
        ],
        "ServiceMonitor.spec",
    );
    assert!(selects(
        &monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"]
    ));
    assert!(
        !selects(
            &monitor["spec"]["selector"]["matchLabels"],
            &public["metadata"]["labels"]
        ),
        "the ServiceMonitor must scrape the admin Service only"
    );
    let endpoints = monitor["spec"]["endpoints"].as_array().unwrap();
    assert!(!endpoints.is_empty());
    for e in endpoints {
        allowed(
            e,
            &[
                "port",
                "targetPort",
                "path",
                "scheme",
                "interval",
                "scrapeTimeout",
                "honorLabels",
                "honorTimestamps",
                "relabelings",
                "metricRelabelings",
                "params",
                "tlsConfig",
                "authorization",
                "basicAuth",
                "followRedirects",
            ],
            "ServiceMonitor endpoint",
        );
        assert_eq!(e["port"], svc_port["name"], "a named Service port");
        assert_eq!(e["path"], "/metrics");
        let secs = |v: &Value| -> u64 {
            str_of(v, "duration")
                .strip_suffix('s')
                .unwrap()
                .parse()
                .unwrap()
        };
        assert!(secs(&e["scrapeTimeout"]) <= secs(&e["interval"]));
    }
}

// ---------------------------------------------------------------------------------------------
// systemd

fn unit_directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// `systemd-analyze verify` output lines that concern the unit itself (environment noise,
/// such as no systemd as PID 1, never names the file).
fn verify_findings(unit_path: &Path) -> (bool, Vec<String>) {
    let out = run(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(unit_path)
            .env("SYSTEMD_LOG_COLOR", "0"),
        "systemd-analyze not found (Debian package systemd)",
    );
    let name = unit_path.file_name().unwrap().to_str().unwrap();
    let findings = text(&out)
        .lines()
        .filter(|l| l.contains(name))
        .map(str::to_owned)
        .collect();
    (out.status.success(), findings)
}

#[test]
fn systemd_unit_passes_systemd_analyze() {
    let unit = read(&deploy("systemd/omnirouter.service"));
    let dir = tempfile::tempdir().unwrap();
    let path = systemd_verify_is_silent_and_catches_a_typo(&unit, dir.path());
    systemd_security_scores_the_sandbox_at_most_2(&path);
    systemd_unit_sets_the_documented_directives(&unit);
    systemd_daemon_accepts_exec_start_and_exec_start_pre(&unit);
}

/// A unit's `Key=` values, in order.
fn directive<'a>(directives: &'a [(String, String)], k: &str) -> Vec<&'a str> {
    directives
        .iter()
        .filter(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// `systemd-analyze verify` finds nothing in the unit (run against the binary just built),
/// and does report a misspelled directive on this systemd. Returns the testable unit's path.
fn systemd_verify_is_silent_and_catches_a_typo(unit: &str, dir: &Path) -> PathBuf {
    let bin = omnirouter_bin();
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let testable = unit.replace("/usr/local/bin/omnirouter", bin.to_str().unwrap());
    let path = dir.join("omnirouter.service");
    std::fs::write(&path, &testable).unwrap();
    let (ok, findings) = verify_findings(&path);
    assert!(
        ok && findings.is_empty(),
        "systemd-analyze verify:\n{}",
        findings.join("\n")
    );
    // A misspelled directive is reported on this systemd (so silence above means something).
    let bad = dir.join("bad.service");
    std::fs::write(&bad, testable.replace("ProtectHome=", "ProtectHoem=")).unwrap();
    let (_, findings) = verify_findings(&bad);
    assert!(
        findings.iter().any(|f| f.contains("ProtectHoem")),
        "{findings:?}"
    );
    path
}

/// The sandbox, as systemd itself scores it.
fn systemd_security_scores_the_sandbox_at_most_2(path: &Path) {
    let out = run(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(path),
        "systemd-analyze not found",
    );
    let report = text(&out);
    match report.lines().find_map(|l| {
        l.split("Overall exposure level for omnirouter.service: ")
            .nth(1)
    }) {
        Some(level) => {
            let score: f64 = level.split_whitespace().next().unwrap().parse().unwrap();
            println!("systemd-analyze security: exposure {score}");
            assert!(score <= 2.0, "exposure {score}:\n{report}");
        }
        None => println!("note: systemd-analyze security --offline unsupported here: {report}"),
    }
}

/// The hardening and lifecycle directives the install notes promise.
fn systemd_unit_sets_the_documented_directives(unit: &str) {
    let directives = unit_directives(unit);
    let get = |k: &str| directive(&directives, k);
    for (k, v) in [
        ("Type", "simple"),
        ("User", "omnirouter"),
        ("EnvironmentFile", "-/etc/omnirouter/omnirouter.env"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("TimeoutStopSec", "45s"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("SystemCallFilter", "@system-service"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("UMask", "0077"),
        ("LimitNOFILE", "65536"),
    ] {
        assert_eq!(get(k), vec![v], "{k}");
    }
}

/// The daemon accepts ExecStart's and ExecStartPre's command lines (with the shipped config
/// in place of /etc/omnirouter/config.toml, which the install notes copy from it).
fn systemd_daemon_accepts_exec_start_and_exec_start_pre(unit: &str) {
    let directives = unit_directives(unit);
    let get = |k: &str| directive(&directives, k);
    let default = workspace().join("config/default.toml");
    let env = BTreeMap::new();
    let start: Vec<String> = get("ExecStart")[0]
        .split_whitespace()
        .map(String::from)
        .collect();
    check_command_line(
        "ExecStart",
        &start,
        "/etc/omnirouter/config.toml",
        &default,
        &env,
    );
    let pre: Vec<String> = get("ExecStartPre")[0]
        .split_whitespace()
        .map(|a| {
            if a == "/etc/omnirouter/config.toml" {
                default.to_str().unwrap().to_owned()
            } else {
                a.to_owned()
            }
        })
        .collect();
    assert_eq!(pre.last().map(String::as_str), Some("check-config"));
    let out = omnirouter(&pre[1..], &env);
    assert!(out.status.success(), "ExecStartPre: {}", text(&out));
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

#[derive(Debug)]
struct Instruction {
    cmd: String,
    args: String,
}

/// Instructions with continuation lines joined and comments dropped.
fn dockerfile(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (cmd, args) = current.split_once(char::is_whitespace).unwrap();
        out.push(Instruction {
            cmd: cmd.to_uppercase(),
            args: args.trim().to_owned(),
        });
        current.clear();
    }
    out
}

/// Whether a minimal `.dockerignore` (`*`, `!path`, `**/name`) lets `path` into the context.
fn context_includes(ignore: &str, path: &str) -> bool {
    let mut included = true;
    for pattern in ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (negate, p) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        let matches = if p == "*" {
            true
        } else if let Some(name) = p.strip_prefix("**/") {
            path.split('/').any(|c| c == name)
        } else {
            assert!(!p.contains('*'), "pattern {p} not understood by this check");
            path == p || path.starts_with(&format!("{p}/"))
        };
        if matches {
            included = negate;
        }
    }
    included
}

#[test]
fn dockerfile_lints_clean_and_matches_the_daemon() {
    let text = read(&deploy("Dockerfile"));
    let instructions = dockerfile(&text);
    let stages = dockerfile_is_multi_stage_from_pinned_images(&instructions);
    dockerfile_follows_the_hygiene_rules(&instructions, &stages[0].2);
    let runtime_run = dockerfile_runtime_stage_runs_the_daemon_unprivileged(&stages);
    dockerfile_context_holds_every_copy_source_and_nothing_big(&stages);
    runtime_packages_provide_the_linked_libraries(&runtime_run);
}

/// A build stage: its name, its base image (ARGs substituted) and its instructions.
type Stage<'a> = (String, String, Vec<&'a Instruction>);

/// The arguments of a stage's `cmd` instructions, in order.
fn in_stage(stage: &[&Instruction], cmd: &str) -> Vec<String> {
    stage
        .iter()
        .filter(|i| i.cmd == cmd)
        .map(|i| i.args.clone())
        .collect()
}

/// A builder on `rust:1-bookworm`, a runtime on `debian:bookworm-slim`, every image pinned.
fn dockerfile_is_multi_stage_from_pinned_images(instructions: &[Instruction]) -> Vec<Stage<'_>> {
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    // Stages: (name, base image, instructions).
    let mut stages: Vec<Stage<'_>> = Vec::new();
    for i in instructions {
        match i.cmd.as_str() {
            "ARG" if stages.is_empty() => {
                let (k, v) = i.args.split_once('=').unwrap();
                args.insert(k.to_owned(), v.to_owned());
            }
            "FROM" => {
                let words: Vec<&str> = i.args.split_whitespace().collect();
                let mut image = words[0].to_owned();
                for (k, v) in &args {
                    image = image.replace(&format!("${{{k}}}"), v);
                }
                let name = match words.as_slice() {
                    [_, as_, name] if as_.eq_ignore_ascii_case("as") => (*name).to_owned(),
                    _ => String::new(),
                };
                stages.push((name, image, Vec::new()));
            }
            _ => {
                assert!(!stages.is_empty(), "{} before FROM", i.cmd);
                stages.last_mut().unwrap().2.push(i);
            }
        }
    }
    assert!(stages.len() >= 2, "multi-stage build expected");
    for (name, image, _) in &stages {
        let tag = image
            .rsplit_once(':')
            .map(|(_, t)| t)
            .unwrap_or_else(|| panic!("stage {name}: {image} without a tag"));
        assert_ne!(tag, "latest", "stage {name}: pin {image}");
    }
    assert_eq!(stages[0].1, "rust:1-bookworm");
    let (_, runtime, _) = stages.last().unwrap();
    assert_eq!(runtime, "debian:bookworm-slim");
    stages
}

/// General hygiene, and a locked release build of the daemon with its native dependencies.
fn dockerfile_follows_the_hygiene_rules(instructions: &[Instruction], builder: &[&Instruction]) {
    for i in instructions {
        assert_ne!(
            i.cmd, "ADD",
            "use COPY (ADD fetches URLs and unpacks archives): {i:?}"
        );
        assert!(!i.args.contains("apt-get upgrade"), "{i:?}");
        if i.cmd == "RUN" && i.args.contains("apt-get install") {
            assert!(i.args.contains("--no-install-recommends"), "{i:?}");
            assert!(i.args.contains("-y"), "{i:?}");
            assert!(i.args.contains("rm -rf /var/lib/apt/lists/*"), "{i:?}");
        }
        if i.cmd == "RUN" {
            assert!(
                !i.args.contains("curl http") && !i.args.contains("| sh"),
                "{i:?}"
            );
        }
    }
    let build = in_stage(builder, "RUN").join(" ");
    for flag in ["cargo build", "--release", "--locked", "-p omnirouter"] {
        assert!(build.contains(flag), "builder: {flag} missing");
    }
    assert!(build.contains("libssl-dev") && build.contains("pkg-config"));
}

/// The runtime stage: non-root user, healthcheck, signal, entrypoint; the binary from the
/// builder, the config where ENTRYPOINT reads it, and the daemon accepting ENTRYPOINT + CMD.
/// Returns the stage's RUN commands.
fn dockerfile_runtime_stage_runs_the_daemon_unprivileged(stages: &[Stage<'_>]) -> String {
    let last = &stages.last().unwrap().2;
    let users = in_stage(last, "USER");
    let user = users.last().expect("USER in the runtime stage");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "0" && uid != "root", "runs as {user}");
    let runtime_run = in_stage(last, "RUN").join(" ");
    assert!(
        runtime_run.contains(&format!("--uid {uid}")),
        "USER {uid} is not the user the image creates"
    );
    let healthcheck = in_stage(last, "HEALTHCHECK");
    assert_eq!(healthcheck.len(), 1);
    assert!(healthcheck[0].contains("/healthz"), "{healthcheck:?}");
    assert!(
        runtime_run.contains("curl"),
        "HEALTHCHECK uses curl: install it"
    );
    healthcheck_command_works(&healthcheck[0]);
    assert_eq!(in_stage(last, "STOPSIGNAL"), vec!["SIGTERM".to_owned()]);
    let entrypoint: Vec<String> =
        serde_json::from_str(&in_stage(last, "ENTRYPOINT")[0]).expect("exec-form ENTRYPOINT");
    let cmd: Vec<String> = serde_json::from_str(&in_stage(last, "CMD")[0]).expect("exec-form CMD");
    assert_eq!(cmd, vec!["run".to_owned()]);
    let env: BTreeMap<String, String> = in_stage(last, "ENV")
        .iter()
        .map(|e| {
            let (k, v) = e.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let listen = &env["OMNI__SERVER__LISTEN"];
    assert!(listen.starts_with("0.0.0.0:"));
    let image_config = toml_str(&read(&workspace().join("config/image.toml")));
    let admin = str_of(
        &image_config["server"]["admin_listen"],
        "server.admin_listen",
    );
    assert!(admin.starts_with("0.0.0.0:"));
    assert_eq!(
        in_stage(last, "EXPOSE"),
        vec![format!("{} {}", port_of(listen), port_of(admin))]
    );

    let copies = in_stage(last, "COPY");
    let stage_names: BTreeSet<&str> = stages.iter().map(|s| s.0.as_str()).collect();
    for c in &copies {
        if let Some(from) = c.split_whitespace().find_map(|w| w.strip_prefix("--from=")) {
            assert!(
                stage_names.contains(from),
                "COPY --from={from}: no such stage"
            );
        }
    }
    let config_copy = copies
        .iter()
        .find(|c| c.contains("config/image.toml"))
        .expect("the image's config is copied");
    let config_in_image = config_copy.split_whitespace().last().unwrap();
    let position = entrypoint.iter().position(|a| a == "--config").unwrap();
    assert_eq!(entrypoint[position + 1], config_in_image);
    let mut argv = entrypoint.clone();
    argv.extend(cmd);
    let mut env_for_daemon: BTreeMap<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with("OMNI__"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // The image has no tenant, so no token of its own: it refuses to run until given one.
    let image_toml = workspace().join("config/image.toml");
    let text_of_config = read(&image_toml);
    assert!(
        !text_of_config.contains("[tenants") && !text_of_config.contains("demo"),
        "the image's config holds a tenant"
    );
    let bare = omnirouter(
        &[
            "--config".into(),
            image_toml.to_str().unwrap().into(),
            "check-config".into(),
        ],
        &env_for_daemon,
    );
    assert_eq!(bare.status.code(), Some(2), "{}", text(&bare));
    assert!(text(&bare).contains("tenant"), "{}", text(&bare));
    env_for_daemon.insert(
        "OMNI__TENANTS__ACME__API_TOKEN".into(),
        "a-token-from-the-secret-store".into(),
    );
    let verdict = check_command_line(
        "ENTRYPOINT + CMD",
        &argv,
        config_in_image,
        &image_toml,
        &env_for_daemon,
    );
    assert!(
        verdict.contains(&format!("listen {listen}")) && verdict.contains("1 tenant(s)"),
        "{verdict}"
    );
    runtime_run
}

/// Build context: every COPY source exists and passes deploy/Dockerfile.dockerignore, and
/// the builder copies every workspace member (cargo --locked needs all their manifests).
fn dockerfile_context_holds_every_copy_source_and_nothing_big(stages: &[Stage<'_>]) {
    let ignore = read(&deploy("Dockerfile.dockerignore"));
    let mut copied_roots = BTreeSet::new();
    for stage in stages {
        for c in in_stage(&stage.2, "COPY") {
            if c.contains("--from=") {
                continue;
            }
            let words: Vec<&str> = c
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            for src in &words[..words.len() - 1] {
                let src = src.trim_end_matches('/');
                assert!(
                    workspace().join(src).exists(),
                    "COPY {src}: not in the workspace"
                );
                assert!(
                    context_includes(&ignore, src),
                    "COPY {src}: excluded by Dockerfile.dockerignore"
                );
                copied_roots.insert(src.split('/').next().unwrap().to_owned());
            }
        }
    }
    for big in ["target", ".venv", ".run", ".git", "target/debug/omnirouter"] {
        assert!(
            !context_includes(&ignore, big),
            "{big} would be sent to the builder"
        );
    }
    let manifest = toml_str(&read(&workspace().join("Cargo.toml")));
    for member in manifest["workspace"]["members"].as_array().unwrap() {
        let root = str_of(member, "member").split('/').next().unwrap();
        assert!(copied_roots.contains(root), "builder does not copy {root}/");
    }
    assert!(copied_roots.contains("Cargo.lock"));
}

/// Runs the HEALTHCHECK's shell command (as the image would: `/bin/sh -c`) against a daemon
/// with no Kafka at all (liveness must not depend on it), then against a closed port.
fn healthcheck_command_works(healthcheck: &str) {
    let shell = healthcheck
        .split_once("CMD ")
        .expect("HEALTHCHECK ... CMD <command>")
        .1;
    assert!(
        !shell.starts_with('['),
        "shell form expected, to read the port from the env"
    );
    let daemon = Daemon::spawn("127.0.0.1:1", &[]);
    let probe = |port: u16| {
        Command::new("sh")
            .args(["-c", shell])
            .env("OMNI__SERVER__LISTEN", format!("0.0.0.0:{port}"))
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = probe(daemon.port);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "HEALTHCHECK fails against a live daemon: {}\nlog:\n{}",
            text(&out),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let closed = omni_e2e::free_port();
    assert!(
        !probe(closed).status.success(),
        "HEALTHCHECK passes on a closed port"
    );
}

/// The libraries the binary links come from packages of the runtime stage: those it installs,
/// their dependencies, and Debian's essential set (what every debian image has). Resolved with
/// this machine's dpkg database, which is the same Debian release (bookworm) as the images.
fn runtime_packages_provide_the_linked_libraries(runtime_run: &str) {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    if !release.contains("VERSION_CODENAME=bookworm") {
        println!("note: not on Debian bookworm: runtime library check skipped");
        return;
    }
    let installed: Vec<String> = runtime_run
        .split("apt-get install")
        .skip(1)
        .flat_map(|rest| {
            rest.split("&&")
                .next()
                .unwrap()
                .split_whitespace()
                .filter(|w| !w.starts_with('-'))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(installed.contains(&"libssl3".to_owned()), "{installed:?}");
    let out = Command::new("dpkg-query")
        .args([
            "-W",
            "-f=${Package}\t${Essential}\t${Pre-Depends}, ${Depends}\n",
        ])
        .output()
        .unwrap();
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut closure: Vec<String> = installed;
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let mut f = line.split('\t');
        let (pkg, essential, depends) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        let names = depends
            .split([',', '|'])
            .filter_map(|d| d.split_whitespace().next())
            .map(|d| d.split(':').next().unwrap().to_owned())
            .collect();
        deps.insert(pkg.to_owned(), names);
        if essential == "yes" {
            closure.push(pkg.to_owned());
        }
    }
    let mut seen = BTreeSet::new();
    while let Some(p) = closure.pop() {
        if seen.insert(p.clone()) {
            closure.extend(deps.get(&p).cloned().unwrap_or_default());
        }
    }
    let ldd = Command::new("ldd").arg(omnirouter_bin()).output().unwrap();
    for line in String::from_utf8(ldd.stdout).unwrap().lines() {
        let Some(path) = line
            .split("=>")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .or_else(|| {
                line.split_whitespace()
                    .next()
                    .filter(|p| p.starts_with('/'))
            })
        else {
            continue; // linux-vdso
        };
        let real = std::fs::canonicalize(path).unwrap();
        let owner = [PathBuf::from(path), real.clone()]
            .iter()
            .chain(
                [
                    real.to_str().unwrap().replacen("/usr/lib/", "/lib/", 1),
                    real.to_str().unwrap().replacen("/lib/", "/usr/lib/", 1),
                ]
                .map(PathBuf::from)
                .iter(),
            )
            .find_map(|p| {
                let out = Command::new("dpkg").arg("-S").arg(p).output().ok()?;
                let s = String::from_utf8(out.stdout).ok()?;
                Some(s.split(':').next()?.to_owned()).filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| panic!("no package owns {path}"));
        assert!(
            seen.contains(&owner),
            "the binary links {path} from {owner}, which the runtime image lacks"
        );
        println!("runtime library {path}: {owner}");
    }
}

// ---------------------------------------------------------------------------------------------
// Grafana dashboard

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Metric families the crates register: a `"omni_…"` literal passed to `Opts::new`,
/// `HistogramOpts::new` or a registering helper, typed by the constructor just before it.
fn registered_metrics() -> BTreeMap<String, Kind> {
    let mut files = Vec::new();
    for krate in std::fs::read_dir(workspace().join("crates")).unwrap() {
        let src = krate.unwrap().path().join("src");
        if src.is_dir() {
            rust_sources(&src, &mut files);
        }
    }
    let mut out = BTreeMap::new();
    for file in files {
        let text = read(&file);
        let mut from = 0;
        while let Some(i) = text[from..].find("\"omni_") {
            let start = from + i + 1;
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            from = start + name.len();
            if !text[from..].starts_with('"') {
                continue;
            }
            let before = text[..start - 1].trim_end();
            if !["Opts::new(", "hist(", "counter(", "gauge("]
                .iter()
                .any(|p| before.ends_with(p))
            {
                continue;
            }
            let mut w = start.saturating_sub(600);
            while !text.is_char_boundary(w) {
                w += 1;
            }
            let window = &text[w..start];
            let kind = [
                ("hist(", Kind::Histogram),
                ("Histogram", Kind::Histogram),
                ("counter(", Kind::Counter),
                ("Counter", Kind::Counter),
                ("gauge(", Kind::Gauge),
                ("Gauge", Kind::Gauge),
            ]
            .iter()
            .filter_map(|(k, kind)| window.rfind(k).map(|p| (p, *kind)))
            .max_by_key(|(p, _)| *p)
            .unwrap_or_else(|| panic!("{}: cannot type {name}", file.display()))
            .1;
            out.insert(name, kind);
        }
    }
    out
}

/// (family, kind) of a series name, if it belongs to a registered family.
fn family(series: &str, registered: &BTreeMap<String, Kind>) -> Option<(String, Kind)> {
    if let Some(kind) = registered.get(series) {
        return (*kind != Kind::Histogram).then(|| (series.to_owned(), *kind));
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = series.strip_suffix(suffix)?;
        (registered.get(base) == Some(&Kind::Histogram)).then(|| (base.to_owned(), Kind::Histogram))
    })
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `omni_…` series names in a PromQL expression, with their byte offsets.
fn series_in(expr: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = expr[from..].find("omni_") {
        let start = from + i;
        let name: String = expr[start..].chars().take_while(|c| is_ident(*c)).collect();
        from = start + name.len();
        if start > 0 && expr[..start].ends_with(is_ident) {
            continue;
        }
        out.push((start, name));
    }
    out
}

/// The text inside the parentheses opening at `open` (a byte offset of `(`).
fn group(expr: &str, open: usize) -> &str {
    let mut depth = 0;
    for (i, c) in expr[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &expr[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced: {expr}")
}

/// Label names used on each series: `{label=…}` selectors, and `by (…)` clauses over the
/// series they aggregate.
fn labels_used(expr: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (at, name) in series_in(expr) {
        let rest = &expr[at + name.len()..];
        if rest.starts_with('{') {
            let body = &rest[1..rest.find('}').unwrap()];
            for matcher in body.split(',') {
                let label: String = matcher
                    .trim()
                    .chars()
                    .take_while(|c| is_ident(*c))
                    .collect();
                out.push((name.clone(), label));
            }
        }
    }
    let mut from = 0;
    while let Some(i) = expr[from..].find("by (") {
        let open = from + i + 3;
        let labels: Vec<String> = group(expr, open)
            .split(',')
            .map(|l| l.trim().to_owned())
            .collect();
        let after = open + group(expr, open).len() + 2;
        let operand_open = after + expr[after..].find('(').unwrap();
        for (_, series) in series_in(group(expr, operand_open)) {
            for l in &labels {
                out.push((series.clone(), l.clone()));
            }
        }
        from = open;
    }
    out
}

/// `# TYPE` kinds and the label names of every sample in a /metrics text.
fn exposition(text: &str) -> (BTreeMap<String, Kind>, BTreeMap<String, BTreeSet<String>>) {
    let mut types = BTreeMap::new();
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap();
            let kind = match kind {
                "counter" => Kind::Counter,
                "gauge" => Kind::Gauge,
                "histogram" => Kind::Histogram,
                other => panic!("{name}: type {other}"),
            };
            types.insert(name.to_owned(), kind);
        } else if !line.starts_with('#') && !line.is_empty() {
            let name: String = line.chars().take_while(|c| is_ident(*c)).collect();
            let set = labels.entry(name.clone()).or_default();
            if let Some(body) = line[name.len()..].strip_prefix('{') {
                for pair in body[..body.rfind('}').unwrap()].split("\",") {
                    set.insert(pair.split('=').next().unwrap().trim().to_owned());
                }
            }
        }
    }
    (types, labels)
}

fn panels(v: &Value, out: &mut Vec<Value>) {
    for p in v.as_array().cloned().unwrap_or_default() {
        panels(&p["panels"], out);
        out.push(p);
    }
}

/// Drives a conversation through the daemon so the router's families have samples: agent
/// online, customer message, an SLA breach (1 s target), reply, resolve, reopen, CSAT, a
/// duplicate and a rejected request; then Kafka goes away, for the error families.
async fn exercise(daemon: &Daemon, broker: &mut Broker) -> String {
    let conv = a_customer_message_waits_past_its_sla(daemon).await;
    the_agent_replies_resolves_and_the_customer_rates_and_reopens(daemon, &conv).await;
    a_reply_without_a_sender_is_a_counted_delivery_failure(daemon, &conv).await;
    broker.stop();
    with_kafka_gone_publishing_fails(daemon).await
}

/// POSTs an agent command; the answer's status.
async fn agent_command(daemon: &Daemon, body: Value) -> u16 {
    reqwest::Client::new()
        .post(daemon.url("/v1/tenants/demo/commands"))
        .bearer_auth("demo-agent-token")
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// POSTs an agent reply; the answer's status.
async fn agent_reply(daemon: &Daemon, body: Value) -> u16 {
    reqwest::Client::new()
        .post(daemon.url("/v1/tenants/demo/replies"))
        .bearer_auth("demo-agent-token")
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// POSTs a customer message on the API channel with `token`.
async fn customer_message(daemon: &Daemon, body: &Value, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(daemon.url("/v1/inbound/demo"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Polls /metrics until a line starts with `series` (30 s at most); the text that has it.
async fn wait_for_series(daemon: &Daemon, series: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = daemon.metrics().await;
        if m.lines().any(|l| l.starts_with(series)) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never appeared:\n{m}\nlog:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Agent `lan` comes online; a customer message (sent twice: a duplicate, and once with a
/// wrong token) waits, and breaches the 1 s SLA. Returns the conversation id.
async fn a_customer_message_waits_past_its_sla(daemon: &Daemon) -> String {
    for c in [
        json!({"command": "upsert_agent", "agent": "lan", "skills": {"vi": 4}, "capacity": 3}),
        json!({"command": "set_presence", "agent": "lan", "presence": "online"}),
    ] {
        assert_eq!(agent_command(daemon, c).await, 202);
    }
    let message = json!({"contact": {"id": "cust-1", "language": "vi"}, "text": "Chào shop",
                         "client_message_id": "deploy-1"});
    let r = customer_message(daemon, &message, "demo-token").await;
    assert_eq!(r.status().as_u16(), 202);
    let conv = r.json::<Value>().await.unwrap()["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        customer_message(daemon, &message, "demo-token")
            .await
            .status()
            .as_u16(),
        202
    );
    assert_eq!(
        customer_message(daemon, &message, "wrong")
            .await
            .status()
            .as_u16(),
        401
    );
    wait_for_series(daemon, "omni_queue_wait_seconds_count").await;
    wait_for_series(daemon, "omni_sla_breaches_total").await;
    conv
}

/// The agent replies (a first response), resolves; the customer rates it, and it reopens.
async fn the_agent_replies_resolves_and_the_customer_rates_and_reopens(
    daemon: &Daemon,
    conv: &str,
) {
    let status = agent_reply(
        daemon,
        json!({"conversation_id": conv, "channel": {"kind": "api", "account": "default"},
               "recipient": "cust-1", "text": "Dạ, shop chào bạn ạ", "agent_id": "lan"}),
    )
    .await;
    assert_eq!(status, 202);
    wait_for_series(daemon, "omni_first_response_seconds_bucket").await;
    assert_eq!(
        agent_command(daemon, json!({"command": "resolve", "conversation": conv})).await,
        202
    );
    wait_for_series(daemon, "omni_conversations_resolved_total").await;
    for c in [
        json!({"command": "csat", "conversation": conv, "score": 5}),
        json!({"command": "reopen", "conversation": conv}),
    ] {
        assert_eq!(agent_command(daemon, c).await, 202);
    }
    wait_for_series(daemon, "omni_conversations_reopened_total").await;
    wait_for_series(daemon, "omni_csat_score_count").await;
}

/// A reply on a channel this daemon has no sender for: a failed delivery, counted.
async fn a_reply_without_a_sender_is_a_counted_delivery_failure(daemon: &Daemon, conv: &str) {
    let status = agent_reply(
        daemon,
        json!({"conversation_id": conv, "channel": {"kind": "sms", "account": "+84900000000"},
               "recipient": "+84901234567", "text": "Dạ vâng ạ", "agent_id": "lan"}),
    )
    .await;
    assert_eq!(status, 202);
    wait_for_series(daemon, "omni_delivery_failures_total").await;
}

/// Kafka gone: client errors, and a publish that times out. Returns /metrics once the client
/// errors show, or after 15 s without them.
async fn with_kafka_gone_publishing_fails(daemon: &Daemon) -> String {
    let lost =
        json!({"contact": {"id": "cust-2"}, "text": "hello?", "client_message_id": "deploy-2"});
    assert_eq!(
        customer_message(daemon, &lost, "demo-token")
            .await
            .status()
            .as_u16(),
        503
    );
    wait_for_series(daemon, "omni_kafka_produce_errors_total").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = daemon.metrics().await;
        if m.contains("omni_kafka_client_errors_total{") || Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_queries_use_only_metrics_the_daemon_exposes() {
    let dashboard: Value =
        serde_json::from_str(&read(&deploy("grafana/dashboards/omnirouter.json"))).unwrap();
    let variables = dashboard_has_a_datasource_and_label_variables(&dashboard);
    let exprs = dashboard_panels_tile_the_grid_and_query_the_datasource(&dashboard, &variables);
    let registered = registered_metrics();
    println!("registered metric families: {registered:?}");
    dashboard_queries_use_registered_families_as_their_kinds_allow(&exprs, &variables, &registered);
    dashboard_labels_exist_on_a_running_daemon(&exprs, &registered).await;
}

/// The metrics table of docs/operations.md has one row per family the crates register, typed
/// as registered, and no row for a family that does not exist.
#[test]
fn the_metrics_table_documents_every_family_as_its_kind() {
    let doc = read(&workspace().join("docs/operations.md"));
    let rows: BTreeMap<String, String> = doc
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix("`omni_")?.strip_suffix('`')?;
            Some((format!("omni_{name}"), cells.get(2)?.to_string()))
        })
        .collect();
    let registered = registered_metrics();
    let mut wrong = Vec::new();
    for (name, kind) in &registered {
        let expected = format!("{kind:?}").to_lowercase();
        match rows.get(name) {
            None => wrong.push(format!("{name}: no row")),
            Some(k) if *k != expected => wrong.push(format!("{name}: row says {k}, is {expected}")),
            Some(_) => {}
        }
    }
    for name in rows.keys().filter(|n| !registered.contains_key(*n)) {
        wrong.push(format!("{name}: documented, never registered"));
    }
    assert!(wrong.is_empty(), "docs/operations.md, Metrics: {wrong:#?}");
}

/// A recent schema, a Prometheus datasource variable, and tenant/queue label variables on it.
fn dashboard_has_a_datasource_and_label_variables(dashboard: &Value) -> BTreeMap<String, Value> {
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let variables: BTreeMap<String, Value> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (str_of(&v["name"], "variable").to_owned(), v.clone()))
        .collect();
    assert_eq!(variables["datasource"]["type"], "datasource");
    assert_eq!(variables["datasource"]["query"], "prometheus");
    for v in ["tenant", "queue"] {
        assert!(
            str_of(&variables[v]["definition"], v).starts_with("label_values("),
            "{v}"
        );
        assert_eq!(variables[v]["datasource"]["uid"], "${datasource}");
    }
    variables
}

/// Panels have unique ids, fit the 24-column grid without overlapping, and query through the
/// datasource variable. Returns every query, panel titles and variables' included.
fn dashboard_panels_tile_the_grid_and_query_the_datasource(
    dashboard: &Value,
    variables: &BTreeMap<String, Value>,
) -> Vec<(String, String)> {
    let mut all = Vec::new();
    panels(&dashboard["panels"], &mut all);
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    let mut exprs: Vec<(String, String)> = Vec::new();
    for p in &all {
        let title = str_of(&p["title"], "title").to_owned();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id: {title}"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "{title}: wider than the grid");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title}: overlaps another panel");
            }
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            exprs.push((title.clone(), str_of(&t["expr"], "expr").to_owned()));
        }
    }
    for v in ["tenant", "queue"] {
        exprs.push((
            format!("variable {v}"),
            str_of(&variables[v]["definition"], v).to_owned(),
        ));
    }
    exprs
}

/// Every query's variables exist, its series are families omnirouter registers, rate() and
/// increase() never range over a gauge, and histogram_quantile keeps `le`.
fn dashboard_queries_use_registered_families_as_their_kinds_allow(
    exprs: &[(String, String)],
    variables: &BTreeMap<String, Value>,
    registered: &BTreeMap<String, Kind>,
) {
    let builtins = ["__rate_interval", "__interval", "__range"];
    let mut used_families = BTreeSet::new();
    for (title, expr) in exprs {
        // Variables exist.
        for part in expr.split('$').skip(1) {
            let name: String = part.chars().take_while(|c| is_ident(*c)).collect();
            if name.starts_with(|c: char| c.is_ascii_digit()) {
                continue; // label_replace's "$1": a capture, no variable (Grafana leaves it)
            }
            assert!(
                variables.contains_key(&name) || builtins.contains(&name.as_str()),
                "{title}: ${name} undefined"
            );
        }
        for (_, series) in series_in(expr) {
            let (fam, _) = family(&series, registered)
                .unwrap_or_else(|| panic!("{title}: {series} is not a metric omnirouter exposes"));
            used_families.insert(fam);
        }
        // rate()/increase() over counters and histogram parts only.
        for f in ["rate(", "increase("] {
            let mut from = 0;
            while let Some(i) = expr[from..].find(f) {
                let inner = expr[from + i + f.len()..].trim_start();
                let series: String = inner.chars().take_while(|c| is_ident(*c)).collect();
                from += i + f.len();
                let (_, kind) = family(&series, registered).unwrap();
                assert!(
                    kind != Kind::Gauge,
                    "{title}: {f}…) over the gauge {series}"
                );
            }
        }
        // histogram_quantile over buckets, aggregated keeping le.
        if let Some(i) = expr.find("histogram_quantile(") {
            let inner = group(expr, i + "histogram_quantile".len());
            assert!(inner.contains("_bucket"), "{title}: {inner}");
            let by = inner
                .find("by (")
                .map(|b| group(inner, b + 3))
                .unwrap_or_default();
            assert!(
                by.split(',').any(|l| l.trim() == "le"),
                "{title}: le dropped"
            );
        }
    }
    let unused: Vec<&String> = registered
        .keys()
        .filter(|m| !used_families.contains(*m))
        .collect();
    println!("families not on the dashboard: {unused:?}");
}

/// Against a running daemon: every family it exposes is one the source scan found, with the
/// same type (so the scan is right), and the labels the dashboard uses exist.
async fn dashboard_labels_exist_on_a_running_daemon(
    exprs: &[(String, String)],
    registered: &BTreeMap<String, Kind>,
) {
    let mut broker = Broker::memory();
    let daemon = Daemon::start(
        &broker,
        &[
            (
                "OMNI__TENANTS__DEMO__ROUTING__QUEUES__GENERAL__SLA__FIRST_RESPONSE_SECS",
                "1",
            ),
            ("OMNI__KAFKA__PUBLISH_TIMEOUT_MS", "1500"),
        ],
    )
    .await;
    let metrics = exercise(&daemon, &mut broker).await;
    let (types, labels) = exposition(&metrics);
    for (name, kind) in &types {
        if name.starts_with("omni_") {
            assert_eq!(
                registered.get(name),
                Some(kind),
                "{name} on /metrics is not what the source scan found"
            );
        }
    }
    assert!(
        metrics.contains("omni_first_response_seconds_bucket{")
            && metrics
                .lines()
                .any(|l| l.starts_with("omni_first_response_seconds_bucket{")
                    && l.contains("le=\"60\"")),
        "the service-level query needs a le=\"60\" bucket"
    );
    let mut unchecked = BTreeSet::new();
    for (title, expr) in exprs {
        for (series, label) in labels_used(expr) {
            if label == "instance" || label == "job" {
                continue; // added by Prometheus
            }
            match labels.get(&series) {
                Some(set) => assert!(
                    set.contains(&label),
                    "{title}: {series} has no label {label} (has {set:?})"
                ),
                None => {
                    unchecked.insert(series);
                }
            }
        }
    }
    println!("dashboard series not exercised here (labels unchecked): {unchecked:?}");
    let exposed: BTreeSet<&String> = types.keys().collect();
    println!("exposed families: {exposed:?}");
}
