//! The token keepers of every OA a config names, kept fresh by one upkeep loop. A reload
//! keeps the keepers of OAs whose settings did not change (their tokens stay in memory) and
//! restarts the loop over the new set.

use omni_core::TenantId;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

use super::shared::SharedTokens;
use super::token::{keep_fresh, OaToken, RefreshSettings, Replicated, TokenMetrics};
use super::{OaSettings, ZaloTenant};

/// Token keepers by (tenant, OA id), with the settings each was built from.
pub type Keepers = HashMap<(String, String), (OaSettings, Arc<OaToken>)>;

/// Every OA's token keeper and the loop refreshing them.
pub struct TokenUpkeep {
    refresh: RefreshSettings,
    metrics: TokenMetrics,
    keepers: Keepers,
    /// Stops the upkeep loop in force (at its next wait: a refresh is never cut short).
    upkeep: Option<Arc<watch::Sender<bool>>>,
    stop: watch::Receiver<bool>,
    /// The pairs shared between replicas, and what this one owns (who refreshes).
    shared: Option<(Arc<SharedTokens>, omni_channel::Ownership)>,
}

fn same_oa(a: &OaSettings, b: &OaSettings) -> bool {
    a.app_id == b.app_id
        && a.app_secret == b.app_secret
        && a.token_file == b.token_file
        && a.initial_refresh_token == b.initial_refresh_token
        && a.initial_access_token == b.initial_access_token
}

impl TokenUpkeep {
    /// No keepers yet; upkeep loops end when `stop` turns true.
    pub fn new(
        refresh: RefreshSettings,
        metrics: TokenMetrics,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            refresh,
            metrics,
            keepers: HashMap::new(),
            upkeep: None,
            stop,
            shared: None,
        }
    }

    /// Shares every OA's pair through `store`; only the owner of a tenant refreshes its OAs.
    #[must_use]
    pub fn shared(mut self, store: Arc<SharedTokens>, ownership: omni_channel::Ownership) -> Self {
        self.shared = Some((store, ownership));
        self
    }

    /// The keepers for `tenants`, reusing those of unchanged OAs. Changes nothing yet; fails
    /// only when a new keeper's HTTP client cannot be built.
    pub fn prepare(&self, tenants: &[(TenantId, ZaloTenant)]) -> Result<Keepers, reqwest::Error> {
        let mut next = HashMap::new();
        for (tenant, zalo) in tenants {
            for (oa, settings) in &zalo.oas {
                let key = (tenant.as_str().to_owned(), oa.clone());
                let keeper = match self.keepers.get(&key) {
                    Some((old, keeper)) if same_oa(old, settings) => keeper.clone(),
                    _ => {
                        let keeper =
                            OaToken::new(oa, settings, self.refresh.clone(), self.metrics.clone())?;
                        Arc::new(match &self.shared {
                            Some((store, ownership)) => keeper.replicated(Replicated {
                                store: store.clone(),
                                ownership: ownership.clone(),
                                tenant: tenant.as_str().to_owned(),
                            }),
                            None => keeper,
                        })
                    }
                };
                next.insert(key, (settings.clone(), keeper));
            }
        }
        Ok(next)
    }

    /// Makes `keepers` the ones kept fresh and returns them for the sender.
    pub fn commit(&mut self, keepers: Keepers) -> HashMap<(String, String), Arc<OaToken>> {
        for (tenant, oa) in self.keepers.keys() {
            let still = keepers.keys().any(|(_, o)| o == oa);
            if !still {
                let _ = self.metrics.expires_at.remove_label_values(&[oa]);
                tracing::info!(tenant = %tenant, oa = %oa, "Zalo OA removed: its token is no longer refreshed");
            }
        }
        self.keepers = keepers;
        if let Some(previous) = self.upkeep.take() {
            let _ = previous.send(true);
        }
        let tokens: HashMap<_, _> = self
            .keepers
            .iter()
            .map(|(k, (_, keeper))| (k.clone(), keeper.clone()))
            .collect();
        if !tokens.is_empty() {
            let (tx, rx) = watch::channel(false);
            let tx = Arc::new(tx);
            self.upkeep = Some(tx.clone());
            let mut stop = self.stop.clone();
            let list = tokens.values().cloned().collect();
            tokio::spawn(async move {
                let upkeep = keep_fresh(list, rx);
                tokio::pin!(upkeep);
                tokio::select! {
                    () = &mut upkeep => return,
                    _ = stop.wait_for(|s| *s) => {}
                }
                // Shutting down: let a refresh in progress reach the token file.
                let _ = tx.send(true);
                upkeep.await;
            });
        }
        tokens
    }
}
