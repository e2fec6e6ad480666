//! A live chat visitor for end-to-end tests: the widget's protocol over a real WebSocket
//! (tokio-tungstenite), keeping what the widget would keep: the transcript it was shown, the
//! cursor to resume from, and the messages not yet acknowledged (resent with the same client
//! id after a reconnect, as the widget does).

use crate::{post_json, Daemon};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// The page origin the demo widget allows (`http://127.0.0.1:*`).
pub const ORIGIN: &str = "http://127.0.0.1:5173";
/// The demo tenant's agent API token.
pub const AGENT: &str = "demo-agent-token";

/// A client WebSocket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A visitor session of the demo widget, as the widget gets it.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: String,
    pub visitor: String,
    pub conversation: String,
}

/// Asks `daemon` for a new visitor session of the demo widget.
pub async fn new_session(daemon: &Daemon) -> Session {
    let r = reqwest::Client::new()
        .post(daemon.url("/v1/livechat/demo/web/session"))
        .header("origin", ORIGIN)
        .json(&json!({"language": "vi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    Session {
        token: v["token"].as_str().unwrap().into(),
        visitor: v["visitor_id"].as_str().unwrap().into(),
        conversation: v["conversation_id"].as_str().unwrap().into(),
    }
}

/// A socket request for `url` as the widget makes it: the token as the subprotocol
/// `omni.token.<token>` after `omni.v1` (never in the URL), and the page's `origin`.
pub fn socket_request(
    url: &str,
    token: Option<&str>,
    origin: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().unwrap();
    if let Some(t) = token {
        let protocols = format!("omni.v1, omni.token.{t}");
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(&protocols).unwrap(),
        );
    }
    if let Some(o) = origin {
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(o).unwrap());
    }
    request
}

/// Connects with `request`; `Err(status)` when the upgrade is refused, `Err(0)` when the
/// daemon cannot be reached. A daemon that answered with any subprotocol but `omni.v1` (the
/// token echoed back) fails the test.
pub async fn connect_request(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Result<Ws, u16> {
    let offered = request.headers().contains_key("sec-websocket-protocol");
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, response)) => {
            let chosen = response
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_owned());
            if offered {
                assert_eq!(
                    chosen.as_deref(),
                    Some("omni.v1"),
                    "the server's subprotocol"
                );
            }
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(_) => Err(0),
    }
}

/// Opens the visitor socket on `daemon` (resuming after `after`) with the token as the
/// widget sends it; `Err(status)` when the upgrade is refused, `Err(0)` when the daemon
/// cannot be reached.
pub async fn open(daemon: &Daemon, token: &str, after: Option<&str>) -> Result<Ws, u16> {
    let base = daemon
        .url("/v1/livechat/demo/web/ws")
        .replace("http://", "ws://");
    let url = match after {
        Some(a) => format!("{base}?after={a}"),
        None => base,
    };
    connect_request(socket_request(&url, Some(token), Some(ORIGIN))).await
}

/// The next JSON frame within `wait` (control frames skipped); a closed socket reads as
/// `{"type":"closed","code":…}`; `None` when nothing came.
pub async fn next_frame(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = Instant::now() + wait;
    loop {
        let frame = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(None) => return Some(json!({"type": "closed"})),
            Ok(Some(f)) => f,
        };
        match frame {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Message::Close(c)) => {
                return Some(json!({"type": "closed", "code": c.map(|c| u16::from(c.code))}))
            }
            Ok(_) => continue,
            Err(_) => return Some(json!({"type": "closed"})),
        }
    }
}

/// POSTs an agent reply to the visitor's conversation through `daemon`'s agent API.
pub async fn agent_reply(daemon_url: &str, s: &Session, text: &str) {
    let (status, body) = post_json(
        &format!("{daemon_url}/v1/tenants/demo/replies"),
        AGENT,
        &json!({
            "conversation_id": s.conversation,
            "channel": {"kind": "livechat", "account": "web"},
            "recipient": s.visitor,
            "agent_id": "agent-lan",
            "text": text,
        }),
    )
    .await;
    assert!(status == 202 || status == 200, "{status} {body}");
}

/// POSTs an agent typing indicator through `daemon`'s agent API.
pub async fn agent_typing(daemon: &Daemon, s: &Session, on: bool) {
    let (status, body) = post_json(
        &daemon.url("/v1/tenants/demo/typing"),
        AGENT,
        &json!({
            "conversation_id": s.conversation,
            "channel": {"kind": "livechat", "account": "web"},
            "recipient": s.visitor,
            "on": on,
        }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
}

/// A widget: one socket at a time, its transcript and cursor across reconnects.
pub struct Visitor {
    pub session: Session,
    ws: Option<Ws>,
    /// The last cursor shown (what a reconnect resumes after).
    pub cursor: Option<String>,
    /// Every `message` frame shown, in order, over every socket.
    pub transcript: Vec<Value>,
    /// Agent typing frames shown (`on` values).
    pub typing: Vec<bool>,
    /// Client ids acknowledged.
    pub acked: Vec<String>,
    /// Messages sent and not yet acknowledged: (client id, text).
    pub unacked: Vec<(String, String)>,
    /// `unavailable` answers (Kafka did not take a message in time) seen so far.
    pub unavailable: usize,
    /// When the messages refused as `unavailable` are resent, as the widget does.
    resend_at: Option<Instant>,
}

/// How long a visitor waits before resending a message refused as `unavailable` (the widget
/// starts at this and backs off).
const RESEND_AFTER: Duration = Duration::from_secs(1);

impl Visitor {
    /// A visitor with `session`, not connected yet.
    pub fn new(session: Session) -> Self {
        Self {
            session,
            ws: None,
            cursor: None,
            transcript: Vec::new(),
            typing: Vec::new(),
            acked: Vec::new(),
            unacked: Vec::new(),
            unavailable: 0,
            resend_at: None,
        }
    }

    /// Connects to `daemon` resuming after the last cursor, waits for the `status` frame,
    /// and resends what was not acknowledged (same client ids).
    pub async fn connect(&mut self, daemon: &Daemon) {
        let mut ws = open(daemon, &self.session.token, self.cursor.as_deref())
            .await
            .unwrap_or_else(|status| panic!("socket refused: {status}"));
        let status = next_frame(&mut ws, Duration::from_secs(15))
            .await
            .expect("a status frame");
        assert_eq!(status["type"], "status", "{status}");
        assert_eq!(
            status["conversation_id"],
            self.session.conversation.as_str()
        );
        self.ws = Some(ws);
        for (client_id, text) in self.unacked.clone() {
            self.write(&client_id, &text).await;
        }
    }

    /// True while a socket is open.
    pub fn connected(&self) -> bool {
        self.ws.is_some()
    }

    async fn write(&mut self, client_id: &str, text: &str) {
        let frame = json!({"type": "message", "client_id": client_id, "text": text});
        if let Some(ws) = self.ws.as_mut() {
            // A failed write shows up as a closed socket on the next read.
            let _ = ws.send(Message::text(frame.to_string())).await;
        }
    }

    /// Sends a message (kept until acknowledged).
    pub async fn send(&mut self, client_id: &str, text: &str) {
        self.unacked.push((client_id.to_owned(), text.to_owned()));
        self.write(client_id, text).await;
    }

    /// Reads frames until `done` holds (`true`), the socket closes or `wait` passes (`false`).
    /// Messages refused as `unavailable` are resent meanwhile, as the widget does.
    pub async fn pump_until(&mut self, wait: Duration, done: impl Fn(&Self) -> bool) -> bool {
        let deadline = Instant::now() + wait;
        while !done(self) {
            if self.resend_at.is_some_and(|at| at <= Instant::now()) {
                self.resend_at = None;
                for (client_id, text) in self.unacked.clone() {
                    self.write(&client_id, &text).await;
                }
            }
            let Some(ws) = self.ws.as_mut() else {
                return false;
            };
            let until = self.resend_at.map_or(deadline, |at| at.min(deadline));
            let left = until.saturating_duration_since(Instant::now());
            match next_frame(ws, left).await {
                Some(frame) => self.take(frame),
                None if Instant::now() >= deadline => return false,
                None => {}
            }
        }
        true
    }

    /// Reads until the socket is closed (the daemon went away); returns what closed it.
    pub async fn until_closed(&mut self, wait: Duration) -> Option<Value> {
        let deadline = Instant::now() + wait;
        while let Some(ws) = self.ws.as_mut() {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = next_frame(ws, left).await?;
            if frame["type"] == "closed" {
                self.ws = None;
                return Some(frame);
            }
            self.take(frame);
        }
        None
    }

    fn take(&mut self, frame: Value) {
        match frame["type"].as_str() {
            Some("message") => {
                self.cursor = frame["cursor"].as_str().map(str::to_owned);
                self.transcript.push(frame);
            }
            Some("ack") => {
                let id = frame["client_id"].as_str().unwrap_or_default().to_owned();
                self.unacked.retain(|(c, _)| *c != id);
                self.acked.push(id);
            }
            Some("typing") => self.typing.push(frame["on"] == true),
            Some("closed") => self.ws = None,
            // "not stored; resend with the same client_id": Kafka did not take it in time.
            Some("error")
                if frame["code"] == "unavailable"
                    && self
                        .unacked
                        .iter()
                        .any(|(c, _)| frame["client_id"] == c.as_str()) =>
            {
                self.unavailable += 1;
                self.resend_at.get_or_insert(Instant::now() + RESEND_AFTER);
            }
            Some("error") => panic!("error frame: {frame}"),
            _ => {}
        }
    }

    /// Texts of the transcript's messages from `from` (`visitor`, `agent`), in order.
    pub fn texts(&self, from: &str) -> Vec<String> {
        self.transcript
            .iter()
            .filter(|m| m["from"] == from)
            .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}
