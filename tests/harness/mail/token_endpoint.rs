//! A stand-in for a provider's OAuth 2.0 token endpoint (Google's, Microsoft's), one per test:
//! `POST /token` with `grant_type=refresh_token` (RFC 6749 §6). It checks the client and the
//! refresh token, issues access tokens that dovecot accepts for the test's mailbox (registered
//! with the mail servers' [`super::BearerTokens`]) for a lifetime the test chooses, and can
//! rotate refresh tokens the strict way (only the newest one works) or refuse them all
//! (`invalid_grant`, as after a revocation). It records every request.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::MailServer;

static NEXT: AtomicU32 = AtomicU32::new(1);

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// Its `Content-Type`.
    pub content_type: String,
    /// Its form fields.
    pub form: BTreeMap<String, String>,
    /// When it arrived.
    pub at: Instant,
    /// The access token issued, if the request was granted.
    pub issued: Option<String>,
}

struct Grants {
    mail: Arc<MailServer>,
    user: String,
    lifetime: Duration,
    client_secret: String,
    tag: u32,
    /// The refresh token that works now.
    valid: String,
    revoked: bool,
    rotate: bool,
    refreshes: u32,
    requests: Vec<TokenRequest>,
    /// Every refresh token handed out (the configured one first).
    refresh_tokens: Vec<String>,
}

/// The token endpoint of one test's mailbox.
pub struct TokenEndpoint {
    /// `http://127.0.0.1:<port>/token`.
    pub url: String,
    grants: Arc<Mutex<Grants>>,
    _server: tokio::task::JoinHandle<()>,
}

impl TokenEndpoint {
    /// The client id every stand-in expects.
    pub const CLIENT_ID: &'static str = "omnirouter-test.apps.example.test";
    /// The scopes its mailboxes ask for (Microsoft's, named on every refresh).
    pub const SCOPE: &'static str = "https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send offline_access";

    /// Starts on a free port, issuing access tokens for `user` valid `lifetime`; with
    /// `rotate`, each refresh also hands out the next refresh token and voids the one used.
    pub async fn start(
        mail: &Arc<MailServer>,
        user: &str,
        lifetime: Duration,
        rotate: bool,
    ) -> Self {
        let tag = NEXT.fetch_add(1, Ordering::SeqCst);
        let first = format!("rt-{}-{tag}-0", std::process::id());
        let grants = Arc::new(Mutex::new(Grants {
            mail: mail.clone(),
            user: user.to_owned(),
            lifetime,
            client_secret: format!("cs-{}-{tag}", std::process::id()),
            tag,
            valid: first.clone(),
            revoked: false,
            rotate,
            refreshes: 0,
            requests: Vec::new(),
            refresh_tokens: vec![first],
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/token", axum::routing::post(token))
            .with_state(grants.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            grants,
            _server: server,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Grants> {
        self.grants.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client secret it expects.
    pub fn client_secret(&self) -> String {
        self.lock().client_secret.clone()
    }

    /// The refresh token to configure (the one from the "consent").
    pub fn refresh_token(&self) -> String {
        self.lock().refresh_tokens[0].clone()
    }

    /// From now on every refresh token is refused with `invalid_grant`.
    pub fn revoke_refresh_tokens(&self) {
        self.lock().revoked = true;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.lock().requests.clone()
    }

    /// Every access token issued so far, oldest first.
    pub fn issued(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter_map(|r| r.issued)
            .collect()
    }

    /// Every refresh token handed out, the configured one first.
    pub fn refresh_tokens(&self) -> Vec<String> {
        self.lock().refresh_tokens.clone()
    }

    /// What must never appear in a log: the client secret, every refresh and access token.
    pub fn secrets(&self) -> Vec<String> {
        let mut all = self.refresh_tokens();
        all.extend(self.issued());
        all.push(self.client_secret());
        all
    }

    /// Waits until `n` access tokens were issued (at most `timeout`); how many were.
    pub async fn wait_issued(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.issued().len();
            if got >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The settings of a mailbox using this endpoint (scope as Microsoft wants it named).
    pub fn settings(&self) -> omni_email::OAuth2Settings {
        omni_email::OAuth2Settings {
            token_url: self.url.clone(),
            client_id: Self::CLIENT_ID.into(),
            client_secret: Some(omni_core::Secret::new(self.client_secret())),
            refresh_token: omni_core::Secret::new(self.refresh_token()),
            scope: Some(Self::SCOPE.into()),
            timeout: Duration::from_secs(10),
        }
    }

    /// The environment configuring the `oauth2` table of the mailbox under `prefix`
    /// (`OMNI__TENANTS__<T>__EMAIL__MAILBOXES__<M>__`).
    pub fn env(&self, prefix: &str) -> Vec<(String, String)> {
        let k = |key: &str| format!("{prefix}OAUTH2__{key}");
        vec![
            (k("TOKEN_URL"), self.url.clone()),
            (k("CLIENT_ID"), Self::CLIENT_ID.into()),
            (k("CLIENT_SECRET"), self.client_secret()),
            (k("REFRESH_TOKEN"), self.refresh_token()),
            (k("SCOPE"), Self::SCOPE.into()),
        ]
    }
}

async fn token(
    State(grants): State<Arc<Mutex<Grants>>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<BTreeMap<String, String>>,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut g = grants.lock().unwrap_or_else(|p| p.into_inner());
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let client_ok =
        field("client_id") == TokenEndpoint::CLIENT_ID && field("client_secret") == g.client_secret;
    let grant_ok =
        field("grant_type") == "refresh_token" && field("refresh_token") == g.valid && !g.revoked;
    let mut request = TokenRequest {
        content_type,
        form: form.clone(),
        at: Instant::now(),
        issued: None,
    };
    let answer = if !client_ok {
        (
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "invalid_client", "error_description": "unknown client"}),
        )
    } else if !grant_ok {
        (
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}),
        )
    } else {
        g.refreshes += 1;
        let access = format!("at-{}-{}-{}", std::process::id(), g.tag, g.refreshes);
        g.mail.bearer.issue(&access, &g.user, g.lifetime);
        request.issued = Some(access.clone());
        let mut body = serde_json::json!({
            "access_token": access, "token_type": "Bearer",
            "expires_in": g.lifetime.as_secs(), "scope": TokenEndpoint::SCOPE,
        });
        if g.rotate {
            let next = format!("rt-{}-{}-{}", std::process::id(), g.tag, g.refreshes);
            g.valid = next.clone();
            g.refresh_tokens.push(next.clone());
            body["refresh_token"] = next.into();
        }
        (StatusCode::OK, body)
    };
    g.requests.push(request);
    (answer.0, axum::Json(answer.1))
}
