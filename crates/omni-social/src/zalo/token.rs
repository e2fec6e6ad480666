//! Zalo OA access tokens, refreshed before they expire.
//!
//! A refresh token is single-use: the refresh that consumes it returns the next one, and if
//! that one is lost the OA must be re-authorized by hand. So the new pair is written to the
//! OA's token file (temporary file, fsync, rename, fsync of the directory) before the new
//! access token is used; if the write fails the pair is kept in memory, nothing is sent with
//! it, and the write is retried first on the next call. Failures are logged at `error` and
//! counted in `omni_zalo_token_refreshes_total{result="error"}`.
//!
//! With several replicas ([`OaToken::replicated`]), only the owner of the OA's tenant
//! partition refreshes, after a grace of one refresh timeout from the moment it became the
//! owner (so a previous owner's refresh in flight lands first); the new pair reaches Kafka
//! ([`super::shared`]) before it is used, and every other replica sends with the newest pair
//! from there, waiting (at most one refresh timeout) for the owner's refresh only once the
//! access token has actually expired. Remaining window: an owner killed after Zalo answered a
//! refresh and before Kafka acknowledged the new pair loses the pair (re-authorise the OA);
//! the refresh call and the write take milliseconds of a token's ~25 hours.
//!
//! The token file is still written on the refreshing replica (the operator named it) and read
//! at start: a pair newer than Kafka's (an upgrade from one instance) is adopted and shared.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use omni_core::Secret;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::OaSettings;
use crate::wire::IdText;

pub use file::{StoredTokens, TokenFile};

mod file;

/// Why no access token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read or written.
    #[error("token file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The token file is not valid JSON of the expected shape.
    #[error("token file {path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Neither the file nor the settings hold a refresh token.
    #[error("no refresh token for OA {oa}: set initial_refresh_token or provide the token file")]
    NoRefreshToken {
        /// The OA.
        oa: String,
    },
    /// The OAuth endpoint could not be reached or answered garbage.
    #[error("token refresh for OA {oa} failed: {detail}")]
    Unreachable {
        /// The OA.
        oa: String,
        /// What happened.
        detail: String,
    },
    /// Another replica refreshes this OA and its new pair has not arrived in time.
    #[error("the token of OA {oa} is refreshed by the replica owning its tenant and has not arrived yet")]
    RefreshedElsewhere {
        /// The OA.
        oa: String,
    },
    /// The new pair could not be written to the shared tokens topic.
    #[error("cannot share the new token pair of OA {oa}: {detail}")]
    Share {
        /// The OA.
        oa: String,
        /// Why.
        detail: String,
    },
    /// Zalo refused the refresh token (expired, already used, revoked).
    #[error("Zalo refused the refresh token of OA {oa}: {detail}")]
    Refused {
        /// The OA.
        oa: String,
        /// Zalo's error.
        detail: String,
    },
}

impl TokenError {
    /// Whether retrying later may help (a network failure or a disk hiccup may pass; a refused
    /// refresh token will not).
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            TokenError::Refused { .. } | TokenError::NoRefreshToken { .. }
        )
    }
}

/// Token metric families.
#[derive(Clone)]
pub struct TokenMetrics {
    /// Refresh attempts by OA and result (`ok`, `error`).
    pub refreshes: IntCounterVec,
    /// When each OA's access token expires (Unix seconds).
    pub expires_at: IntGaugeVec,
}

impl TokenMetrics {
    /// Creates the families and registers them into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let refreshes = IntCounterVec::new(
            Opts::new(
                "omni_zalo_token_refreshes_total",
                "Zalo OA access token refreshes, by OA and result (ok, error).",
            ),
            &["oa", "result"],
        )?;
        let expires_at = IntGaugeVec::new(
            Opts::new(
                "omni_zalo_token_expiry_timestamp_seconds",
                "When each Zalo OA's current access token expires, in Unix seconds.",
            ),
            &["oa"],
        )?;
        registry.register(Box::new(refreshes.clone()))?;
        registry.register(Box::new(expires_at.clone()))?;
        Ok(Self {
            refreshes,
            expires_at,
        })
    }
}

/// Where and when to refresh.
#[derive(Debug, Clone)]
pub struct RefreshSettings {
    /// `https://oauth.zaloapp.com` in production; a local stand-in in tests.
    pub oauth_base_url: String,
    /// Refresh this long before the access token expires.
    pub refresh_before: Duration,
    /// Timeout of one refresh call.
    pub timeout: Duration,
}

/// The current pair and whether it still has to reach the file. `Debug` never shows a token.
#[derive(Default)]
struct State {
    tokens: Option<StoredTokens>,
    unsaved: bool,
    /// An access token Zalo called invalid: never adopted again from the file.
    rejected: Option<String>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("tokens", &self.tokens)
            .field("unsaved", &self.unsaved)
            .field("rejected", &self.rejected.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Where an OA's pair is shared with the other replicas, and who refreshes it.
pub struct Replicated {
    /// The shared pairs.
    pub store: Arc<super::shared::SharedTokens>,
    /// What this replica owns.
    pub ownership: omni_channel::Ownership,
    /// The OA's tenant: the ownership key.
    pub tenant: String,
}

/// One OA's access token, refreshed on demand and ahead of expiry.
pub struct OaToken {
    oa: String,
    app_id: String,
    app_secret: Secret,
    file: TokenFile,
    seed: (Option<Secret>, Option<Secret>),
    state: tokio::sync::Mutex<State>,
    http: reqwest::Client,
    settings: RefreshSettings,
    metrics: TokenMetrics,
    replicated: Option<Replicated>,
    /// Since when this replica owns the OA's tenant (the refresh grace starts there).
    owned_since: std::sync::Mutex<Option<std::time::Instant>>,
}

impl OaToken {
    /// The token keeper of OA `oa`.
    pub fn new(
        oa: &str,
        settings: &OaSettings,
        refresh: RefreshSettings,
        metrics: TokenMetrics,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            oa: oa.to_owned(),
            app_id: settings.app_id.clone(),
            app_secret: settings.app_secret.clone(),
            file: TokenFile::new(settings.token_file.clone()),
            seed: (
                settings.initial_access_token.clone(),
                settings.initial_refresh_token.clone(),
            ),
            state: tokio::sync::Mutex::new(State::default()),
            http: reqwest::Client::builder()
                .timeout(refresh.timeout)
                .build()?,
            settings: refresh,
            metrics,
            replicated: None,
            owned_since: std::sync::Mutex::new(None),
        })
    }

    /// Shares the pair with the other replicas through `replicated`: from now on only the
    /// owner of the tenant refreshes.
    #[must_use]
    pub fn replicated(mut self, replicated: Replicated) -> Self {
        self.replicated = Some(replicated);
        self
    }

    /// Whether this replica refreshes the OA now: always for a single instance; with replicas,
    /// the owner of the tenant once it has owned it for one refresh timeout.
    pub fn refreshes_here(&self) -> bool {
        let Some(r) = &self.replicated else {
            return true;
        };
        let mut since = self.owned_since.lock().unwrap_or_else(|p| p.into_inner());
        if !r.ownership.owns(&r.tenant) {
            *since = None;
            return false;
        }
        since.get_or_insert_with(std::time::Instant::now).elapsed() >= self.settings.timeout
    }

    fn shared_key(&self) -> Option<String> {
        self.replicated
            .as_ref()
            .map(|r| super::shared::SharedTokens::key(&r.tenant, &self.oa))
    }

    /// Takes the shared pair when it differs from the one held: with replicas the tokens
    /// topic is the truth. A pair refreshed here and not stored yet is never replaced.
    fn adopt_shared(&self, state: &mut State) {
        let (Some(r), Some(key)) = (&self.replicated, self.shared_key()) else {
            return;
        };
        let Some(shared) = r.store.get(&key) else {
            return;
        };
        let differs = state.tokens.as_ref() != Some(&shared);
        if differs
            && !state.unsaved
            && state.rejected.as_deref() != Some(shared.access_token.as_str())
        {
            self.publish_expiry(&shared);
            state.tokens = Some(shared);
            state.unsaved = false;
        }
    }

    /// Takes the owner's newest pair, if newer than the one held.
    pub async fn follow_shared(&self) {
        let mut state = self.state.lock().await;
        self.adopt_shared(&mut state);
    }

    /// On a replica that does not refresh: the held token while it has not expired, else the
    /// owner's next pair if it arrives within one refresh timeout.
    async fn refreshed_by_owner(&self, state: &mut State) -> Result<Secret, TokenError> {
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        loop {
            self.adopt_shared(state);
            let now = Utc::now();
            if let Some(t) = state.tokens.as_ref().filter(|t| {
                !t.access_token.is_empty()
                    && t.access_token_expires_at.is_some_and(|at| at > now)
                    && state.rejected.as_deref() != Some(t.access_token.as_str())
            }) {
                return Ok(Secret::new(t.access_token.clone()));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(TokenError::RefreshedElsewhere {
                    oa: self.oa.clone(),
                });
            }
            if let Some(r) = &self.replicated {
                r.store.changed(left).await;
            }
        }
    }

    /// The OA id.
    pub fn oa(&self) -> &str {
        &self.oa
    }

    /// A usable access token, refreshing first if it expires within `refresh_before`.
    pub async fn access_token(&self) -> Result<Secret, TokenError> {
        let mut state = self.state.lock().await;
        self.adopt_shared(&mut state);
        let here = self.refreshes_here();
        if state.tokens.is_none() {
            if !here {
                return self.refreshed_by_owner(&mut state).await;
            }
            state.tokens = Some(self.load_or_seed().await?);
        }
        if state.unsaved && here {
            self.save(&mut state).await?;
        }
        // Read the clock only now: waiting for the lock, or for the shared pairs to be read
        // from Kafka at a replica's start, can take seconds under load.
        let now = Utc::now();
        if let Some(tokens) = state.tokens.as_ref().filter(|t| self.fresh(t, now)) {
            return Ok(Secret::new(tokens.access_token.clone()));
        }
        if !here {
            return self.refreshed_by_owner(&mut state).await;
        }
        // Another process sharing the file may have refreshed already.
        if let Some(stored) = self.file.load()?.filter(|t| {
            self.fresh(t, now) && state.rejected.as_deref() != Some(t.access_token.as_str())
        }) {
            let token = Secret::new(stored.access_token.clone());
            self.publish_expiry(&stored);
            state.tokens = Some(stored);
            return Ok(token);
        }
        let refresh_token = state
            .tokens
            .as_ref()
            .map(|t| t.refresh_token.clone())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| TokenError::NoRefreshToken {
                oa: self.oa.clone(),
            })?;
        let fresh = match self.call_refresh(&refresh_token).await {
            Ok(fresh) => fresh,
            Err(e) => {
                self.metrics
                    .refreshes
                    .with_label_values(&[self.oa.as_str(), "error"])
                    .inc();
                tracing::error!(channel = "zalo", oa = %self.oa, error = %e,
                    "Zalo access token refresh failed: replies on this OA will fail until it succeeds");
                return Err(e);
            }
        };
        self.metrics
            .refreshes
            .with_label_values(&[self.oa.as_str(), "ok"])
            .inc();
        state.tokens = Some(fresh);
        state.unsaved = true;
        self.save(&mut state).await?;
        let tokens = state
            .tokens
            .as_ref()
            .ok_or_else(|| TokenError::NoRefreshToken {
                oa: self.oa.clone(),
            })?;
        self.publish_expiry(tokens);
        tracing::info!(channel = "zalo", oa = %self.oa,
            expires_at = ?tokens.access_token_expires_at, "Zalo access token refreshed");
        Ok(Secret::new(tokens.access_token.clone()))
    }

    /// Forgets the access token (Zalo said it is invalid), so the next use refreshes.
    pub async fn invalidate(&self) {
        let mut state = self.state.lock().await;
        if let Some(tokens) = state.tokens.as_mut() {
            tokens.access_token_expires_at = None;
            let rejected = tokens.access_token.clone();
            state.rejected = Some(rejected);
        }
    }

    /// When the current access token should next be refreshed, if known.
    pub async fn refresh_due(&self) -> Option<DateTime<Utc>> {
        let state = self.state.lock().await;
        let expires = state.tokens.as_ref()?.access_token_expires_at?;
        expires.checked_sub_signed(self.refresh_margin())
    }

    fn refresh_margin(&self) -> ChronoDuration {
        ChronoDuration::from_std(self.settings.refresh_before).unwrap_or(ChronoDuration::zero())
    }

    fn fresh(&self, tokens: &StoredTokens, now: DateTime<Utc>) -> bool {
        !tokens.access_token.is_empty()
            && tokens
                .access_token_expires_at
                .and_then(|at| at.checked_sub_signed(self.refresh_margin()))
                .is_some_and(|due| due > now)
    }

    /// Writes the held pair to Kafka (with replicas) and to the token file; it is used only
    /// once both are done.
    async fn save(&self, state: &mut State) -> Result<(), TokenError> {
        let Some(tokens) = state.tokens.as_ref() else {
            return Ok(());
        };
        if let (Some(r), Some(key)) = (&self.replicated, self.shared_key()) {
            if let Err(detail) = r.store.put(&key, tokens).await {
                self.metrics
                    .refreshes
                    .with_label_values(&[self.oa.as_str(), "error"])
                    .inc();
                tracing::error!(channel = "zalo", oa = %self.oa, error = %detail,
                    "cannot share the new Zalo token pair through Kafka; it is held in memory and not used until stored");
                return Err(TokenError::Share {
                    oa: self.oa.clone(),
                    detail,
                });
            }
        }
        match self.file.save(tokens) {
            Ok(()) => {
                state.unsaved = false;
                Ok(())
            }
            Err(e) => {
                self.metrics
                    .refreshes
                    .with_label_values(&[self.oa.as_str(), "error"])
                    .inc();
                tracing::error!(channel = "zalo", oa = %self.oa, error = %e,
                    "cannot store the new Zalo refresh token; it is held in memory and not used until stored");
                Err(e)
            }
        }
    }

    fn publish_expiry(&self, tokens: &StoredTokens) {
        if let Some(at) = tokens.access_token_expires_at {
            self.metrics
                .expires_at
                .with_label_values(&[self.oa.as_str()])
                .set(at.timestamp());
        }
    }

    /// The newest of the shared pair and the file's, else a pair seeded from the settings;
    /// written to where it was missing.
    async fn load_or_seed(&self) -> Result<StoredTokens, TokenError> {
        if let Some(r) = &self.replicated {
            if !r.store.read_up(self.settings.timeout).await {
                return Err(TokenError::Unreachable {
                    oa: self.oa.clone(),
                    detail: "the shared token pairs have not been read from Kafka yet".into(),
                });
            }
        }
        let shared = self
            .replicated
            .as_ref()
            .zip(self.shared_key())
            .and_then(|(r, key)| r.store.get(&key));
        let file = self.file.load()?;
        let newest = match (shared.clone(), file) {
            (Some(s), Some(f)) => Some(if f.updated_at > s.updated_at { f } else { s }),
            (s, f) => s.or(f),
        };
        if let Some(stored) = newest {
            self.publish_expiry(&stored);
            let unshared = self.replicated.is_some() && shared.as_ref() != Some(&stored);
            if unshared {
                let mut state = State {
                    tokens: Some(stored.clone()),
                    ..State::default()
                };
                self.save(&mut state).await?;
            }
            return Ok(stored);
        }
        let refresh_token = self
            .seed
            .1
            .as_ref()
            .map(|s| s.expose().to_owned())
            .ok_or_else(|| TokenError::NoRefreshToken {
                oa: self.oa.clone(),
            })?;
        let seeded = StoredTokens {
            access_token: self
                .seed
                .0
                .as_ref()
                .map(|s| s.expose().to_owned())
                .unwrap_or_default(),
            access_token_expires_at: None,
            refresh_token,
            updated_at: Utc::now(),
        };
        let mut state = State {
            tokens: Some(seeded.clone()),
            ..State::default()
        };
        self.save(&mut state).await?;
        Ok(seeded)
    }

    /// `POST /v4/oa/access_token` with the app's secret key. The new access token's expiry
    /// counts from the moment the request is sent (Zalo's `expires_in` counts from when it
    /// issues the token, a little later), never from an earlier reading of the clock: an
    /// expiry counted from before a wait makes the next refresh early by that wait.
    async fn call_refresh(&self, refresh_token: &str) -> Result<StoredTokens, TokenError> {
        let unreachable = |detail: String| TokenError::Unreachable {
            oa: self.oa.clone(),
            detail,
        };
        let url = format!(
            "{}/v4/oa/access_token",
            self.settings.oauth_base_url.trim_end_matches('/')
        );
        let requested_at = Utc::now();
        let response = self
            .http
            .post(url)
            .header("secret_key", self.app_secret.expose())
            .form(&[
                ("refresh_token", refresh_token),
                ("app_id", self.app_id.as_str()),
                ("grant_type", "refresh_token"),
            ])
            .send()
            .await
            .map_err(|e| unreachable(omni_channel::SendError::from_transport(&e).detail))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| unreachable(omni_channel::SendError::from_transport(&e).detail))?;
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            refresh_token: Option<String>,
            #[serde(default)]
            expires_in: Option<IdText>,
            #[serde(default)]
            error: Option<i64>,
            #[serde(default)]
            error_name: Option<String>,
            #[serde(default)]
            error_description: Option<String>,
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|e| unreachable(format!("HTTP {status}, not a token answer: {e}")))?;
        match (answer.access_token, answer.refresh_token) {
            (Some(access), Some(refresh)) if !access.is_empty() && !refresh.is_empty() => {
                let expires_in = answer
                    .expires_in
                    .and_then(|e| e.0.parse::<i64>().ok())
                    .unwrap_or(3600);
                Ok(StoredTokens {
                    access_token: access,
                    access_token_expires_at: requested_at.checked_add_signed(
                        ChronoDuration::seconds(expires_in.clamp(0, 366 * 86_400)),
                    ),
                    refresh_token: refresh,
                    // When Zalo issued it (after the call), so it sorts after the pair it replaces.
                    updated_at: Utc::now(),
                })
            }
            _ if status.is_server_error() => Err(unreachable(format!("HTTP {status}"))),
            _ => Err(TokenError::Refused {
                oa: self.oa.clone(),
                detail: format!(
                    "HTTP {status}, error {} {} {}",
                    answer.error.unwrap_or_default(),
                    answer.error_name.unwrap_or_default(),
                    answer.error_description.unwrap_or_default()
                ),
            }),
        }
    }
}

/// Keeps every OA's token fresh even when nothing is sent, so the refresh-token chain (valid
/// three months per link) never lapses. Runs until `stop` turns true.
pub async fn keep_fresh(tokens: Vec<Arc<OaToken>>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut failures: u32 = 0;
    loop {
        let mut next = Utc::now()
            .checked_add_signed(ChronoDuration::minutes(10))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let mut failed = false;
        for token in &tokens {
            if !token.refreshes_here() {
                // The owner refreshes; follow its pairs (and notice becoming the owner).
                token.follow_shared().await;
            } else if let Err(e) = token.access_token().await {
                failed = true;
                // Already logged loudly; a refused token needs a human, keep reminding.
                tracing::debug!(oa = %token.oa(), error = %e, "token upkeep failed");
            }
            if let Some(due) = token.refresh_due().await {
                next = next.min(due);
            }
        }
        failures = if failed { failures + 1 } else { 0 };
        let wait = if failed {
            Duration::from_secs(5u64 << failures.min(6))
        } else {
            (next - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_secs(1))
        };
        // Ownership moves between replicas: look again within seconds.
        let wait = if tokens.iter().any(|t| t.replicated.is_some()) {
            wait.min(Duration::from_secs(5))
        } else {
            wait
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Zalo OAuth stand-in on 127.0.0.1 that issues `A1`/`R1` valid 20 s and records when
    /// each refresh arrived.
    async fn oauth() -> (String, Arc<std::sync::Mutex<Vec<DateTime<Utc>>>>) {
        let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = arrivals.clone();
        let app = axum::Router::new().route(
            "/v4/oa/access_token",
            axum::routing::post(move || {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(Utc::now());
                    axum::Json(serde_json::json!({
                        "access_token": "A1", "refresh_token": "R1", "expires_in": "20"
                    }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, arrivals)
    }

    #[tokio::test]
    async fn a_refresh_after_a_wait_counts_the_new_expiry_from_the_request_not_from_before_the_wait(
    ) {
        let (url, arrivals) = oauth().await;
        let dir = tempfile::tempdir().unwrap();
        let settings = OaSettings {
            app_id: "app".into(),
            oa_secret_key: Secret::new("oa-key"),
            app_secret: Secret::new("app-secret"),
            token_file: dir.path().join("tokens.json"),
            initial_refresh_token: Some(Secret::new("R0")),
            initial_access_token: None,
        };
        let refresh = RefreshSettings {
            oauth_base_url: url,
            refresh_before: Duration::from_secs(14),
            timeout: Duration::from_secs(10),
        };
        let metrics = TokenMetrics::register(&Registry::new()).unwrap();
        let token = Arc::new(OaToken::new("oa", &settings, refresh, metrics).unwrap());

        // Another caller holds the token's state for a second (a Kafka write, a replica
        // catching up) while this one asks for a token that must be refreshed.
        let held = token.state.lock().await;
        let asking = tokio::spawn({
            let token = token.clone();
            async move { token.access_token().await }
        });
        let hold = Duration::from_millis(1000);
        tokio::time::sleep(hold).await;
        drop(held);
        let access = asking.await.unwrap().unwrap();
        assert_eq!(access.expose(), "A1");

        let arrived = *arrivals.lock().unwrap().first().expect("one refresh");
        let expires = token
            .state
            .lock()
            .await
            .tokens
            .as_ref()
            .and_then(|t| t.access_token_expires_at)
            .unwrap();
        let early = (arrived + ChronoDuration::seconds(20)) - expires;
        assert!(
            early < ChronoDuration::from_std(hold / 2).unwrap(),
            "the expiry is {early} earlier than 20 s after the refresh arrived: counted from \
             before the wait"
        );
    }
}
