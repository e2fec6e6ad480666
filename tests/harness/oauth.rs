//! A stand-in for Zalo's OAuth token endpoint that behaves as Zalo documents: every refresh
//! token works once, and each refresh returns the next pair. It records every refresh, so a
//! test can tell one refresh per due token from two replicas racing with the same token.

use axum::extract::State;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One refresh call as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Refresh {
    /// When it arrived.
    pub at: Instant,
    /// The refresh token it presented.
    pub presented: String,
    /// Whether it was the one valid refresh token (else Zalo refuses it).
    pub accepted: bool,
    /// The access token issued, when accepted.
    pub issued: Option<String>,
}

#[derive(Default)]
struct Chain {
    valid: String,
    issued: u32,
    refreshes: Vec<Refresh>,
    /// Access token → when it was issued.
    access: HashMap<String, Instant>,
}

/// The stand-in server; the first valid refresh token is `R0`.
pub struct ZaloOauth {
    /// Its base URL.
    pub url: String,
    chain: Arc<Mutex<Chain>>,
    /// Lifetime of the access tokens it issues.
    pub expires_in: Duration,
    _server: tokio::task::JoinHandle<()>,
}

impl ZaloOauth {
    /// Starts on a free 127.0.0.1 port, issuing access tokens valid `expires_in`.
    pub async fn start(expires_in: Duration) -> Self {
        let chain = Arc::new(Mutex::new(Chain {
            valid: "R0".into(),
            ..Chain::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let secs = expires_in.as_secs();
        let app = axum::Router::new()
            .route(
                "/v4/oa/access_token",
                axum::routing::post(
                    move |State(chain): State<Arc<Mutex<Chain>>>, body: String| async move {
                        // The tokens this stand-in issues are plain ASCII: no decoding needed.
                        let presented = body
                            .split('&')
                            .filter_map(|kv| kv.split_once('='))
                            .find(|(k, _)| *k == "refresh_token")
                            .map(|(_, v)| v.to_owned())
                            .unwrap_or_default();
                        let mut c = chain.lock().unwrap();
                        let accepted = presented == c.valid;
                        let mut issued = None;
                        let body = if accepted {
                            c.issued += 1;
                            let n = c.issued;
                            c.valid = format!("R{n}");
                            let access = format!("A{n}");
                            c.access.insert(access.clone(), Instant::now());
                            issued = Some(access.clone());
                            serde_json::json!({"access_token": access, "refresh_token": format!("R{n}"), "expires_in": secs.to_string()})
                        } else {
                            serde_json::json!({"error": -14014, "error_name": "Invalid refresh token", "error_description": "used or unknown"})
                        };
                        c.refreshes.push(Refresh {
                            at: Instant::now(),
                            presented,
                            accepted,
                            issued,
                        });
                        axum::Json(body)
                    },
                ),
            )
            .with_state(chain.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            chain,
            expires_in,
            _server: server,
        }
    }

    /// Every refresh so far.
    pub fn refreshes(&self) -> Vec<Refresh> {
        self.chain.lock().unwrap().refreshes.clone()
    }

    /// When `access` was issued, if this stand-in issued it.
    pub fn issued_at(&self, access: &str) -> Option<Instant> {
        self.chain.lock().unwrap().access.get(access).copied()
    }

    /// Waits until `n` refreshes were accepted (at most `timeout`); how many were.
    pub async fn wait_accepted(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.refreshes().iter().filter(|r| r.accepted).count();
            if got >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
