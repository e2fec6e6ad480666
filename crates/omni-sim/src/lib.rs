//! What-if staffing: "with this roster, will we answer 80 % of chats within 2 minutes
//! tomorrow?" A contact-centre day goes through the real routing engine ([`omni_routing`]:
//! pure, no broker, no clock) in virtual time, so a day of 50,000 conversations takes seconds.
//!
//! # Layout
//! - [`profile`]: the day as a TOML file: arrivals per queue per interval, handling time and
//!   patience distributions, the roster with skills, capacity and shifts, the target.
//! - [`day`]: the discrete-event run: customers arrive, wait, abandon or are assigned by the
//!   engine, are handled and resolved; agents start and end their shifts.
//! - [`recorded`]: a recorded day (the router's input records and routing events, exported as
//!   JSON lines) as customers, handling times and agents' hours, replayed by [`day::replay`].
//! - [`report`]: service level, average speed of answer, abandonment and occupancy per queue
//!   and interval, as a table and as CSV.
//! - [`search`]: the smallest roster (the profile's, scaled) that meets the target.
//! - [`erlang`]: Erlang C and Erlang A, the queueing theory the simulation is checked against.
//! - [`rng`]: a small seeded generator, so a profile and a seed give the same day every time.

pub mod day;
pub mod erlang;
pub mod profile;
pub mod recorded;
pub mod report;
pub mod rng;
pub mod search;

pub use day::{replay, simulate};
pub use profile::{Profile, ProfileError};
pub use report::Report;

#[cfg(test)]
mod tests;
