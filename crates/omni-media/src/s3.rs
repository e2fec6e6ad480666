//! The S3-compatible backend: objects under the same keys as the directory store, written
//! with their Content-Type, and URLs formed from a public base URL (a CDN, or the bucket's
//! own URL) rather than signed, so they never expire.
//!
//! Built on `object_store` with only its S3 protocol and reqwest connector: TLS is the
//! workspace's native-tls, and SigV4's SHA-256 and HMAC come from `Sha2Crypto` over the
//! `sha2`/`hmac` crates the webhook checks already use, so no second TLS or crypto stack is
//! compiled in.

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{
    CryptoProvider, DigestAlgorithm, DigestContext, HmacContext, Signer, SigningAlgorithm,
};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, ClientOptions, GetOptions, ObjectStore, PutOptions, RetryConfig,
};
use omni_core::Secret;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{MediaError, StoreError};
use crate::fetch::error_chain;
use crate::store::own_key_shape;

/// Typed S3 settings (see [`crate::config::S3Config`] for the operator's view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// The bucket objects are written to.
    pub bucket: String,
    /// The region signed into requests (`us-east-1` suits most S3-compatible servers).
    pub region: String,
    /// An S3-compatible server's URL; `None` for AWS itself.
    pub endpoint: Option<String>,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key, never logged.
    pub secret_access_key: Secret,
    /// Allows a plain-http endpoint (a local test server); off for production.
    pub allow_http: bool,
    /// `https://<bucket>.<endpoint>` addressing instead of `<endpoint>/<bucket>`.
    pub virtual_hosted_style: bool,
    /// The base of the URLs events carry, without a trailing slash: `<base>/<key>` must
    /// serve the object (a CDN, or a public bucket).
    pub public_base_url: String,
    /// Bound on one request to the store.
    pub timeout: Duration,
}

impl S3Settings {
    /// The default public base URL: `<endpoint>/<bucket>` (path style), the endpoint itself
    /// (virtual-hosted style, where the endpoint names the bucket), or AWS's bucket URL.
    pub fn default_public_base_url(
        bucket: &str,
        region: &str,
        endpoint: Option<&str>,
        virtual_hosted_style: bool,
    ) -> String {
        match endpoint.map(|e| e.trim_end_matches('/')) {
            Some(endpoint) if virtual_hosted_style => endpoint.to_owned(),
            Some(endpoint) => format!("{endpoint}/{bucket}"),
            None => format!("https://{bucket}.s3.{region}.amazonaws.com"),
        }
    }
}

/// A bucket of media objects.
#[derive(Debug, Clone)]
pub struct S3Store {
    store: Arc<AmazonS3>,
    public_base_url: String,
}

impl S3Store {
    /// Builds the client (no I/O: a wrong key or a missing bucket shows at the first put).
    pub fn new(settings: &S3Settings) -> Result<Self, MediaError> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_access_key_id(&settings.access_key_id)
            .with_secret_access_key(settings.secret_access_key.expose())
            .with_virtual_hosted_style_request(settings.virtual_hosted_style)
            .with_crypto_provider(Arc::new(Sha2Crypto))
            // The whole client's options: `allow_http` set on the builder before this would be
            // replaced by them.
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(settings.allow_http)
                    .with_timeout(settings.timeout)
                    .with_connect_timeout(settings.timeout),
            )
            // A few quick retries: the caller retries the whole copy on its own schedule.
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: settings.timeout,
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let store = builder.build().map_err(|e| MediaError::Client {
            what: "s3",
            detail: error_chain(&e),
        })?;
        Ok(Self {
            store: Arc::new(store),
            public_base_url: settings.public_base_url.trim_end_matches('/').to_owned(),
        })
    }

    pub(crate) async fn put(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: Option<&str>,
    ) -> Result<String, StoreError> {
        let mut attributes = Attributes::new();
        if let Some(ct) = content_type {
            attributes.insert(Attribute::ContentType, ct.to_owned().into());
        }
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        self.store
            .put_opts(&ObjectPath::from(key), bytes.into(), options)
            .await
            .map_err(|source| StoreError::S3 {
                op: "put",
                key: key.to_owned(),
                source,
            })?;
        Ok(format!("{}/{key}", self.public_base_url))
    }

    /// The key behind a URL this store handed out, or `None`.
    pub(crate) fn own_key(&self, url: &str) -> Option<String> {
        let key = url.strip_prefix(&self.public_base_url)?.strip_prefix('/')?;
        own_key_shape(key).then(|| key.to_owned())
    }

    pub(crate) async fn get(&self, key: &str, max_bytes: u64) -> Result<Vec<u8>, StoreError> {
        let err = |source| StoreError::S3 {
            op: "get",
            key: key.to_owned(),
            source,
        };
        let result = self
            .store
            .get_opts(&ObjectPath::from(key), GetOptions::default())
            .await
            .map_err(err)?;
        if result.meta.size > max_bytes {
            return Err(StoreError::TooLarge { limit: max_bytes });
        }
        Ok(result.bytes().await.map_err(err)?.to_vec())
    }
}

/// SigV4's primitives over `sha2`/`hmac`. RSA signing (only Google Cloud needs it) is not
/// offered.
#[derive(Debug)]
struct Sha2Crypto;

impl CryptoProvider for Sha2Crypto {
    fn digest(&self, algorithm: DigestAlgorithm) -> object_store::Result<Box<dyn DigestContext>> {
        match algorithm {
            DigestAlgorithm::Sha256 => Ok(Box::new(Sha256Digest {
                hasher: sha2::Sha256::default(),
                out: Vec::new(),
            })),
            _ => Err(unsupported("digest algorithm")),
        }
    }

    fn hmac(
        &self,
        algorithm: DigestAlgorithm,
        secret: &[u8],
    ) -> object_store::Result<Box<dyn HmacContext>> {
        use hmac::Mac;
        match algorithm {
            DigestAlgorithm::Sha256 => {
                // HMAC takes keys of any length; this cannot fail.
                let mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret)
                    .map_err(|_| unsupported("hmac key"))?;
                Ok(Box::new(Sha256Hmac {
                    mac: Some(mac),
                    out: Vec::new(),
                }))
            }
            _ => Err(unsupported("hmac algorithm")),
        }
    }

    fn sign(
        &self,
        _algorithm: SigningAlgorithm,
        _pem: &[u8],
    ) -> object_store::Result<Box<dyn Signer>> {
        Err(unsupported("rsa signing"))
    }
}

fn unsupported(what: &str) -> object_store::Error {
    object_store::Error::NotSupported {
        source: format!("{what} is not supported by the media store's crypto provider").into(),
    }
}

struct Sha256Digest {
    hasher: sha2::Sha256,
    out: Vec<u8>,
}

impl DigestContext for Sha256Digest {
    fn update(&mut self, data: &[u8]) {
        sha2::Digest::update(&mut self.hasher, data);
    }

    fn finish(&mut self) -> object_store::Result<&[u8]> {
        let hasher = std::mem::take(&mut self.hasher);
        self.out = sha2::Digest::finalize(hasher).to_vec();
        Ok(&self.out)
    }
}

struct Sha256Hmac {
    /// Taken by `finish`, after which `update` is a no-op (object_store never does that).
    mac: Option<hmac::Hmac<sha2::Sha256>>,
    out: Vec<u8>,
}

impl HmacContext for Sha256Hmac {
    fn update(&mut self, data: &[u8]) {
        if let Some(mac) = &mut self.mac {
            hmac::Mac::update(mac, data);
        }
    }

    fn finish(&mut self) -> object_store::Result<&[u8]> {
        if let Some(mac) = self.mac.take() {
            self.out = hmac::Mac::finalize(mac).into_bytes().to_vec();
        }
        Ok(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn crypto_provider_matches_known_vectors() {
        let mut d = Sha2Crypto.digest(DigestAlgorithm::Sha256).unwrap();
        d.update(b"abc");
        assert_eq!(
            hex(d.finish().unwrap()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // RFC 4231 test case 2.
        let mut h = Sha2Crypto.hmac(DigestAlgorithm::Sha256, b"Jefe").unwrap();
        h.update(b"what do ya want ");
        h.update(b"for nothing?");
        assert_eq!(
            hex(h.finish().unwrap()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn public_base_url_defaults_follow_the_addressing_style() {
        let f = S3Settings::default_public_base_url;
        assert_eq!(
            f("m", "us-east-1", Some("http://127.0.0.1:9000/"), false),
            "http://127.0.0.1:9000/m"
        );
        assert_eq!(
            f("m", "eu-west-1", Some("https://m.s3.example.com"), true),
            "https://m.s3.example.com"
        );
        assert_eq!(
            f("m", "eu-west-1", None, false),
            "https://m.s3.eu-west-1.amazonaws.com"
        );
    }

    #[test]
    fn own_keys_are_only_plain_keys_under_the_public_base() {
        let store = S3Store::new(&S3Settings {
            bucket: "m".into(),
            region: "us-east-1".into(),
            endpoint: Some("http://127.0.0.1:1".into()),
            access_key_id: "k".into(),
            secret_access_key: Secret::new("s"),
            allow_http: true,
            virtual_hosted_style: false,
            public_base_url: "https://cdn.example.com/media".into(),
            timeout: Duration::from_secs(1),
        })
        .unwrap();
        assert_eq!(
            store
                .own_key("https://cdn.example.com/media/acme/e1/0-a.png")
                .as_deref(),
            Some("acme/e1/0-a.png")
        );
        for url in [
            "https://cdn.example.com/media/acme/../0-a.png",
            "https://cdn.example.com/media/acme/e1/0-a.png/x",
            "https://cdn.example.com/mediax/acme/e1/0-a.png",
            "https://cdn.example.com/media/acme/e1/0-a.png?sig=1",
            "https://evil.example.com/media/acme/e1/0-a.png",
        ] {
            assert_eq!(store.own_key(url), None, "{url}");
        }
    }
}
