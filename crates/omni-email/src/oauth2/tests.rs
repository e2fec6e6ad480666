//! The token source against a local stand-in of a token endpoint: what is sent, when a token
//! is renewed (a hand-moved clock), one refresh for concurrent callers, rotation, typed
//! refusals, and no secret in the logs.

use super::*;
use axum::extract::State;
use axum::http::HeaderMap;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
struct Seen {
    content_type: String,
    form: BTreeMap<String, String>,
}

#[derive(Default)]
struct Inner {
    seen: Vec<Seen>,
    issued: u32,
    /// Hand out a new refresh token with each access token (as Microsoft does).
    rotate: bool,
    /// The next answers, instead of a grant.
    refusals: Vec<(u16, serde_json::Value)>,
}

struct Endpoint {
    url: String,
    inner: Arc<Mutex<Inner>>,
    /// Requests wait for a permit before they are answered.
    gate: Arc<tokio::sync::Semaphore>,
    expires_in: u64,
}

impl Endpoint {
    async fn start(expires_in: u64) -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let gate = Arc::new(tokio::sync::Semaphore::new(1000));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let state = (inner.clone(), gate.clone(), expires_in);
        let app = axum::Router::new()
            .route("/token", axum::routing::post(answer))
            .with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            inner,
            gate,
            expires_in,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    fn refuse_next(&self, status: u16, body: serde_json::Value) {
        self.inner.lock().unwrap().refusals.push((status, body));
    }

    fn settings(&self) -> OAuth2Settings {
        OAuth2Settings {
            token_url: self.url.clone(),
            client_id: "client-id-1".into(),
            client_secret: Some(Secret::new("CLIENT-SECRET-xyz")),
            refresh_token: Secret::new("REFRESH-0"),
            scope: Some("https://outlook.office.com/IMAP.AccessAsUser.All offline_access".into()),
            timeout: Duration::from_secs(10),
        }
    }
}

type EndpointState = (Arc<Mutex<Inner>>, Arc<tokio::sync::Semaphore>, u64);

async fn answer(
    State((inner, gate, expires_in)): State<EndpointState>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<BTreeMap<String, String>>,
) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    inner.lock().unwrap().seen.push(Seen { content_type, form });
    let _permit = gate.acquire().await.unwrap();
    let mut inner = inner.lock().unwrap();
    if !inner.refusals.is_empty() {
        let (status, body) = inner.refusals.remove(0);
        return (
            axum::http::StatusCode::from_u16(status).unwrap(),
            axum::Json(body),
        );
    }
    inner.issued += 1;
    let n = inner.issued;
    let mut body = serde_json::json!({
        "access_token": format!("ACCESS-{n}"), "token_type": "Bearer", "expires_in": expires_in,
    });
    if inner.rotate {
        body["refresh_token"] = format!("REFRESH-{n}").into();
    }
    (axum::http::StatusCode::OK, axum::Json(body))
}

/// A clock the test moves by hand.
fn manual_clock() -> (Clock, Arc<Mutex<Instant>>) {
    let now = Arc::new(Mutex::new(Instant::now()));
    let read = now.clone();
    (Arc::new(move || *read.lock().unwrap()), now)
}

fn advance(now: &Mutex<Instant>, by: Duration) {
    let mut t = now.lock().unwrap();
    *t += by;
}

fn counter() -> IntCounterVec {
    unregistered_refresh_counter().unwrap()
}

fn source(endpoint: &Endpoint, refreshes: &IntCounterVec, clock: Clock) -> TokenSource {
    TokenSource::new(
        "CSKH@shop.example.vn",
        endpoint.settings(),
        refreshes.clone(),
    )
    .unwrap()
    .with_clock(clock)
}

/// Everything logged at any level while `f` runs on this thread.
fn logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Sink(buf.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn a_refresh_posts_the_rfc_6749_form_and_the_token_is_cached() {
    let endpoint = Endpoint::start(3600).await;
    let refreshes = counter();
    let (clock, _) = manual_clock();
    let tokens = source(&endpoint, &refreshes, clock);

    let first = tokens.access_token().await.unwrap();
    let second = tokens.access_token().await.unwrap();

    assert_eq!(first.token.expose(), "ACCESS-1");
    assert!(first.fresh);
    assert_eq!(second.token.expose(), "ACCESS-1");
    assert!(!second.fresh, "the second call is served from the cache");
    let seen = endpoint.seen();
    assert_eq!(seen.len(), 1, "one refresh: {seen:?}");
    assert_eq!(seen[0].content_type, "application/x-www-form-urlencoded");
    let expected: BTreeMap<String, String> = [
        ("grant_type", "refresh_token"),
        ("refresh_token", "REFRESH-0"),
        ("client_id", "client-id-1"),
        ("client_secret", "CLIENT-SECRET-xyz"),
        (
            "scope",
            "https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(seen[0].form, expected);
    let ok = refreshes.with_label_values(&["cskh@shop.example.vn", "ok"]);
    assert_eq!(ok.get(), 1);
}

#[tokio::test]
async fn a_public_client_sends_no_secret_and_no_scope_unless_configured() {
    let endpoint = Endpoint::start(3600).await;
    let mut settings = endpoint.settings();
    settings.client_secret = None;
    settings.scope = None;
    let tokens = TokenSource::new("a@example.vn", settings, counter()).unwrap();
    tokens.access_token().await.unwrap();
    let form = &endpoint.seen()[0].form;
    let keys: Vec<&str> = form.keys().map(String::as_str).collect();
    assert_eq!(keys, ["client_id", "grant_type", "refresh_token"]);
}

#[tokio::test]
async fn a_token_is_renewed_shortly_before_it_expires_never_after() {
    for (lifetime, renew_after) in [(3600, 3540), (100, 90)] {
        let endpoint = Endpoint::start(lifetime).await;
        let (clock, now) = manual_clock();
        let tokens = source(&endpoint, &counter(), clock);
        tokens.access_token().await.unwrap();

        advance(&now, Duration::from_secs(renew_after - 1));
        let cached = tokens.access_token().await.unwrap();
        assert_eq!(cached.token.expose(), "ACCESS-1", "lifetime {lifetime}");
        assert_eq!(endpoint.seen().len(), 1);

        advance(&now, Duration::from_secs(1));
        let renewed = tokens.access_token().await.unwrap();
        assert_eq!(renewed.token.expose(), "ACCESS-2", "lifetime {lifetime}");
        assert!(renewed.fresh);
        assert_eq!(endpoint.seen().len(), 2);
        assert!(endpoint.expires_in == lifetime);
    }
}

#[tokio::test]
async fn concurrent_callers_share_one_refresh() {
    let endpoint = Endpoint::start(3600).await;
    let held = endpoint
        .gate
        .clone()
        .acquire_many_owned(1000)
        .await
        .unwrap();
    let tokens =
        Arc::new(TokenSource::new("a@example.vn", endpoint.settings(), counter()).unwrap());
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let tokens = tokens.clone();
            tokio::spawn(async move { tokens.access_token().await.map(|t| t.token) })
        })
        .collect();
    // The first refresh has reached the endpoint and waits there; the others wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while endpoint.seen().is_empty() {
        assert!(Instant::now() < deadline, "no refresh arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(held);
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap().expose(), "ACCESS-1");
    }
    assert_eq!(endpoint.seen().len(), 1, "one refresh for eight callers");
}

#[tokio::test]
async fn a_rotated_refresh_token_is_used_next_and_no_secret_is_ever_logged() {
    let (logged, _guard) = logs();
    let endpoint = Endpoint::start(3600).await;
    endpoint.inner.lock().unwrap().rotate = true;
    let (clock, now) = manual_clock();
    let tokens = source(&endpoint, &counter(), clock);

    tokens.access_token().await.unwrap();
    advance(&now, Duration::from_secs(3600));
    tokens.access_token().await.unwrap();
    advance(&now, Duration::from_secs(3600));
    tokens.access_token().await.unwrap();

    let presented: Vec<String> = endpoint
        .seen()
        .iter()
        .map(|s| s.form["refresh_token"].clone())
        .collect();
    assert_eq!(presented, ["REFRESH-0", "REFRESH-1", "REFRESH-2"]);
    let logs = String::from_utf8(logged.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("rotated"), "{logs}");
    for secret in ["REFRESH-", "ACCESS-", "CLIENT-SECRET"] {
        assert!(!logs.contains(secret), "{secret} logged:\n{logs}");
    }
}

#[tokio::test]
async fn refusals_are_typed_and_invalid_grant_asks_to_reauthorize() {
    let endpoint = Endpoint::start(3600).await;
    let refreshes = counter();
    let tokens = TokenSource::new("a@example.vn", endpoint.settings(), refreshes.clone()).unwrap();
    let count = |result: &str| refreshes.with_label_values(&["a@example.vn", result]).get();

    endpoint.refuse_next(
        400,
        serde_json::json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}),
    );
    let e = tokens.access_token().await.unwrap_err();
    assert!(matches!(e, EmailError::OAuth2Reauthorize { .. }), "{e}");
    assert!(e.needs_operator());
    let message = e.to_string();
    assert!(message.contains("re-authorize"), "{message}");
    assert!(
        message.contains("Token has been expired or revoked."),
        "{message}"
    );
    assert_eq!(count("invalid_grant"), 1);

    endpoint.refuse_next(401, serde_json::json!({"error": "invalid_client"}));
    let e = tokens.access_token().await.unwrap_err();
    assert!(matches!(e, EmailError::OAuth2Refused { .. }), "{e}");
    assert_eq!(count("refused"), 1);

    endpoint.refuse_next(503, serde_json::json!({"error": "temporarily_unavailable"}));
    let e = tokens.access_token().await.unwrap_err();
    assert!(matches!(e, EmailError::OAuth2Unavailable { .. }), "{e}");
    assert!(!e.needs_operator(), "may pass: retried");
    assert_eq!(count("unavailable"), 1);

    // Nothing cached from the failures: the next refresh works.
    assert_eq!(
        tokens.access_token().await.unwrap().token.expose(),
        "ACCESS-1"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_transient_error() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", closed.local_addr().unwrap());
    drop(closed);
    let settings = OAuth2Settings {
        token_url: url,
        client_id: "id".into(),
        client_secret: None,
        refresh_token: Secret::new("REFRESH-0"),
        scope: None,
        timeout: Duration::from_secs(5),
    };
    let e = TokenSource::new("a@example.vn", settings, counter())
        .unwrap()
        .access_token()
        .await
        .unwrap_err();
    assert!(matches!(e, EmailError::OAuth2Unavailable { .. }), "{e}");
    assert_eq!(e.label(), "oauth2_unavailable");
}

#[tokio::test]
async fn invalidating_forgets_only_the_token_named() {
    let endpoint = Endpoint::start(3600).await;
    let (clock, _) = manual_clock();
    let tokens = source(&endpoint, &counter(), clock);
    let first = tokens.access_token().await.unwrap();

    tokens.invalidate(&Secret::new("ACCESS-0")).await;
    assert_eq!(
        tokens.access_token().await.unwrap().token.expose(),
        "ACCESS-1"
    );

    tokens.invalidate(&first.token).await;
    let next = tokens.access_token().await.unwrap();
    assert_eq!(next.token.expose(), "ACCESS-2");
    assert!(next.fresh);
}

#[test]
fn the_imap_authenticator_answers_the_sasl_string_once_then_empty() {
    use async_imap::Authenticator;
    let mut auth = XOAuth2::new("a@example.vn", &Secret::new("tok"));
    assert_eq!(
        auth.process(b""),
        "user=a@example.vn\x01auth=Bearer tok\x01\x01"
    );
    // The server's error challenge (a JSON status) is answered empty, as XOAUTH2 requires.
    assert_eq!(auth.process(br#"{"status":"401"}"#), "");
}
