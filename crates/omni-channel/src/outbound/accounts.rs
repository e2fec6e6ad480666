//! The accounts a channel sends from (a Messenger page, a Zalo OA, a mailbox), found one way
//! by every sender: by the reply's tenant and `channel.account`, a missing one failing the
//! reply as `account_not_configured`.

use omni_core::TenantId;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::{FailureReason, SendError};

/// A channel's accounts by (tenant, account id), or by another key (SMS: by tenant).
pub type AccountMap<A, K = (String, String)> = HashMap<K, A>;

/// A channel's accounts, replaced whole on a config reload: replies taken from then on use the
/// new ones, a reply being sent finishes with the snapshot it started with.
pub struct SenderAccounts<A, K = (String, String)> {
    current: RwLock<Arc<AccountMap<A, K>>>,
}

impl<A, K> SenderAccounts<A, K> {
    /// Starts with `accounts`.
    pub fn new(accounts: impl Into<Arc<AccountMap<A, K>>>) -> Self {
        Self {
            current: RwLock::new(accounts.into()),
        }
    }

    /// Replaces every account (a reloaded config).
    pub fn replace(&self, accounts: impl Into<Arc<AccountMap<A, K>>>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = accounts.into();
    }

    /// The accounts as they are now, for one reply.
    pub fn snapshot(&self) -> Arc<AccountMap<A, K>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The account a reply of `tenant` goes out from, or the reply's failure as
/// `account_not_configured` with `missing` saying which account was not found.
pub fn sender_account<'a, A>(
    accounts: &'a AccountMap<A>,
    tenant: &TenantId,
    account: &str,
    missing: impl FnOnce() -> String,
) -> Result<&'a A, SendError> {
    accounts
        .get(&(tenant.as_str().to_owned(), account.to_owned()))
        .ok_or_else(|| SendError::permanent(FailureReason::AccountNotConfigured, missing()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_finds_its_tenants_account_and_fails_clearly_without_one() {
        let acme = TenantId::new("acme").unwrap();
        let other = TenantId::new("other").unwrap();
        let accounts = SenderAccounts::new(AccountMap::from([(
            ("acme".to_owned(), "page-1".to_owned()),
            7,
        )]));
        let snapshot = accounts.snapshot();
        assert_eq!(
            sender_account(&snapshot, &acme, "page-1", String::new),
            Ok(&7)
        );
        let err = sender_account(&snapshot, &other, "page-1", || "no page-1".into()).unwrap_err();
        assert_eq!(err.reason, FailureReason::AccountNotConfigured);
        assert!(!err.retryable);
        assert_eq!(err.detail, "no page-1");
        accounts.replace(AccountMap::new());
        assert!(sender_account(&accounts.snapshot(), &acme, "page-1", String::new).is_err());
        assert_eq!(snapshot.len(), 1, "a reply in flight keeps its snapshot");
    }
}
