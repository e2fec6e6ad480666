//! The WebSocket protocol: JSON text frames, one object each, discriminated by `type`.
//!
//! Client → server: `message {client_id, text}`, `typing {on}`, `read {cursor}`,
//! `resume {after}`, `ping`, `leave`. Server → client: `status`, `message`, `ack`, `typing`,
//! `error`, `pong`, `queued`, `assigned`, `ended`, `left`. A frame the server cannot take is
//! answered with an `error` frame and the connection stays open: a buggy widget never brings
//! the socket (or the server) down.
//!
//! Every frame from the widget, whatever its type (garbage, binary and WebSocket pings
//! included), costs a token of the socket's frame budget (`frame_rate_per_second`,
//! `frame_burst`): a frame over it is dropped and answered `rate_limited` (with the
//! `client_id` of a message), and a socket that keeps sending another burst's worth past it
//! is closed with 1008 (`flooding`). A socket whose token is revoked gets `token_revoked`
//! and is closed with 1008.
//!
//! # Waiting for an agent, and leaving
//! - `{"type":"queued","estimated_wait_secs":N}`: the router queued the conversation
//!   (`omni.routing.queued`) and expects an agent in about N seconds (0: an agent is free
//!   now). `estimated_wait_secs` is absent when the router cannot tell (too little history,
//!   queue closed): show nothing then. Sent when the event is read, and again after a
//!   (re)connect while the conversation still waits (with an estimate, the time since taken
//!   off it).
//! - `{"type":"assigned"}`: an agent took the conversation (`omni.routing.assigned`); the wait
//!   is over. Which agent stays internal.
//! - `{"type":"ended","reason":"customer_left"|"patience"|"expired"|"resolved"}`: the router
//!   ended this contact (abandoned, expired, resolved); a new message starts a new one.
//! - `{"type":"leave"}` (widget →): the visitor ended the chat. The server publishes the
//!   router command `customer_left` on `omni.commands.v1` and answers `{"type":"left"}` once
//!   Kafka acknowledged it, or an `error` frame `leave_failed` (nothing published; the widget
//!   may try again). A leave uses a token of the conversation's message rate limit
//!   (`rate_limited` when none is left). A conversation no agent took yet then ends as
//!   abandoned (`omni.routing.abandoned`, reason `customer_left`, then an `ended` frame).

use serde::Deserialize;
use std::fmt;
use std::str::FromStr;

/// A position in a conversation, the same on every daemon instance: the highest offset seen
/// of the conversation's visitor messages (in its `omni.inbound.v1` partition) and of its agent
/// replies (in its `omni.outbound.v1` partition). `-1` means none yet. Written `"<in>.<out>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// Highest inbound offset covered.
    pub inbound: i64,
    /// Highest outbound offset covered.
    pub outbound: i64,
}

impl Cursor {
    /// Before the first message.
    pub const START: Cursor = Cursor {
        inbound: -1,
        outbound: -1,
    };

    /// True when `position` is covered by this cursor (already seen).
    pub fn covers(&self, position: Position) -> bool {
        match position.stream {
            Stream::Inbound => position.offset <= self.inbound,
            Stream::Outbound => position.offset <= self.outbound,
        }
    }

    /// Extends the cursor over `position`.
    pub fn advance(&mut self, position: Position) {
        match position.stream {
            Stream::Inbound => self.inbound = self.inbound.max(position.offset),
            Stream::Outbound => self.outbound = self.outbound.max(position.offset),
        }
    }
}

impl Default for Cursor {
    fn default() -> Self {
        Cursor::START
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.inbound, self.outbound)
    }
}

impl FromStr for Cursor {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s.split_once('.').ok_or(())?;
        let inbound: i64 = a.parse().map_err(|_| ())?;
        let outbound: i64 = b.parse().map_err(|_| ())?;
        if inbound < -1 || outbound < -1 {
            return Err(());
        }
        Ok(Cursor { inbound, outbound })
    }
}

/// Which topic a conversation message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// A visitor message on the inbound topic.
    Inbound,
    /// An agent reply on the outbound topic.
    Outbound,
}

/// Where one message lives on Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// The topic.
    pub stream: Stream,
    /// Its offset in the conversation's partition of that topic.
    pub offset: i64,
}

/// A frame from the widget.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// A visitor message. `client_id` is chosen by the widget and reused when it resends, so
    /// a resend is the same event.
    Message {
        /// The widget's id for the message (1–64 of `A-Za-z0-9-_.:`).
        client_id: String,
        /// The text.
        text: String,
    },
    /// The visitor started or stopped typing.
    Typing {
        /// On or off.
        on: bool,
    },
    /// The visitor has seen everything up to `cursor`.
    Read {
        /// A cursor from a `message` frame.
        cursor: String,
    },
    /// Send every message after `after` (a cursor), then keep streaming.
    Resume {
        /// The last cursor the widget saw (`"-1.-1"` for everything kept).
        after: String,
    },
    /// Keep-alive from the widget (answered with `pong`; resets the idle timer).
    Ping,
    /// The visitor ended the chat (answered with `left` once the router was told). A struct
    /// variant without fields, not a unit one: serde refuses unknown fields only in those.
    Leave {},
}

impl ClientFrame {
    /// The frame's type, a bounded label (`message`, `typing`, `read`, `resume`, `ping`,
    /// `leave`).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Message { .. } => "message",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Read { .. } => "read",
            ClientFrame::Resume { .. } => "resume",
            ClientFrame::Ping => "ping",
            ClientFrame::Leave {} => "leave",
        }
    }
}

/// Why a frame was refused: a bounded `code` and a message for the developer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// `bad_frame`, `bad_client_id`, `empty_message`, `message_too_long`, `bad_cursor`,
    /// `rate_limited`, `frame_too_large`, `binary_not_supported`, `unavailable`,
    /// `leave_failed`, `lagging`, `token_revoked`.
    pub code: &'static str,
    /// What was wrong.
    pub message: String,
}

impl FrameError {
    /// A refusal.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Parses and validates one text frame. Never panics on any input.
pub fn parse(text: &str, max_text_chars: usize) -> Result<ClientFrame, FrameError> {
    let frame: ClientFrame = serde_json::from_str(text).map_err(|e| {
        FrameError::new(
            "bad_frame",
            format!("expected a JSON object with a known \"type\": {e}"),
        )
    })?;
    match &frame {
        ClientFrame::Message { client_id, text } => {
            let id_ok = !client_id.is_empty()
                && client_id.len() <= 64
                && client_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
            if !id_ok {
                return Err(FrameError::new(
                    "bad_client_id",
                    "client_id: 1-64 chars of A-Za-z0-9-_.:",
                ));
            }
            if text.trim().is_empty() {
                return Err(FrameError::new("empty_message", "text is empty"));
            }
            if text.chars().count() > max_text_chars {
                return Err(FrameError::new(
                    "message_too_long",
                    format!("text longer than {max_text_chars} characters"),
                ));
            }
        }
        ClientFrame::Read { cursor } => {
            cursor
                .parse::<Cursor>()
                .map_err(|()| FrameError::new("bad_cursor", "cursor is \"<in>.<out>\""))?;
        }
        ClientFrame::Resume { after } => {
            after
                .parse::<Cursor>()
                .map_err(|()| FrameError::new("bad_cursor", "after is \"<in>.<out>\""))?;
        }
        ClientFrame::Typing { .. } | ClientFrame::Ping | ClientFrame::Leave {} => {}
    }
    Ok(frame)
}

/// An `error` frame.
pub fn error_frame(err: &FrameError, client_id: Option<&str>) -> String {
    let mut v = serde_json::json!({"type": "error", "code": err.code, "message": err.message});
    if let Some(id) = client_id {
        v["client_id"] = serde_json::Value::String(id.to_owned());
    }
    v.to_string()
}

/// A `queued` frame: the conversation waits for an agent, about `estimated_wait_secs` (the
/// field left out when unknown, so the widget shows nothing rather than a guess).
pub fn queued_frame(estimated_wait_secs: Option<u64>) -> String {
    match estimated_wait_secs {
        Some(secs) => format!(r#"{{"type":"queued","estimated_wait_secs":{secs}}}"#),
        None => r#"{"type":"queued"}"#.to_owned(),
    }
}

/// The `assigned` frame: an agent took the conversation, so the widget stops showing a wait.
pub const ASSIGNED_FRAME: &str = r#"{"type":"assigned"}"#;

/// The `left` frame: the router was told the visitor left (Kafka acknowledged the command).
pub const LEFT_FRAME: &str = r#"{"type":"left"}"#;

/// An `ended` frame: the router ended the contact, for `reason` (a bounded code).
pub fn ended_frame(reason: &str) -> String {
    format!(
        r#"{{"type":"ended","reason":{}}}"#,
        serde_json::Value::from(reason)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_and_garbage_becomes_an_error_code() {
        assert_eq!(
            parse(
                r#"{"type":"message","client_id":"c-1","text":"Xin chào"}"#,
                100
            ),
            Ok(ClientFrame::Message {
                client_id: "c-1".into(),
                text: "Xin chào".into()
            })
        );
        assert_eq!(
            parse(r#"{"type":"typing","on":true}"#, 100),
            Ok(ClientFrame::Typing { on: true })
        );
        assert_eq!(parse(r#"{"type":"ping"}"#, 100), Ok(ClientFrame::Ping));
        assert_eq!(parse(r#"{"type":"leave"}"#, 100), Ok(ClientFrame::Leave {}));
        for (input, code) in [
            ("", "bad_frame"),
            ("not json", "bad_frame"),
            ("[1,2]", "bad_frame"),
            (r#"{"type":"nope"}"#, "bad_frame"),
            (r#"{"type":"message","text":"x"}"#, "bad_frame"),
            (
                r#"{"type":"message","client_id":"","text":"x"}"#,
                "bad_client_id",
            ),
            (
                r#"{"type":"message","client_id":"a b","text":"x"}"#,
                "bad_client_id",
            ),
            (
                r#"{"type":"message","client_id":"a","text":"  "}"#,
                "empty_message",
            ),
            (
                r#"{"type":"message","client_id":"a","text":"ààààà"}"#,
                "message_too_long",
            ),
            (r#"{"type":"resume","after":"x"}"#, "bad_cursor"),
            // A leave carries nothing: extra fields are refused like everywhere else.
            (r#"{"type":"leave","conversation":"x"}"#, "bad_frame"),
            (r#"{"type":"Leave"}"#, "bad_frame"),
            (r#"{"type":"read","cursor":"1.-7"}"#, "bad_cursor"),
        ] {
            assert_eq!(parse(input, 4).unwrap_err().code, code, "{input:?}");
        }
    }

    #[test]
    fn cursors_round_trip_and_cover_per_stream() {
        let c: Cursor = "5.-1".parse().unwrap();
        assert_eq!(c.to_string(), "5.-1");
        assert!(c.covers(Position {
            stream: Stream::Inbound,
            offset: 5
        }));
        assert!(!c.covers(Position {
            stream: Stream::Outbound,
            offset: 0
        }));
        let mut d = c;
        d.advance(Position {
            stream: Stream::Inbound,
            offset: 3,
        });
        assert_eq!(d, c, "advancing never goes back");
    }
}
