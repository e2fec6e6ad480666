//! The stand-in dovecot asks about bearer tokens: `POST /introspect` with `token=…` (dovecot's
//! `introspection_mode = post`) answers `{"active": true, "username": <owner>}` for a token a
//! test's [`super::TokenEndpoint`] issued, that has not expired and was not revoked, and
//! `{"active": false}` for anything else. Every question is recorded, so a test can tell
//! whether the daemon ever presented an expired token.
//!
//! It runs on a thread with its own runtime: the mail servers are shared by the tests of a
//! process and outlive each test's runtime.

use axum::extract::State;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One question dovecot asked.
#[derive(Debug, Clone)]
pub struct Introspected {
    /// The bearer token presented.
    pub token: String,
    /// Its owner, if a test issued it.
    pub user: Option<String>,
    /// The answer.
    pub active: bool,
    /// Whether it was known but past its expiry (the client presented an expired token).
    pub expired: bool,
}

struct Live {
    user: String,
    expires_at: Instant,
    revoked: bool,
}

#[derive(Default)]
struct Tokens {
    live: HashMap<String, Live>,
    asked: Vec<Introspected>,
}

/// The bearer tokens dovecot accepts, and its introspection endpoint.
pub struct BearerTokens {
    url: String,
    tokens: Arc<Mutex<Tokens>>,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl BearerTokens {
    /// Starts the introspection endpoint on a free 127.0.0.1 port.
    pub(crate) fn start() -> Self {
        let tokens = Arc::new(Mutex::new(Tokens::default()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/introspect", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = axum::Router::new()
            .route("/introspect", axum::routing::post(introspect))
            .with_state(tokens.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Self {
            url,
            tokens,
            stop: Mutex::new(Some(stop)),
            thread: Mutex::new(Some(thread)),
        }
    }

    /// The URL dovecot's oauth2 passdb posts to.
    pub fn introspection_url(&self) -> String {
        self.url.clone()
    }

    /// Makes `token` a valid bearer token of `user` for `lifetime`.
    pub fn issue(&self, token: &str, user: &str, lifetime: Duration) {
        self.lock().live.insert(
            token.to_owned(),
            Live {
                user: user.to_owned(),
                expires_at: Instant::now() + lifetime,
                revoked: false,
            },
        );
    }

    /// Makes `token` invalid before its expiry (as a provider does when a user signs out
    /// everywhere or an admin revokes sessions).
    pub fn revoke(&self, token: &str) {
        if let Some(live) = self.lock().live.get_mut(token) {
            live.revoked = true;
        }
    }

    /// Whether `token` is past its expiry.
    pub fn expired(&self, token: &str) -> bool {
        self.lock()
            .live
            .get(token)
            .is_some_and(|l| Instant::now() >= l.expires_at)
    }

    /// Every question about `user`'s tokens so far.
    pub fn introspected(&self, user: &str) -> Vec<Introspected> {
        self.lock()
            .asked
            .iter()
            .filter(|a| a.user.as_deref() == Some(user))
            .cloned()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the endpoint (after dovecot, which asks it).
    pub(crate) fn stop(&self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

async fn introspect(
    State(tokens): State<Arc<Mutex<Tokens>>>,
    axum::Form(form): axum::Form<BTreeMap<String, String>>,
) -> axum::Json<serde_json::Value> {
    let token = form.get("token").cloned().unwrap_or_default();
    let mut tokens = tokens.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    let (user, active, expired) = match tokens.live.get(&token) {
        Some(l) => (
            Some(l.user.clone()),
            !l.revoked && now < l.expires_at,
            now >= l.expires_at,
        ),
        None => (None, false, false),
    };
    tokens.asked.push(Introspected {
        token,
        user: user.clone(),
        active,
        expired,
    });
    axum::Json(match (active, user) {
        (true, Some(user)) => serde_json::json!({"active": true, "username": user}),
        _ => serde_json::json!({"active": false}),
    })
}
