//! The crate's errors: one for a fetch, one for the store, one for set-up and the façade.

use std::net::IpAddr;

/// Why a fetch was refused or failed. Each variant carries what a log line needs to explain it
/// and maps to a bounded [`FetchError::reason`] label for metrics.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL does not parse, has no host, or carries credentials (`user:pass@`).
    #[error("bad url: {0}")]
    BadUrl(String),
    /// Only `http` and `https` are fetched: `file://`, `ftp://` and the like could read the
    /// host's files or reach services a web request never should.
    #[error("scheme {scheme:?} refused: only http and https are fetched")]
    Scheme {
        /// The URL's scheme.
        scheme: String,
    },
    /// The host is, or resolves to, an address the policy does not allow (SSRF protection).
    #[error(
        "host {host} resolves to {addr}, a {class} address; refused (list its network in \
         [media.fetch] allow_networks to permit it)"
    )]
    Forbidden {
        /// The URL's host as written.
        host: String,
        /// The first refused address.
        addr: IpAddr,
        /// The address class: loopback, private, link-local, …
        class: &'static str,
    },
    /// The host's name has no address at all.
    #[error("host {host} does not resolve: {detail}")]
    Resolve {
        /// The URL's host.
        host: String,
        /// The resolver's message.
        detail: String,
    },
    /// The body is larger than the caller's limit (by Content-Length or while streaming).
    #[error("body larger than the {limit}-byte limit")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The whole fetch, redirects and body included, took longer than the policy allows.
    #[error("fetch did not finish within {ms} ms")]
    Timeout {
        /// The policy's timeout in milliseconds.
        ms: u128,
    },
    /// More redirects than the policy follows.
    #[error("more than {max} redirects")]
    TooManyRedirects {
        /// The policy's maximum.
        max: u8,
    },
    /// The server answered with a status other than success or a followed redirect.
    #[error("server answered http {0}")]
    Status(u16),
    /// Connecting, TLS, or reading failed.
    #[error("transport error: {0}")]
    Transport(String),
}

impl FetchError {
    /// A bounded label for metrics and logs (`error_type`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadUrl(_) => "bad_url",
            Self::Scheme { .. } => "scheme",
            Self::Forbidden { .. } => "forbidden",
            Self::Resolve { .. } => "resolve",
            Self::TooLarge { .. } => "too_large",
            Self::Timeout { .. } => "timeout",
            Self::TooManyRedirects { .. } => "too_many_redirects",
            Self::Status(_) => "status",
            Self::Transport(_) => "transport",
        }
    }

    /// Whether trying again later may succeed: timeouts, 5xx, 429, resolution and transport
    /// errors are; refusals, oversize bodies and other 4xx are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Transport(_) | Self::Resolve { .. } => true,
            Self::Status(code) => *code >= 500 || *code == 429,
            Self::BadUrl(_)
            | Self::Scheme { .. }
            | Self::Forbidden { .. }
            | Self::TooLarge { .. }
            | Self::TooManyRedirects { .. } => false,
        }
    }
}

/// Why the media store could not write or read an object.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A key part (tenant, event id) is not a plain path segment.
    #[error("bad media key part {part:?}: only letters, digits, '.', '-' and '_' are allowed")]
    BadKey {
        /// The offending part.
        part: String,
    },
    /// A directory-store file could not be written or read.
    #[error("media file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The object storage refused or failed a request (wrong credentials, missing bucket,
    /// unreachable endpoint).
    #[error("object storage {op} of {key} failed: {source}")]
    S3 {
        /// `put` or `get`.
        op: &'static str,
        /// The object key.
        key: String,
        /// object_store's error, which names the S3 error code.
        #[source]
        source: object_store::Error,
    },
    /// A stored object is larger than the reader's limit.
    #[error("stored object larger than the {limit}-byte limit")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
}

impl StoreError {
    /// A bounded label for metrics and logs (`error_type`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadKey { .. } => "bad_key",
            Self::Io { .. } => "io",
            Self::S3 { .. } => "s3",
            Self::TooLarge { .. } => "too_large",
        }
    }
}

/// Set-up and façade errors: invalid configuration, a client that cannot be built, or a
/// copy that failed while fetching or storing.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The `[media]` configuration is invalid.
    #[error("invalid media config: {0}")]
    Config(String),
    /// The HTTP client or the object-store client could not be built.
    #[error("building the {what} client failed: {detail}")]
    Client {
        /// `fetch` or `s3`.
        what: &'static str,
        /// The builder's message.
        detail: String,
    },
    /// A copy was asked for but `[media] store = "none"`.
    #[error("no media store is configured (media.store = \"none\")")]
    NoStore,
    /// Fetching the source failed.
    #[error("fetching media failed: {0}")]
    Fetch(#[from] FetchError),
    /// Storing the fetched bytes failed.
    #[error("storing media failed: {0}")]
    Store(#[from] StoreError),
}

impl MediaError {
    /// A bounded label for metrics and logs (`error_type`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::NoStore => "no_store",
            Self::Client { .. } => "client",
            Self::Fetch(e) => e.reason(),
            Self::Store(e) => e.reason(),
        }
    }

    /// Whether a copy may succeed when tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Config(_) | Self::Client { .. } | Self::NoStore => false,
            Self::Fetch(e) => e.is_retryable(),
            Self::Store(StoreError::S3 { .. } | StoreError::Io { .. }) => true,
            Self::Store(_) => false,
        }
    }
}
