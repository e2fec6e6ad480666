//! A local HTTP server standing in for a provider's API (Graph, Zalo, Twilio…): it records
//! every request exactly as received and answers from a script, so a test can assert the
//! exact path, headers and body we send and make the provider succeed, fail or hang on cue.

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The raw query string (without `?`).
    pub query: String,
    /// Header names lowercased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// What the hook for this path returned when the request arrived.
    pub note: Option<String>,
    /// When it arrived.
    pub at: Instant,
}

impl Recorded {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The query string's pairs, decoded.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        url_pairs(self.query.as_bytes())
    }

    /// A form-encoded body's pairs, decoded.
    pub fn form(&self) -> Vec<(String, String)> {
        url_pairs(&self.body)
    }
}

fn url_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(bytes);
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

type Hook = Arc<dyn Fn(&Recorded) -> String + Send + Sync>;

#[derive(Default)]
struct Script {
    once: HashMap<String, VecDeque<Answer>>,
    always: HashMap<String, Answer>,
    hooks: HashMap<String, Hook>,
    requests: Vec<Recorded>,
}

/// The stand-in server.
pub struct StandIn {
    pub url: String,
    script: Arc<Mutex<Script>>,
    /// While true, requests are recorded and then held unanswered (a provider that hangs).
    held: tokio::sync::watch::Sender<bool>,
    _server: tokio::task::JoinHandle<()>,
}

impl StandIn {
    /// Starts on a free 127.0.0.1 port. Unscripted paths answer 404.
    pub async fn start() -> Self {
        let script = Arc::new(Mutex::new(Script::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let s = script.clone();
        let (held, watch) = tokio::sync::watch::channel(false);
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (s, mut watch) = (s.clone(), watch.clone());
                async move {
                    let answer = respond(&s, method, uri, headers, body);
                    // Recorded already: a test sees the request arrive while it hangs.
                    let _ = watch.wait_for(|held| !*held).await;
                    answer
                }
            },
        );
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            script,
            held,
            _server: server,
        }
    }

    /// From now on every request is recorded and then left unanswered, as a provider that
    /// hangs does, until [`StandIn::release`].
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Answers the held requests (from their script) and every request from now on.
    pub fn release(&self) {
        self.held.send_replace(false);
    }

    /// Answers the next request to `path` with `status` and a JSON `body` (queued in order).
    pub fn answer(&self, path: &str, status: u16, body: &str) {
        self.script
            .lock()
            .unwrap()
            .once
            .entry(path.to_owned())
            .or_default()
            .push_back(Answer {
                status,
                content_type: "application/json",
                body: body.as_bytes().to_vec(),
            });
    }

    /// Answers every request to `path` (once the queued answers are used up) with this.
    pub fn always(&self, path: &str, status: u16, content_type: &'static str, body: &[u8]) {
        self.script.lock().unwrap().always.insert(
            path.to_owned(),
            Answer {
                status,
                content_type,
                body: body.to_vec(),
            },
        );
    }

    /// Runs `hook` when a request to `path` arrives and keeps what it returns in `note`
    /// (to observe the world at that instant, e.g. a file's content).
    pub fn hook(&self, path: &str, hook: impl Fn(&Recorded) -> String + Send + Sync + 'static) {
        self.script
            .lock()
            .unwrap()
            .hooks
            .insert(path.to_owned(), Arc::new(hook));
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.script.lock().unwrap().requests.clone()
    }

    /// The requests to `path` so far.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until `n` requests to `path` arrived.
    pub async fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.requests_to(path);
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn respond(
    script: &Mutex<Script>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut recorded = Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        note: None,
        at: Instant::now(),
    };
    let hook = script.lock().unwrap().hooks.get(&recorded.path).cloned();
    if let Some(hook) = hook {
        recorded.note = Some(hook(&recorded));
    }
    let mut s = script.lock().unwrap();
    let answer = s
        .once
        .get_mut(&recorded.path)
        .and_then(VecDeque::pop_front)
        .or_else(|| s.always.get(&recorded.path).cloned());
    s.requests.push(recorded);
    match answer {
        Some(a) => (
            StatusCode::from_u16(a.status).unwrap(),
            [("content-type", a.content_type)],
            a.body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no scripted answer").into_response(),
    }
}
