//! A tenant's HTTP API on a running daemon, as the load generators use it: customer messages
//! in (`POST /v1/inbound/{tenant}`), agents and commands through the agent API.

use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Errors of the benchmark clients (they report and exit; nothing to match on).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The command-line arguments that name a daemon and a tenant's tokens.
#[derive(Debug, Clone, clap::Args)]
pub struct TenantArgs {
    /// The daemon's base URL (public listener: `/v1/inbound/...`).
    #[arg(long)]
    pub url: String,
    /// The daemon's admin base URL (the tenant API); the public one when not split.
    #[arg(long)]
    pub admin_url: Option<String>,
    /// The tenant.
    #[arg(long, default_value = "bench")]
    pub tenant: String,
    /// The tenant's `api_token` (posting customer messages).
    #[arg(long)]
    pub token: String,
    /// The tenant's `agent_api_token` (commands, agents).
    #[arg(long)]
    pub agent_token: String,
}

impl TenantArgs {
    /// A client with room for `connections` pooled connections.
    pub fn api(&self, connections: usize) -> Result<TenantApi, BoxError> {
        TenantApi::new(
            &self.url,
            self.admin_url.as_deref(),
            &self.tenant,
            &self.token,
            &self.agent_token,
            connections,
        )
    }
}

/// One tenant of one daemon.
#[derive(Debug, Clone)]
pub struct TenantApi {
    /// The HTTP client (pooled; clones share it).
    pub http: reqwest::Client,
    /// Base URL of the public listener (`/v1/inbound/...`).
    pub url: String,
    /// Base URL of the tenant API: the admin listener when it is split, else `url`.
    pub admin_url: String,
    /// The tenant.
    pub tenant: String,
    /// `api_token`: posting customer messages.
    pub token: String,
    /// `agent_api_token`: commands and reads.
    pub agent_token: String,
}

impl TenantApi {
    /// A client for `tenant` with room for `connections` pooled connections.
    pub fn new(
        url: &str,
        admin_url: Option<&str>,
        tenant: &str,
        token: &str,
        agent_token: &str,
        connections: usize,
    ) -> Result<Self, BoxError> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            http,
            url: url.trim_end_matches('/').to_owned(),
            admin_url: admin_url.unwrap_or(url).trim_end_matches('/').to_owned(),
            tenant: tenant.to_owned(),
            token: token.to_owned(),
            agent_token: agent_token.to_owned(),
        })
    }

    /// Posts a router command; the daemon answers 202 once Kafka has it.
    pub async fn command(&self, body: Value) -> Result<(), BoxError> {
        let r = self
            .http
            .post(format!(
                "{}/v1/tenants/{}/commands",
                self.admin_url, self.tenant
            ))
            .bearer_auth(&self.agent_token)
            .json(&body)
            .send()
            .await?;
        if r.status().as_u16() != 202 {
            return Err(format!("command {body}: {} {}", r.status(), r.text().await?).into());
        }
        Ok(())
    }

    /// GET `/v1/tenants/{tenant}/{path}` as JSON.
    pub async fn get(&self, path: &str) -> Result<Value, BoxError> {
        let r = self
            .http
            .get(format!(
                "{}/v1/tenants/{}/{path}",
                self.admin_url, self.tenant
            ))
            .bearer_auth(&self.agent_token)
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(format!("GET {path}: {}", r.status()).into());
        }
        Ok(r.json().await?)
    }

    /// A new customer message from `contact`; the conversation id the daemon answers with.
    pub async fn message(&self, contact: &str, id: &str, text: &str) -> Result<String, BoxError> {
        let r = self
            .http
            .post(format!("{}/v1/inbound/{}", self.url, self.tenant))
            .bearer_auth(&self.token)
            .json(&json!({
                "contact": {"id": contact, "language": "vi"},
                "text": text,
                "client_message_id": id,
            }))
            .send()
            .await?;
        if r.status().as_u16() != 202 {
            return Err(format!("message: {} {}", r.status(), r.text().await?).into());
        }
        let v: Value = r.json().await?;
        v["conversation_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "no conversation_id in the answer".into())
    }

    /// The tenant's agents whose id starts with `prefix`, as the router shows them.
    pub async fn agents(&self, prefix: &str) -> Result<Vec<Value>, BoxError> {
        let v = self.get("agents").await?;
        Ok(v["agents"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|a| a["id"].as_str().is_some_and(|s| s.starts_with(prefix)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Creates `count` agents named `{prefix}{n}` with `capacity`, sets them online (`parallel`
    /// commands in flight) and waits, at most `within`, until the router shows them all online.
    pub async fn agents_online(
        &self,
        prefix: &str,
        count: u32,
        capacity: u32,
        parallel: usize,
        within: Duration,
    ) -> Result<(), BoxError> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        stream::iter(0..count)
            .map(|a| async move {
                let agent = format!("{prefix}{a}");
                self.command(
                    json!({"command": "upsert_agent", "agent": agent, "capacity": capacity}),
                )
                .await?;
                self.command(
                    json!({"command": "set_presence", "agent": agent, "presence": "online"}),
                )
                .await
            })
            .buffer_unordered(parallel.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        let deadline = Instant::now() + within;
        loop {
            let online = self
                .agents(prefix)
                .await
                .map(|a| a.iter().filter(|a| a["presence"] == "online").count())
                .unwrap_or(0);
            if online == count as usize {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{online} of {count} agents online after {} s",
                    within.as_secs()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
