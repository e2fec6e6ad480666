//! Real mail servers for the e-mail tests (dovecot IMAP, opensmtpd SMTP). Filled in by the
//! e-mail channel work.
