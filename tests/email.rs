//! E-mail end to end against real dovecot and opensmtpd. Filled in by the e-mail channel work.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
