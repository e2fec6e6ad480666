//! The safe fetcher: downloads a provider's attachment (or a reply's attachment URL) without
//! letting the URL reach the host's own network (SSRF).
//!
//! Order of checks for every hop, the first request and each redirect alike:
//! 1. the URL parses, its scheme is `http` or `https`, it carries no `user:pass@`;
//! 2. an IP-literal host is judged at once by [`AllowedNetworks::check`] (reqwest connects
//!    to literals without asking the resolver, so this is the only check they get);
//! 3. a host name is resolved by `GuardedResolver` at connect time, which drops every
//!    refused address and fails when none remain: the address checked is the address
//!    connected to, so DNS rebinding gains nothing;
//! 4. redirects are followed by hand (the client follows none), up to `max_redirects`, each
//!    `Location` resolved against the current URL and checked from step 1;
//! 5. credentials go only to the original URL's origin (Twilio redirects to a signed CDN URL
//!    that must not see the account's key);
//! 6. the body is refused over the caller's limit by `Content-Length` up front and while
//!    streaming, and the whole fetch, body included, is bounded by the policy's timeout.
//!
//! No proxy is used: a proxy would connect on our behalf to addresses we never checked.

use omni_core::Secret;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, LOCATION};
use reqwest::Url;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::addr::AllowedNetworks;
use crate::error::{FetchError, MediaError};

/// What a fetch may do: how long it may take, how many redirects it follows, and which
/// otherwise refused networks it may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPolicy {
    /// Bound on the whole fetch: connecting, every redirect and the full body. A server that
    /// trickles bytes is cut off here.
    pub timeout: Duration,
    /// Redirects followed before giving up.
    pub max_redirects: u8,
    /// Special-purpose networks allowed anyway; empty (the default) refuses them all.
    pub allowed_networks: AllowedNetworks,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            max_redirects: 3,
            allowed_networks: AllowedNetworks::default(),
        }
    }
}

/// Credentials for a provider's media URL. Sent only to the origin of the URL first asked
/// for, never after a redirect to another origin.
#[derive(Debug, Clone)]
pub enum FetchAuth {
    /// HTTP Basic (Twilio: account SID and auth token).
    Basic {
        /// The user name.
        user: String,
        /// The password, never logged.
        password: Secret,
    },
    /// `Authorization: Bearer` (Meta's Graph API media URLs).
    Bearer(Secret),
}

/// A fetched body with what the store needs to keep it.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The body, at most the caller's limit.
    pub bytes: Vec<u8>,
    /// The final response's `Content-Type`, if any.
    pub content_type: Option<String>,
    /// The URL the body came from after redirects.
    pub final_url: String,
}

/// Fetches URLs under a [`FetchPolicy`]. Cheap to clone: one shared HTTP client.
#[derive(Debug, Clone)]
pub struct SafeFetcher {
    client: reqwest::Client,
    policy: Arc<FetchPolicy>,
}

impl SafeFetcher {
    /// Builds the one client every fetch uses: no automatic redirects, no proxy, and the
    /// guarded resolver.
    pub fn new(policy: FetchPolicy) -> Result<Self, MediaError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(GuardedResolver {
                allowed: policy.allowed_networks.clone(),
            })
            .connect_timeout(policy.timeout)
            .user_agent(concat!("omnirouter-media/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| MediaError::Client {
                what: "fetch",
                detail: error_chain(&e),
            })?;
        Ok(Self {
            client,
            policy: Arc::new(policy),
        })
    }

    /// The policy this fetcher enforces.
    pub fn policy(&self) -> &FetchPolicy {
        &self.policy
    }

    /// Fetches `url` with `auth` for its origin; refuses bodies over `max_bytes`. See the
    /// module docs for the checks.
    pub async fn fetch(
        &self,
        url: &str,
        max_bytes: u64,
        auth: Option<&FetchAuth>,
    ) -> Result<Fetched, FetchError> {
        let timeout = self.policy.timeout;
        match tokio::time::timeout(timeout, self.fetch_unbounded(url, max_bytes, auth)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout {
                ms: timeout.as_millis(),
            }),
        }
    }

    async fn fetch_unbounded(
        &self,
        url: &str,
        max_bytes: u64,
        auth: Option<&FetchAuth>,
    ) -> Result<Fetched, FetchError> {
        let mut current = Url::parse(url).map_err(|e| FetchError::BadUrl(format!("{url}: {e}")))?;
        self.check_url(&current)?;
        let origin = current.origin();
        let mut redirects = 0u8;
        loop {
            let mut request = self.client.get(current.clone());
            if current.origin() == origin {
                request = match auth {
                    Some(FetchAuth::Basic { user, password }) => {
                        request.basic_auth(user, Some(password.expose()))
                    }
                    Some(FetchAuth::Bearer(token)) => request.bearer_auth(token.expose()),
                    None => request,
                };
            }
            let response = request.send().await.map_err(|e| send_error(&current, &e))?;
            let status = response.status();
            if status.is_redirection() {
                if let Some(location) = response.headers().get(LOCATION) {
                    if redirects >= self.policy.max_redirects {
                        return Err(FetchError::TooManyRedirects {
                            max: self.policy.max_redirects,
                        });
                    }
                    redirects += 1;
                    let location = location.to_str().map_err(|_| {
                        FetchError::BadUrl(format!("redirect from {current} to a non-ascii url"))
                    })?;
                    let next = current.join(location).map_err(|e| {
                        FetchError::BadUrl(format!("redirect from {current} to {location}: {e}"))
                    })?;
                    self.check_url(&next)?;
                    current = next;
                    continue;
                }
            }
            if !status.is_success() {
                return Err(FetchError::Status(status.as_u16()));
            }
            return read_body(response, max_bytes, current).await;
        }
    }

    /// Steps 1 and 2 of the module docs: scheme, credentials, literal addresses.
    fn check_url(&self, url: &Url) -> Result<(), FetchError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::Scheme {
                scheme: url.scheme().to_owned(),
            });
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(FetchError::BadUrl(
                "credentials in the url (user:pass@) are refused".to_owned(),
            ));
        }
        let literal = match url.host() {
            None => return Err(FetchError::BadUrl(format!("{url} has no host"))),
            Some(url::Host::Domain(_)) => None,
            Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
        };
        if let Some(addr) = literal {
            self.policy
                .allowed_networks
                .check(addr)
                .map_err(|class| FetchError::Forbidden {
                    host: url.host_str().unwrap_or_default().to_owned(),
                    addr,
                    class,
                })?;
        }
        Ok(())
    }
}

/// Reads the body up to `max_bytes`.
async fn read_body(
    mut response: reqwest::Response,
    max_bytes: u64,
    url: Url,
) -> Result<Fetched, FetchError> {
    let too_large = FetchError::TooLarge { limit: max_bytes };
    if response.content_length().is_some_and(|len| len > max_bytes) {
        return Err(too_large);
    }
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| send_error(&url, &e))? {
        if (bytes.len() + chunk.len()) as u64 > max_bytes {
            return Err(too_large);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Fetched {
        bytes,
        content_type,
        final_url: url.into(),
    })
}

/// Maps a reqwest error, finding the guarded resolver's refusal in its source chain.
fn send_error(url: &Url, err: &reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(refusal) = e.downcast_ref::<ResolveRefusal>() {
            return match refusal {
                ResolveRefusal::Forbidden { host, addr, class } => FetchError::Forbidden {
                    host: host.clone(),
                    addr: *addr,
                    class,
                },
                ResolveRefusal::Failed { host, detail } => FetchError::Resolve {
                    host: host.clone(),
                    detail: detail.clone(),
                },
            };
        }
        source = e.source();
    }
    FetchError::Transport(format!(
        "{}: {}",
        url.host_str().unwrap_or_default(),
        error_chain(err)
    ))
}

/// An error and its causes on one line, for messages that must say what actually failed.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// The resolver's reasons to refuse a name; found again in reqwest's error chain.
#[derive(Debug, thiserror::Error)]
enum ResolveRefusal {
    #[error("host {host} resolves only to refused addresses ({addr} is {class})")]
    Forbidden {
        host: String,
        addr: IpAddr,
        class: &'static str,
    },
    #[error("host {host} does not resolve: {detail}")]
    Failed { host: String, detail: String },
}

/// Resolves with the system resolver and keeps only allowed addresses, so the address
/// checked is the address connected to (no DNS rebinding between check and connect).
struct GuardedResolver {
    allowed: AllowedNetworks,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allowed = self.allowed.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| ResolveRefusal::Failed {
                    host: host.clone(),
                    detail: e.to_string(),
                })?;
            let mut refused = None;
            let kept: Vec<SocketAddr> = found
                .filter(|addr| match allowed.check(addr.ip()) {
                    Ok(()) => true,
                    Err(class) => {
                        refused.get_or_insert((addr.ip(), class));
                        false
                    }
                })
                .collect();
            if kept.is_empty() {
                let refusal = match refused {
                    Some((addr, class)) => ResolveRefusal::Forbidden { host, addr, class },
                    None => ResolveRefusal::Failed {
                        host,
                        detail: "no addresses".to_owned(),
                    },
                };
                return Err(Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
