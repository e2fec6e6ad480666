//! How a stopped daemon ends: what the shutdown left behind, the exit code and last log line
//! that say it, and the watchdog that ends the process when the cooperative shutdown does not.
//!
//! Once SIGTERM/SIGINT arrives the process always exits within `server.shutdown_grace_secs`
//! plus [`WATCHDOG_MARGIN`], whatever still blocks (a dead or stalled broker, a provider that
//! never answers, an IMAP session, a blocking task): the cooperative path in
//! [`crate::daemon::run`] flushes with the grace deadline, purges what is left, counts it and
//! exits; the watchdog, a plain thread armed at the signal, counts and exits if that path is
//! stuck. Neither destroys librdkafka handles or drops the tokio runtime (both may block for
//! as long as the broker is away); nothing acknowledged is lost by not doing so, since a
//! record counts as published only once the broker acknowledged it.

use std::sync::{Mutex, OnceLock, RwLock};
use std::thread::ThreadId;
use std::time::Duration;

use omni_bus::{Producer, Unfinished};

/// The exit code of a shutdown cut short by the grace period (`EX_TEMPFAIL`): records were
/// not flushed or replies not finished. None of them was acknowledged (no 202, no committed
/// offset), so clients retry and Kafka redelivers them to the next daemon.
pub const EXIT_CUT_SHORT: u8 = 75;

/// How long after the grace period the watchdog ends a shutdown that is still blocked.
pub const WATCHDOG_MARGIN: Duration = Duration::from_secs(3);

/// What a shutdown could not finish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Records the broker never acknowledged (purged from the producer).
    pub records_unflushed: usize,
    /// Outbound replies taken and not finished: their offsets stay uncommitted.
    pub replies_unfinished: usize,
}

impl Leftovers {
    /// Everything was flushed and finished.
    pub fn is_clean(&self) -> bool {
        self.records_unflushed == 0 && self.replies_unfinished == 0
    }

    /// 0 when clean, [`EXIT_CUT_SHORT`] otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.is_clean() {
            0
        } else {
            EXIT_CUT_SHORT
        }
    }

    /// The last log line's message.
    pub fn summary(&self) -> String {
        if self.is_clean() {
            "shutdown complete: everything flushed".to_owned()
        } else {
            format!(
                "shutdown complete, cut short by the grace period: {} record(s) not flushed, \
                 {} reply(ies) not finished; none was acknowledged or committed, so clients \
                 retry and Kafka redelivers them",
                self.records_unflushed, self.replies_unfinished
            )
        }
    }
}

/// What may still be pending, counted live (for the watchdog).
#[derive(Clone)]
pub struct Pending {
    /// The process's producer.
    pub producer: Producer,
    /// The outbound dispatcher's taken-but-unfinished replies, when it runs.
    pub replies: Option<Unfinished>,
}

impl Pending {
    /// What is pending right now.
    pub fn count(&self) -> Leftovers {
        Leftovers {
            records_unflushed: usize::try_from(self.producer.in_flight()).unwrap_or(0),
            replies_unfinished: self.replies.as_ref().map_or(0, Unfinished::get),
        }
    }
}

/// Only the first caller of [`exit`] logs and exits (the watchdog and the cooperative path
/// may race); a second one waits here until the process is gone.
static EXITING: Mutex<()> = Mutex::new(());

/// Logs the last line (the counts and the exit code) and ends the process at once: no
/// destructor runs, so no librdkafka handle or blocking task can hold it up.
pub fn exit(leftovers: Leftovers) -> ! {
    finish(leftovers.exit_code(), leftovers, &leftovers.summary())
}

fn finish(code: u8, leftovers: Leftovers, message: &str) -> ! {
    let _only_one = EXITING.lock().unwrap_or_else(|p| p.into_inner());
    close_log();
    if code == 0 {
        tracing::info!(
            exit_code = code,
            records_unflushed = leftovers.records_unflushed,
            replies_unfinished = leftovers.replies_unfinished,
            "{message}"
        );
    } else {
        tracing::warn!(
            exit_code = code,
            records_unflushed = leftovers.records_unflushed,
            replies_unfinished = leftovers.replies_unfinished,
            "{message}"
        );
    }
    std::process::exit(i32::from(code))
}

/// Arms the watchdog: a thread that, `after` from now, counts what is pending and exits with
/// [`EXIT_CUT_SHORT`], even when the counts are zero (a step that should have ended did not,
/// e.g. a mailbox session or a blocking task that holds no record).
pub fn arm_watchdog(after: Duration, pending: Pending) {
    let spawned = std::thread::Builder::new()
        .name("shutdown-watchdog".into())
        .spawn(move || {
            std::thread::sleep(after);
            let leftovers = pending.count();
            tracing::warn!(
                waited_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                "shutdown still blocked past the grace period: exiting anyway"
            );
            let message = if leftovers.is_clean() {
                "shutdown complete, cut short by the grace period: 0 record(s) not flushed, \
                 0 reply(ies) not finished; a task that holds no record did not stop"
                    .to_owned()
            } else {
                leftovers.summary()
            };
            finish(EXIT_CUT_SHORT, leftovers, &message)
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the shutdown watchdog");
    }
}

/// The thread allowed to write once the log is closed (the one writing the last line).
static LAST_WRITER: OnceLock<ThreadId> = OnceLock::new();
/// Held (shared) by every log write; taken exclusively to wait out writes in progress.
static LOG_WRITES: RwLock<()> = RwLock::new(());

/// Closes the log to every other thread and waits for their writes in progress, so the line
/// this thread writes next is the last one (tasks woken by the purge, librdkafka's threads
/// and the runtime's workers keep running until the process ends).
fn close_log() {
    let _ = LAST_WRITER.set(std::thread::current().id());
    drop(LOG_WRITES.write().unwrap_or_else(|p| p.into_inner()));
}

/// The daemon's log writer: standard error, until [`exit`] closes it to all but the thread
/// writing the last line.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let _writing = LOG_WRITES.read().unwrap_or_else(|p| p.into_inner());
        match LAST_WRITER.get() {
            Some(last) if *last != std::thread::current().id() => Ok(()),
            _ => std::io::stderr().lock().write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_shutdown_exits_zero_and_says_everything_was_flushed() {
        let clean = Leftovers::default();
        assert!(clean.is_clean());
        assert_eq!(clean.exit_code(), 0);
        assert_eq!(clean.summary(), "shutdown complete: everything flushed");
    }

    #[test]
    fn unflushed_records_or_unfinished_replies_exit_with_the_cut_code_and_their_counts() {
        for leftovers in [
            Leftovers {
                records_unflushed: 3,
                replies_unfinished: 0,
            },
            Leftovers {
                records_unflushed: 0,
                replies_unfinished: 2,
            },
            Leftovers {
                records_unflushed: 3,
                replies_unfinished: 2,
            },
        ] {
            assert!(!leftovers.is_clean());
            assert_eq!(leftovers.exit_code(), EXIT_CUT_SHORT);
            let summary = leftovers.summary();
            assert!(
                summary.starts_with("shutdown complete, cut short"),
                "{summary}"
            );
            assert!(
                summary.contains(&format!(
                    "{} record(s) not flushed, {} reply(ies) not finished",
                    leftovers.records_unflushed, leftovers.replies_unfinished
                )),
                "{summary}"
            );
        }
    }

    #[test]
    fn the_cut_code_is_distinct_from_failure_and_bad_config() {
        // 1: the daemon failed; 2: the config did not validate (see `cli`).
        assert!(![0, 1, 2].contains(&EXIT_CUT_SHORT));
    }
}
