//! Live chat metric families, registered once into the registry the daemon passes in. Labels
//! are bounded: a result or reason code, never a visitor, conversation or IP.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

/// Sessions, sockets, frames and replies of the live chat channel.
#[derive(Clone)]
pub struct LivechatMetrics {
    /// Sockets open on this instance.
    pub connections: IntGauge,
    /// Session requests and socket upgrades, by `kind` (`session`, `socket`) and `result`
    /// (`accepted` or the refusal reason).
    pub attempts: IntCounterVec,
    /// Frames from widgets answered with an error frame, by code.
    pub frames_rejected: IntCounterVec,
    /// Agent replies pushed to a socket on this instance.
    pub replies_pushed: IntCounterVec,
    /// Replicas counted for the per-IP cap (this one and those heard from within the expiry).
    pub presence_replicas: IntGauge,
    /// Sockets open over the whole deployment as this replica counts them for the per-IP cap.
    pub presence_sockets: IntGauge,
    /// Frames dropped because their socket was over its frame budget, by `frame` (a fixed
    /// set: see [`FRAME_KINDS`]).
    pub frames_throttled: IntCounterVec,
    /// Sockets closed by the server for what their visitor did, by `reason` (`flooding`,
    /// `token_revoked`).
    pub policy_closes: IntCounterVec,
    /// Visitor revocations in force on this replica (from every replica).
    pub revocations: IntGauge,
}

/// Every value of the `frame` label of `omni_livechat_frames_throttled_total`: the client
/// frame types, `invalid` (a text frame that is not one), `binary` and `control` (WebSocket
/// ping/pong).
pub const FRAME_KINDS: [&str; 9] = [
    "message", "typing", "read", "resume", "ping", "leave", "invalid", "binary", "control",
];

impl LivechatMetrics {
    /// Creates the families and registers them into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let connections = IntGauge::with_opts(Opts::new(
            "omni_livechat_connections",
            "Live chat WebSockets open on this instance.",
        ))?;
        let attempts = IntCounterVec::new(
            Opts::new(
                "omni_livechat_attempts_total",
                "Live chat session requests and socket upgrades, by kind and result.",
            ),
            &["kind", "result"],
        )?;
        let frames_rejected = IntCounterVec::new(
            Opts::new(
                "omni_livechat_frames_rejected_total",
                "Frames from widgets answered with an error frame, by code.",
            ),
            &["code"],
        )?;
        let replies_pushed = IntCounterVec::new(
            Opts::new(
                "omni_livechat_replies_pushed_total",
                "Agent replies written to a visitor's socket on this instance, by how (live, replay).",
            ),
            &["how"],
        )?;
        let presence_replicas = IntGauge::with_opts(Opts::new(
            "omni_livechat_presence_replicas",
            "Live chat replicas this instance counts for the per-IP socket cap (itself included).",
        ))?;
        let presence_sockets = IntGauge::with_opts(Opts::new(
            "omni_livechat_presence_sockets",
            "Live chat sockets open over every live replica, as this instance last heard.",
        ))?;
        let frames_throttled = IntCounterVec::new(
            Opts::new(
                "omni_livechat_frames_throttled_total",
                "Widget frames dropped because their socket was over its frame budget, by frame type.",
            ),
            &["frame"],
        )?;
        let policy_closes = IntCounterVec::new(
            Opts::new(
                "omni_livechat_policy_closes_total",
                "Live chat sockets closed by the server with 1008, by reason (flooding, token_revoked).",
            ),
            &["reason"],
        )?;
        let revocations = IntGauge::with_opts(Opts::new(
            "omni_livechat_revocations",
            "Visitor token revocations in force on this instance (made on any replica).",
        ))?;
        registry.register(Box::new(frames_throttled.clone()))?;
        registry.register(Box::new(policy_closes.clone()))?;
        registry.register(Box::new(revocations.clone()))?;
        registry.register(Box::new(presence_replicas.clone()))?;
        registry.register(Box::new(presence_sockets.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(attempts.clone()))?;
        registry.register(Box::new(frames_rejected.clone()))?;
        registry.register(Box::new(replies_pushed.clone()))?;
        Ok(Self {
            connections,
            attempts,
            frames_rejected,
            replies_pushed,
            presence_replicas,
            presence_sockets,
            frames_throttled,
            policy_closes,
            revocations,
        })
    }
}
