//! The safe fetcher against local servers on `127.0.0.1:0`: each SSRF case refused with its
//! reason, and the allowed paths (redirects, credentials, limits) working.

use super::*;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

/// One request a test server saw.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    path: String,
    authorization: Option<String>,
}

/// A local attachment host that records every request.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl TestServer {
    pub(crate) async fn start() -> Self {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(hits.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, hits }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

/// Paths: `/ok`, `/redirect?to=<url>`, `/loop/<n>`, `/rel`, `/status/<code>`, `/big-len`,
/// `/big-stream`, `/slow`.
async fn handle(State(hits): State<Arc<Mutex<Vec<Hit>>>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    hits.lock().unwrap().push(Hit {
        path: path.clone(),
        authorization: req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned()),
    });
    let redirect =
        |to: &str| (StatusCode::FOUND, [(header::LOCATION, to.to_owned())]).into_response();
    match path.as_str() {
        "/ok" => ([(header::CONTENT_TYPE, "image/png")], "PNGDATA").into_response(),
        "/redirect" => {
            let query = req.uri().query().unwrap_or_default();
            redirect(query.strip_prefix("to=").unwrap())
        }
        "/rel" => redirect("sub/../ok"),
        "/big-len" => vec![b'x'; 1000].into_response(),
        "/big-stream" => Body::from_stream(stream::iter(
            (0..10).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 100])),
        ))
        .into_response(),
        "/slow" => {
            let first = stream::iter([Ok::<_, std::io::Error>(b"x".to_vec())]);
            Body::from_stream(futures_util::StreamExt::chain(first, stream::pending()))
                .into_response()
        }
        p if p.starts_with("/loop/") => {
            let n: u32 = p["/loop/".len()..].parse().unwrap();
            redirect(&format!("/loop/{}", n + 1))
        }
        p if p.starts_with("/status/") => {
            StatusCode::from_u16(p["/status/".len()..].parse().unwrap())
                .unwrap()
                .into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

pub(crate) fn local_policy() -> FetchPolicy {
    FetchPolicy {
        allowed_networks: AllowedNetworks::new(vec!["127.0.0.1/32".parse().unwrap()]),
        ..FetchPolicy::default()
    }
}

fn fetcher(policy: FetchPolicy) -> SafeFetcher {
    SafeFetcher::new(policy).unwrap()
}

const LIMIT: u64 = 1 << 20;

#[tokio::test]
async fn default_policy_refuses_loopback_by_literal_and_by_name_without_a_request() {
    let server = TestServer::start().await;
    let fetcher = fetcher(FetchPolicy::default());
    for url in [
        server.url("/ok"),
        format!("http://localhost:{}/ok", server.addr.port()),
    ] {
        let err = fetcher.fetch(&url, LIMIT, None).await.unwrap_err();
        match &err {
            FetchError::Forbidden { addr, class, .. } => {
                assert!(addr.is_loopback(), "{url}: {err}");
                assert_eq!(*class, "loopback");
            }
            other => panic!("{url}: expected Forbidden, got {other:?}"),
        }
        assert_eq!(err.reason(), "forbidden");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("loopback"), "{err}");
    }
    assert!(server.hits().is_empty(), "{:?}", server.hits());
}

#[tokio::test]
async fn special_address_literals_fail_fast() {
    let fetcher = fetcher(FetchPolicy::default());
    for (url, class) in [
        ("http://10.0.0.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:a9fe:a9fe]/", "link-local"),
        ("http://[fd00::1]/", "private"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://2130706433/", "loopback"),
        ("https://192.168.1.1:8443/x", "private"),
        ("http://100.100.100.200/", "shared (cgnat)"),
    ] {
        let started = Instant::now();
        let err = fetcher.fetch(url, LIMIT, None).await.unwrap_err();
        assert!(
            matches!(&err, FetchError::Forbidden { class: c, .. } if *c == class),
            "{url}: {err:?}"
        );
        // Refused before any connection: far below the 30 s policy timeout.
        assert!(started.elapsed() < Duration::from_secs(2), "{url}");
    }
}

#[tokio::test]
async fn only_http_and_https_without_credentials_are_fetched() {
    let fetcher = fetcher(local_policy());
    for url in [
        "ftp://example.com/a.png",
        "file:///etc/passwd",
        "gopher://x/",
    ] {
        let err = fetcher.fetch(url, LIMIT, None).await.unwrap_err();
        assert!(matches!(err, FetchError::Scheme { .. }), "{url}: {err:?}");
    }
    for url in ["not a url", "http://user:pw@127.0.0.1/ok", "http://"] {
        let err = fetcher.fetch(url, LIMIT, None).await.unwrap_err();
        assert!(matches!(err, FetchError::BadUrl(_)), "{url}: {err:?}");
    }
}

#[tokio::test]
async fn an_allowed_server_is_fetched_with_its_content_type() {
    let server = TestServer::start().await;
    let fetched = fetcher(local_policy())
        .fetch(&server.url("/ok"), LIMIT, None)
        .await
        .unwrap();
    assert_eq!(fetched.bytes, b"PNGDATA");
    assert_eq!(fetched.content_type.as_deref(), Some("image/png"));
    assert_eq!(fetched.final_url, server.url("/ok"));
}

#[tokio::test]
async fn a_host_name_is_fetched_when_its_address_is_allowed() {
    let server = TestServer::start().await;
    let url = format!("http://localhost:{}/ok", server.addr.port());
    let fetched = fetcher(local_policy())
        .fetch(&url, LIMIT, None)
        .await
        .unwrap();
    assert_eq!(fetched.bytes, b"PNGDATA");
}

#[tokio::test]
async fn redirects_to_special_addresses_are_refused() {
    let server = TestServer::start().await;
    let fetcher = fetcher(local_policy());
    for (target, class) in [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.1.2.3/", "private"),
        ("http://127.0.0.2/", "loopback"),
    ] {
        let url = server.url(&format!("/redirect?to={target}"));
        let err = fetcher.fetch(&url, LIMIT, None).await.unwrap_err();
        assert!(
            matches!(&err, FetchError::Forbidden { class: c, .. } if *c == class),
            "{target}: {err:?}"
        );
    }
    let err = fetcher
        .fetch(&server.url("/redirect?to=file:///etc/passwd"), LIMIT, None)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Scheme { .. }), "{err:?}");
}

#[tokio::test]
async fn a_redirect_chain_longer_than_the_maximum_is_refused() {
    let server = TestServer::start().await;
    let err = fetcher(local_policy())
        .fetch(&server.url("/loop/0"), LIMIT, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::TooManyRedirects { max: 3 }),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    // The first request and three followed redirects, nothing more.
    assert_eq!(server.hits().len(), 4, "{:?}", server.hits());
}

#[tokio::test]
async fn a_relative_redirect_resolves_against_the_current_url() {
    let server = TestServer::start().await;
    let fetched = fetcher(local_policy())
        .fetch(&server.url("/rel"), LIMIT, None)
        .await
        .unwrap();
    assert_eq!(fetched.bytes, b"PNGDATA");
    assert_eq!(fetched.final_url, server.url("/ok"));
}

#[tokio::test]
async fn credentials_go_to_the_origin_only() {
    let origin = TestServer::start().await;
    let cdn = TestServer::start().await;
    let fetcher = fetcher(local_policy());
    let auth = FetchAuth::Basic {
        user: "AC123".into(),
        password: Secret::new("token"),
    };
    // Same origin: the redirect keeps the credentials.
    fetcher
        .fetch(&origin.url("/redirect?to=/ok"), LIMIT, Some(&auth))
        .await
        .unwrap();
    // Another origin (another port): the redirect drops them.
    let fetched = fetcher
        .fetch(
            &origin.url(&format!("/redirect?to={}", cdn.url("/ok"))),
            LIMIT,
            Some(&auth),
        )
        .await
        .unwrap();
    assert_eq!(fetched.final_url, cdn.url("/ok"));
    let basic = Some("Basic QUMxMjM6dG9rZW4=".to_owned());
    let origin_hits = origin.hits();
    assert_eq!(origin_hits.len(), 3);
    assert!(
        origin_hits.iter().all(|h| h.authorization == basic),
        "{origin_hits:?}"
    );
    let cdn_hits = cdn.hits();
    assert_eq!(cdn_hits.len(), 1);
    assert_eq!(cdn_hits[0].path, "/ok");
    assert_eq!(cdn_hits[0].authorization, None);

    fetcher
        .fetch(
            &cdn.url("/ok"),
            LIMIT,
            Some(&FetchAuth::Bearer(Secret::new("t0k"))),
        )
        .await
        .unwrap();
    assert_eq!(cdn.hits()[1].authorization.as_deref(), Some("Bearer t0k"));
}

#[tokio::test]
async fn oversized_bodies_are_refused_by_length_and_while_streaming() {
    let server = TestServer::start().await;
    let fetcher = fetcher(local_policy());
    for path in ["/big-len", "/big-stream"] {
        let err = fetcher
            .fetch(&server.url(path), 999, None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FetchError::TooLarge { limit: 999 }),
            "{path}: {err:?}"
        );
        assert!(!err.is_retryable());
        let fetched = fetcher.fetch(&server.url(path), 1000, None).await.unwrap();
        assert_eq!(fetched.bytes.len(), 1000, "{path}");
    }
}

#[tokio::test]
async fn a_slow_body_is_cut_off_at_the_policy_timeout() {
    let server = TestServer::start().await;
    let fetcher = fetcher(FetchPolicy {
        timeout: Duration::from_millis(300),
        ..local_policy()
    });
    let started = Instant::now();
    let err = fetcher
        .fetch(&server.url("/slow"), LIMIT, None)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Timeout { ms: 300 }), "{err:?}");
    assert!(err.is_retryable());
    // A bound, not a speed assertion: the fetch must not wait for the body to end.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn error_statuses_are_reported_and_classified() {
    let server = TestServer::start().await;
    let fetcher = fetcher(local_policy());
    for (code, retryable) in [(404, false), (403, false), (429, true), (503, true)] {
        let err = fetcher
            .fetch(&server.url(&format!("/status/{code}")), LIMIT, None)
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Status(c) if c == code), "{err:?}");
        assert_eq!(err.is_retryable(), retryable, "{code}");
    }
}

#[tokio::test]
async fn a_closed_port_is_a_retryable_transport_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = fetcher(local_policy())
        .fetch(&format!("http://127.0.0.1:{port}/x"), LIMIT, None)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Transport(_)), "{err:?}");
    assert!(err.is_retryable());
}
