//! Media that does not expire, fetched safely.
//!
//! Meta's and Zalo's attachment URLs expire within days and Twilio's may need credentials,
//! so a CRM reading an event next week would get a dead link. Channels copy each inbound
//! attachment into a media store (a directory or S3-compatible object storage) with
//! [`Media::copy_in`], and events carry the store's URL. Every download goes through the
//! [`SafeFetcher`], which refuses URLs that reach the host's own network (loopback,
//! private, link-local and cloud-metadata addresses, …), re-checks each redirect and bounds
//! size and time. Outbound attachments use the same fetcher ([`Media::read_outbound`]), and
//! read our own store's URLs directly instead of over HTTP.
//!
//! # Layout
//! - [`addr`]: the pure address classifier (which IPs may be connected to).
//! - [`fetch`]: [`SafeFetcher`], its policy, credentials and the guarded DNS resolver.
//! - [`store`]: [`MediaStore`], deterministic [`MediaKey`]s and the directory backend.
//! - [`s3`]: the S3-compatible backend over `object_store`.
//! - [`config`]: `[media]` raw config → validated [`MediaSettings`].
//! - [`error`]: [`FetchError`], [`StoreError`], [`MediaError`].
//! - here: the [`Media`] façade.

#![forbid(unsafe_code)]

pub mod addr;
pub mod config;
pub mod error;
pub mod fetch;
pub mod s3;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use addr::AllowedNetworks;
pub use config::{MediaConfig, MediaSettings, StoreSettings};
pub use error::{FetchError, MediaError, StoreError};
pub use fetch::{FetchAuth, FetchPolicy, Fetched, SafeFetcher};
pub use s3::{S3Settings, S3Store};
pub use store::{DirectoryStore, MediaKey, MediaStore};

/// Where a copied attachment now lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The store's URL, which events carry instead of the provider's.
    pub url: String,
    /// The size in bytes.
    pub size: u64,
    /// The source's Content-Type, if it sent one.
    pub content_type: Option<String>,
}

/// The fetcher and the store together: what a channel needs to copy attachments in and to
/// read a reply's attachments.
#[derive(Debug, Clone)]
pub struct Media {
    fetcher: SafeFetcher,
    store: Option<MediaStore>,
}

impl Media {
    /// Builds the fetcher and the configured store (no I/O).
    pub fn new(settings: &MediaSettings) -> Result<Self, MediaError> {
        let store = match &settings.store {
            StoreSettings::None => None,
            StoreSettings::Directory { dir, base_url } => Some(MediaStore::Directory(
                DirectoryStore::new(dir, base_url.as_deref()),
            )),
            StoreSettings::S3(s3) => Some(MediaStore::S3(S3Store::new(s3)?)),
        };
        Ok(Self::from_parts(
            SafeFetcher::new(settings.fetch.clone())?,
            store,
        ))
    }

    /// Assembles a façade from parts built elsewhere (tests, custom policies).
    pub fn from_parts(fetcher: SafeFetcher, store: Option<MediaStore>) -> Self {
        Self { fetcher, store }
    }

    /// The safe fetcher.
    pub fn fetcher(&self) -> &SafeFetcher {
        &self.fetcher
    }

    /// The store, or `None` when `[media] store = "none"` (events keep provider URLs).
    pub fn store(&self) -> Option<&MediaStore> {
        self.store.as_ref()
    }

    /// Fetches `source_url` safely and stores it under `key`. Idempotent per key: a retry
    /// overwrites the same object and returns the same URL.
    pub async fn copy_in(
        &self,
        key: &MediaKey<'_>,
        source_url: &str,
        max_bytes: u64,
        auth: Option<&FetchAuth>,
    ) -> Result<Stored, MediaError> {
        let store = self.store.as_ref().ok_or(MediaError::NoStore)?;
        let fetched = self.fetcher.fetch(source_url, max_bytes, auth).await?;
        let size = fetched.bytes.len() as u64;
        let url = store
            .put(key, fetched.bytes.into(), fetched.content_type.as_deref())
            .await?;
        Ok(Stored {
            url,
            size,
            content_type: fetched.content_type,
        })
    }

    /// Reads an outbound attachment: from our own store when the URL is one it handed out,
    /// otherwise through the safe fetcher (never an arbitrary internal address or file).
    pub async fn read_outbound(&self, url: &str, max_bytes: u64) -> Result<Vec<u8>, MediaError> {
        if let Some(store) = &self.store {
            if let Some(own) = store.get_own(url, max_bytes).await {
                return Ok(own?);
            }
        }
        Ok(self.fetcher.fetch(url, max_bytes, None).await?.bytes)
    }
}

#[cfg(test)]
mod tests;
