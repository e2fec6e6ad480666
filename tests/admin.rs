//! The admin listener (`server.admin_listen`): what only operators, Prometheus and the CRM
//! reach (`/metrics`, `/readyz`, the agent API) listens apart from what the internet reaches
//! (webhooks, the API channel, live chat), so a NetworkPolicy or a firewall can keep them
//! apart. `/healthz` is on both. Replicas forwarding reads to each other use the admin side
//! (tests/replicas.rs runs its three-replica failover that way).

use omni_e2e::{Broker, Daemon, ADMIN_AUTO, ADMIN_LISTEN};
use serde_json::json;

async fn status(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn public_and_admin_routes_listen_apart() {
    let broker = Broker::memory();
    let daemon = Daemon::start(&broker, &[(ADMIN_LISTEN, ADMIN_AUTO)]).await;
    let admin = daemon.admin_port.expect("an admin port");
    assert_ne!(admin, daemon.port);
    let c = reqwest::Client::new();
    let message =
        json!({"contact": {"id": "cust-1"}, "text": "Chào shop", "client_message_id": "m-1"});

    // The public side: webhooks, the API channel, live chat and liveness; nothing else.
    let inbound = c
        .post(daemon.url("/v1/inbound/demo"))
        .bearer_auth("demo-token")
        .json(&message);
    assert_eq!(status(inbound).await, 202);
    assert_eq!(status(c.get(daemon.url("/healthz"))).await, 200);
    assert_eq!(
        status(c.get(daemon.url("/v1/livechat/widget.js"))).await,
        200
    );
    for path in [
        "/metrics",
        "/readyz",
        "/v1/tenants/demo/queues",
        "/v1/tenants/demo/agents",
    ] {
        let r = c.get(daemon.url(path)).bearer_auth("demo-agent-token");
        assert_eq!(status(r).await, 404, "{path} on the public listener");
    }
    let command = c
        .post(daemon.url("/v1/tenants/demo/commands"))
        .bearer_auth("demo-agent-token")
        .json(&json!({"command": "set_presence", "agent": "lan", "presence": "online"}));
    assert_eq!(
        status(command).await,
        404,
        "agent writes on the public listener"
    );

    // The admin side: health, readiness, metrics and the agent API; no public endpoint.
    for path in ["/healthz", "/readyz", "/metrics", "/v1/tenants/demo/queues"] {
        let r = c
            .get(daemon.admin_url(path))
            .bearer_auth("demo-agent-token");
        assert_eq!(status(r).await, 200, "{path} on the admin listener");
    }
    let inbound = c
        .post(daemon.admin_url("/v1/inbound/demo"))
        .bearer_auth("demo-token")
        .json(&message);
    assert_eq!(
        status(inbound).await,
        404,
        "the API channel on the admin listener"
    );
    assert_eq!(
        status(c.get(daemon.admin_url("/v1/livechat/widget.js"))).await,
        404
    );
    // Both listeners' requests are on the one metrics page.
    let metrics = daemon.metrics().await;
    assert!(
        omni_e2e::metric_value(
            &metrics,
            "omni_http_requests_total",
            &["route=\"/v1/inbound/{tenant}\"", "status=\"202\""]
        ) >= 1.0,
        "{metrics}"
    );
}

#[test]
fn an_admin_listener_on_the_public_port_is_refused() {
    let out = std::process::Command::new(omni_e2e::omnirouter_bin())
        .arg("--config")
        .arg(omni_e2e::workspace().join("config/default.toml"))
        .arg("check-config")
        .env(ADMIN_LISTEN, "127.0.0.1:8080")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.admin_listen"));
}
