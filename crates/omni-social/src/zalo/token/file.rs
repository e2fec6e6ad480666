//! The OA's token file: the current pair, replaced atomically and durably (temporary file,
//! fsync, rename, fsync of the directory) so a single-use refresh token is never lost.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::TokenError;

/// What the token file holds. `Debug` shows the expiry and time, never the tokens.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTokens {
    /// The OA access token.
    pub access_token: String,
    /// When it expires; unknown means "refresh before use".
    #[serde(default)]
    pub access_token_expires_at: Option<DateTime<Utc>>,
    /// The single-use refresh token.
    pub refresh_token: String,
    /// When this pair was obtained.
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for StoredTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredTokens")
            .field("access_token", &"***")
            .field("access_token_expires_at", &self.access_token_expires_at)
            .field("refresh_token", &"***")
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// One OA's token file.
#[derive(Debug, Clone)]
pub struct TokenFile {
    path: PathBuf,
}

impl TokenFile {
    /// The file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored pair, or `None` if the file does not exist yet.
    pub fn load(&self) -> Result<Option<StoredTokens>, TokenError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| TokenError::Corrupt {
                        path: self.path.clone(),
                        source,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TokenError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Replaces the stored pair durably: a crash at any point leaves the old or the new pair,
    /// never a torn file, and once this returns the new pair survives power loss.
    pub fn save(&self, tokens: &StoredTokens) -> Result<(), TokenError> {
        let io = |source| TokenError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let bytes = serde_json::to_vec_pretty(tokens).map_err(|source| TokenError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_token() {
        let tokens = StoredTokens {
            access_token: "ACCESS-SECRET-1".into(),
            access_token_expires_at: None,
            refresh_token: "REFRESH-SECRET-1".into(),
            updated_at: Utc::now(),
        };
        let shown = format!("{tokens:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("updated_at"), "{shown}");
    }
}
