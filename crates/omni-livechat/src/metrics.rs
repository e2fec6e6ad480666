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
}

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
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(attempts.clone()))?;
        registry.register(Box::new(frames_rejected.clone()))?;
        registry.register(Box::new(replies_pushed.clone()))?;
        Ok(Self {
            connections,
            attempts,
            frames_rejected,
            replies_pushed,
        })
    }
}
