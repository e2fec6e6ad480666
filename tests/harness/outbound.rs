//! Helpers for the outbound tests: a Graph Send API stand-in that records every part with the
//! instant it arrived (and can accept a part and then not answer, as a provider whose answer
//! is lost), and replies written to `omni.outbound.v1` as a CRM writes them.

use axum::body::Bytes;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One Send API call as the stand-in received it.
#[derive(Debug, Clone)]
pub struct Part {
    /// When it arrived.
    pub at: Instant,
    /// The page in the path.
    pub page: String,
    /// The outbound event id, from `message.metadata` (`omnirouter:<id>`).
    pub reply: String,
    /// What the part carries: its text or its attachment URL.
    pub content: String,
}

/// A Graph API stand-in: answers every send with a new `message_id` after `delay`, except
/// that a part whose text contains `hang_marker` is recorded (accepted) and answered only
/// after `hang`.
pub struct Graph {
    pub url: String,
    parts: Arc<Mutex<Vec<Part>>>,
}

impl Graph {
    pub async fn start(delay: Duration, hang_marker: &'static str, hang: Duration) -> Self {
        let parts = Arc::new(Mutex::new(Vec::<Part>::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let p = parts.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: Bytes| {
            let parts = p.clone();
            async move {
                let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let message = &json["message"];
                let content = message["text"]
                    .as_str()
                    .or_else(|| message["attachment"]["payload"]["url"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                let reply = message["metadata"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches("omnirouter:")
                    .to_owned();
                // /v23.0/{page}/messages
                let page = uri.path().split('/').nth(2).unwrap_or_default().to_owned();
                let hangs = !hang_marker.is_empty() && content.contains(hang_marker);
                let n = {
                    let mut parts = parts.lock().unwrap();
                    parts.push(Part {
                        at: Instant::now(),
                        page,
                        reply,
                        content,
                    });
                    parts.len()
                };
                tokio::time::sleep(if hangs { hang } else { delay }).await;
                axum::Json(json!({"recipient_id": "psid", "message_id": format!("m_{n}")}))
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, parts }
    }

    /// Every part received so far, in arrival order.
    pub fn parts(&self) -> Vec<Part> {
        self.parts.lock().unwrap().clone()
    }

    /// Waits until `n` parts arrived (or `timeout`), and returns them.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Part> {
        let deadline = Instant::now() + timeout;
        while self.parts().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.parts()
    }
}

/// The environment giving each tenant one Messenger page (`page_of(tenant)`) sent through
/// `graph`.
pub fn messenger_env(graph: &Graph, tenants: &[&str]) -> Vec<(String, String)> {
    let mut env = vec![(
        "OMNI__MESSENGER__GRAPH_BASE_URL".to_owned(),
        graph.url.clone(),
    )];
    for t in tenants {
        let up = t.to_uppercase();
        env.push((
            format!("OMNI__TENANTS__{up}__MESSENGER__APP_SECRET"),
            "META-SECRET".into(),
        ));
        env.push((
            format!("OMNI__TENANTS__{up}__MESSENGER__VERIFY_TOKEN"),
            "VERIFY".into(),
        ));
        env.push((
            format!(
                "OMNI__TENANTS__{up}__MESSENGER__PAGES__{}__ACCESS_TOKEN",
                page_of(t)
            ),
            format!("TOKEN-{t}"),
        ));
    }
    env
}

/// A tenant's page id in these tests.
pub fn page_of(tenant: &str) -> String {
    let n: u64 = tenant.bytes().map(u64::from).sum();
    format!("1049{n:011}")
}

/// An `omni.message.send` CloudEvent: a reply to `psid` on the tenant's page with `text` and
/// one Messenger part per attachment URL.
pub fn messenger_reply(tenant: &str, psid: &str, text: &str, attachments: &[String]) -> Value {
    let page = page_of(tenant);
    let channel = json!({"kind": "messenger", "account": page});
    json!({
        "specversion": "1.0",
        "id": crate::uuid_like(),
        "source": "/crm/python",
        "type": "omni.message.send",
        "time": chrono::Utc::now().to_rfc3339(),
        "datacontenttype": "application/json",
        "tenant": tenant,
        "subject": crate::uuid_like(),
        "data": {
            "tenant": tenant,
            "conversation_id": crate::uuid_like(),
            "channel": channel,
            "recipient": psid,
            "agent_id": "agent-1",
            "text": text,
            "attachments": attachments
                .iter()
                .map(|u| json!({"url": u, "content_type": "image/jpeg"}))
                .collect::<Vec<_>>(),
        },
    })
}

/// The fates on `omni.delivery.v1` so far: (outbound event id, status, reason), one per
/// delivery event. Reads to the topic's current end (until nothing arrives for a
/// second), however many events a reply has.
pub fn fates(bootstrap: &str) -> Vec<(String, String, String)> {
    crate::read_log(bootstrap, "omni.delivery.v1", Duration::from_secs(1))
        .into_iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.value?).ok())
        .map(|v| {
            let d = &v["data"];
            (
                d["outbound_event_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                d["status"].as_str().unwrap_or_default().to_owned(),
                d["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}
