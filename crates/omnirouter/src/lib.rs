//! The omnirouter daemon: reads and validates config, wires the Kafka producer, the channel
//! adapters and the HTTP server together, reloads tenants on SIGHUP or a changed config file,
//! and runs until SIGTERM/SIGINT.
//!
//! # Layout
//! - [`cli`]: the command line (`run`, `check-config`) and log set-up.
//! - [`settings`]: raw config → validated settings (names the bad key on error).
//! - [`channels`]: every channel built by its own entry point, in one list.
//! - [`server`]: the daemon's own routes: the API channel, `/healthz`, `/readyz`, `/metrics`.
//! - [`daemon`]: start-up, topic creation, graceful shutdown.
//! - [`observe`]: HTTP request, process and runtime metrics.
//! - [`outbound`]: every channel's reply sender behind the outbound dispatcher.
//! - [`signals`]: agents' typing indicators and read marks straight to Messenger/Instagram.
//! - [`telemetry`]: traces exported over OTLP/HTTP.
//! - [`tools`]: `omnirouter tail`, `replay` and `user-hash`, for operators.
//! - [`simulate`]: `omnirouter simulate`, the what-if staffing simulator ([`omni_sim`]).
//! - [`shutdown`]: the bounded end of a shutdown: leftovers, exit codes, the watchdog.
//! - [`reload`]: tenants changed without a restart (SIGHUP, a changed config file), and what
//!   needs one.

pub mod channels;
pub mod cli;
pub mod daemon;
pub mod observe;
pub mod outbound;
pub mod reload;
pub mod server;
pub mod settings;
pub mod shutdown;
pub mod signals;
pub mod simulate;
pub mod telemetry;
pub mod tools;
