//! Zalo OA token pairs shared by every replica through a compacted Kafka topic.
//!
//! A refresh token is single-use, so exactly one replica may refresh an OA: the owner of its
//! tenant's partition (DESIGN "One owner per tenant"). It writes each new pair to the tokens
//! topic (key `<tenant>/<oa>`) and waits for Kafka's acknowledgement before it uses the pair;
//! every replica follows the topic ([`SharedTokens::apply`], fed by `omni_bus::table::tail`) and
//! sends with the newest pair. The pairs survive restarts of every replica.
//!
//! Values are sealed with AES-256-GCM under `zalo.token_key` (the record key is the
//! associated data, so a value cannot be moved to another OA); clear text is written only
//! where the operator set `zalo.tokens_in_clear = true`.

use base64::Engine as _;
use omni_channel::EventSink;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

use super::token::StoredTokens;

/// How pairs are written to the topic.
#[derive(Clone)]
pub enum TokenSealing {
    /// AES-256-GCM with this key.
    Sealed(Arc<[u8; 32]>),
    /// Clear text: only where the operator said so (`zalo.tokens_in_clear`).
    Clear,
}

impl std::fmt::Debug for TokenSealing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.write_str(match self {
            TokenSealing::Sealed(_) => "Sealed",
            TokenSealing::Clear => "Clear",
        })
    }
}

/// Why a key or a stored value was refused.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// `zalo.token_key` is not 32 bytes of standard base64.
    #[error("zalo.token_key must be 32 bytes, base64-encoded (e.g. `openssl rand -base64 32`)")]
    BadKey,
    /// A stored value could not be opened (another key, a corrupt record).
    #[error("cannot open the stored token pair of {key}: {reason}")]
    Unreadable {
        /// The record key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Sealing failed (OpenSSL error).
    #[error("cannot seal the token pair of {key}: {reason}")]
    Seal {
        /// The record key.
        key: String,
        /// Why.
        reason: String,
    },
}

impl TokenSealing {
    /// Sealing with the base64 `key`.
    pub fn from_base64(key: &str) -> Result<Self, SealError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| SealError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| SealError::BadKey)?;
        Ok(Self::Sealed(Arc::new(key)))
    }

    /// The record value for `tokens` under record key `key`.
    pub fn seal(&self, key: &str, tokens: &StoredTokens) -> Result<Vec<u8>, SealError> {
        let fail = |reason: String| SealError::Seal {
            key: key.to_owned(),
            reason,
        };
        let clear = serde_json::to_vec(tokens).map_err(|e| fail(e.to_string()))?;
        let stored = match self {
            TokenSealing::Clear => Stored::Clear {
                tokens: tokens.clone(),
            },
            TokenSealing::Sealed(k) => {
                let mut nonce = [0u8; 12];
                openssl::rand::rand_bytes(&mut nonce).map_err(|e| fail(e.to_string()))?;
                let mut tag = [0u8; 16];
                let sealed = openssl::symm::encrypt_aead(
                    openssl::symm::Cipher::aes_256_gcm(),
                    &k[..],
                    Some(&nonce),
                    key.as_bytes(),
                    &clear,
                    &mut tag,
                )
                .map_err(|e| fail(e.to_string()))?;
                let b64 = base64::engine::general_purpose::STANDARD;
                Stored::Aes256Gcm {
                    nonce: b64.encode(nonce),
                    sealed: b64.encode(sealed),
                    tag: b64.encode(tag),
                }
            }
        };
        serde_json::to_vec(&stored).map_err(|e| fail(e.to_string()))
    }

    /// The pair in record value `value` under record key `key`.
    pub fn open(&self, key: &str, value: &[u8]) -> Result<StoredTokens, SealError> {
        let fail = |reason: &str| SealError::Unreadable {
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        let stored: Stored =
            serde_json::from_slice(value).map_err(|_| fail("not a token record"))?;
        match (stored, self) {
            (Stored::Clear { tokens }, _) => Ok(tokens),
            (Stored::Aes256Gcm { .. }, TokenSealing::Clear) => {
                Err(fail("sealed, and no zalo.token_key is set"))
            }
            (Stored::Aes256Gcm { nonce, sealed, tag }, TokenSealing::Sealed(k)) => {
                let b64 = base64::engine::general_purpose::STANDARD;
                let (Ok(nonce), Ok(sealed), Ok(tag)) =
                    (b64.decode(nonce), b64.decode(sealed), b64.decode(tag))
                else {
                    return Err(fail("bad base64"));
                };
                let clear = openssl::symm::decrypt_aead(
                    openssl::symm::Cipher::aes_256_gcm(),
                    &k[..],
                    Some(&nonce),
                    key.as_bytes(),
                    &sealed,
                    &tag,
                )
                .map_err(|_| fail("does not open with zalo.token_key"))?;
                serde_json::from_slice(&clear).map_err(|_| fail("not a token pair"))
            }
        }
    }
}

/// A record value on the tokens topic.
#[derive(Serialize, Deserialize)]
#[serde(tag = "alg")]
enum Stored {
    #[serde(rename = "none")]
    Clear { tokens: StoredTokens },
    #[serde(rename = "A256GCM")]
    Aes256Gcm {
        nonce: String,
        sealed: String,
        tag: String,
    },
}

/// The newest pair of every OA, as the tokens topic says, and the way to write one.
pub struct SharedTokens {
    topic: String,
    sink: Arc<dyn EventSink>,
    sealing: TokenSealing,
    pairs: Mutex<HashMap<String, StoredTokens>>,
    /// Bumped on every applied record, so a replica waiting for the owner's refresh wakes.
    changes: watch::Sender<u64>,
    /// Whether the topic has been read up to where it was at start (set by the follower).
    caught_up: Mutex<Option<watch::Receiver<bool>>>,
}

impl SharedTokens {
    /// Pairs written to and read from `topic` through `sink`.
    pub fn new(topic: impl Into<String>, sink: Arc<dyn EventSink>, sealing: TokenSealing) -> Self {
        Self {
            topic: topic.into(),
            sink,
            sealing,
            pairs: Mutex::new(HashMap::new()),
            changes: watch::Sender::new(0),
            caught_up: Mutex::new(None),
        }
    }

    /// Gives the follower's "caught up" signal: until it is true no pair is seeded or
    /// refreshed from what may be an old view (a used refresh token would be refused).
    pub fn followed(&self, caught_up: watch::Receiver<bool>) {
        *self.caught_up.lock().unwrap_or_else(|p| p.into_inner()) = Some(caught_up);
    }

    /// Waits until the topic has been read to where it was at start, at most `within`;
    /// whether it has (always, for a store nobody follows: tests).
    pub async fn read_up(&self, within: std::time::Duration) -> bool {
        let rx = self
            .caught_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(mut rx) = rx else {
            return true;
        };
        let reached = tokio::time::timeout(within, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok());
        reached
    }

    /// The record key of an OA.
    pub fn key(tenant: &str, oa: &str) -> String {
        format!("{tenant}/{oa}")
    }

    /// Applies one record read from the topic. The log's order is the truth: one key lives on
    /// one partition and only its owner writes it, and even a late write of a previous owner
    /// holds the pair Zalo issued last (its refresh consumed the one before).
    pub fn apply(&self, key: &[u8], value: Option<&[u8]>) {
        let key = String::from_utf8_lossy(key).into_owned();
        let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        match value {
            None => {
                pairs.remove(&key);
            }
            Some(v) => match self.sealing.open(&key, v) {
                Ok(tokens) => {
                    pairs.insert(key, tokens);
                }
                Err(e) => tracing::error!(error = %e, "ignoring a stored Zalo token record"),
            },
        }
        drop(pairs);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The newest pair known for `key`.
    pub fn get(&self, key: &str) -> Option<StoredTokens> {
        self.pairs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Writes `tokens` for `key` and returns once Kafka acknowledged it.
    pub async fn put(&self, key: &str, tokens: &StoredTokens) -> Result<(), String> {
        let value = self.sealing.seal(key, tokens).map_err(|e| e.to_string())?;
        self.sink
            .publish(&self.topic, key.as_bytes(), &value)
            .await
            .map_err(|e| e.to_string())?;
        self.pairs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), tokens.clone());
        Ok(())
    }

    /// Waits for the next record applied, at most `within`.
    pub async fn changed(&self, within: std::time::Duration) {
        let mut rx = self.changes.subscribe();
        let _ = tokio::time::timeout(within, rx.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn pair(access: &str) -> StoredTokens {
        StoredTokens {
            access_token: access.into(),
            access_token_expires_at: Some(Utc::now()),
            refresh_token: "r-secret".into(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn sealed_pairs_open_only_with_their_key_and_record_key() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let sealing = TokenSealing::from_base64(&key).unwrap();
        let value = sealing.seal("t/oa1", &pair("a-secret")).unwrap();
        let text = String::from_utf8(value.clone()).unwrap();
        assert!(
            !text.contains("a-secret") && !text.contains("r-secret"),
            "{text}"
        );
        assert_eq!(
            sealing.open("t/oa1", &value).unwrap().access_token,
            "a-secret"
        );
        // Moved to another OA: refused.
        assert!(sealing.open("t/oa2", &value).is_err());
        let other =
            TokenSealing::from_base64(&base64::engine::general_purpose::STANDARD.encode([8u8; 32]))
                .unwrap();
        assert!(other.open("t/oa1", &value).is_err());
        assert!(TokenSealing::Clear.open("t/oa1", &value).is_err());
        assert!(matches!(
            TokenSealing::from_base64("c2hvcnQ="),
            Err(SealError::BadKey)
        ));
    }

    #[test]
    fn clear_text_is_written_only_when_asked_for() {
        let value = TokenSealing::Clear.seal("t/oa1", &pair("a")).unwrap();
        assert!(String::from_utf8(value.clone())
            .unwrap()
            .contains("\"none\""));
        assert_eq!(
            TokenSealing::Clear
                .open("t/oa1", &value)
                .unwrap()
                .access_token,
            "a"
        );
    }
}
