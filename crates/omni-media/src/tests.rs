//! The S3 backend against a real local S3-compatible server (moto), and `copy_in` end to end.
//!
//! moto comes from PyPI (`moto[server]`), installed into the repo's `.venv` by `make deps`;
//! these tests fail, never skip, when it is missing.

use super::*;
use crate::fetch::tests::{local_policy, TestServer};
use crate::testing::Moto;
use bytes::Bytes;

fn key(index: usize, name: Option<&str>) -> MediaKey<'_> {
    MediaKey {
        tenant: "acme",
        event_id: "0190b6f0-7c1e-7000-8000-000000000001",
        index,
        name,
    }
}

#[tokio::test]
async fn s3_store_puts_objects_readable_by_url_and_by_get_own() {
    let moto = Moto::start(&[]).await;
    moto.create_bucket("media").await;
    let store = MediaStore::S3(S3Store::new(&moto.settings("media")).unwrap());

    let url = store
        .put(
            &key(0, Some("photo 1.jpg")),
            Bytes::from_static(b"JPEGDATA"),
            Some("image/jpeg"),
        )
        .await
        .unwrap();
    assert_eq!(
        url,
        format!(
            "{}/media/acme/0190b6f0-7c1e-7000-8000-000000000001/0-photo_1.jpg",
            moto.endpoint
        )
    );

    // What a CRM does next week: a plain GET of the URL.
    let response = reqwest::get(&url).await.unwrap();
    assert!(response.status().is_success(), "{response:?}");
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "image/jpeg"
    );
    assert_eq!(response.bytes().await.unwrap(), "JPEGDATA");

    // What a reply attaching our own URL does: read it directly.
    assert_eq!(
        store.get_own(&url, 100).await.unwrap().unwrap(),
        b"JPEGDATA"
    );
    assert!(matches!(
        store.get_own(&url, 7).await,
        Some(Err(StoreError::TooLarge { limit: 7 }))
    ));
    assert!(store
        .get_own("https://elsewhere.example.com/media/a/b/c", 100)
        .await
        .is_none());

    // Same key again: overwritten, same URL.
    let again = store
        .put(
            &key(0, Some("photo 1.jpg")),
            Bytes::from_static(b"NEW"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(again, url);
    assert_eq!(store.get_own(&url, 100).await.unwrap().unwrap(), b"NEW");
}

#[tokio::test]
async fn s3_store_reports_a_missing_bucket_and_wrong_credentials_clearly() {
    let moto = Moto::start(&[]).await;
    let store = MediaStore::S3(S3Store::new(&moto.settings("nobucket")).unwrap());
    let err = store
        .put(&key(0, None), Bytes::from_static(b"x"), None)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::S3 { op: "put", .. }), "{err:?}");
    assert!(text.contains("NoSuchBucket"), "{text}");
    assert!(text.contains("acme/"), "{text}");

    // A server that checks credentials (moto with IAM auth on) refuses an unknown key.
    let strict = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]).await;
    let store = MediaStore::S3(S3Store::new(&strict.settings("media")).unwrap());
    let err = store
        .put(&key(0, None), Bytes::from_static(b"x"), None)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::S3 { .. }), "{err:?}");
    assert!(
        text.contains("InvalidAccessKeyId") || text.contains("403"),
        "{text}"
    );
    assert!(!text.contains("test-secret"), "{text}");
}

#[tokio::test]
async fn copy_in_fetches_safely_and_stores_in_s3() {
    let source = TestServer::start().await;
    let moto = Moto::start(&[]).await;
    moto.create_bucket("media").await;
    let media = Media::from_parts(
        SafeFetcher::new(local_policy()).unwrap(),
        Some(MediaStore::S3(
            S3Store::new(&moto.settings("media")).unwrap(),
        )),
    );
    let stored = media
        .copy_in(&key(1, Some("a.png")), &source.url("/ok"), 1024, None)
        .await
        .unwrap();
    assert_eq!(stored.size, 7);
    assert_eq!(stored.content_type.as_deref(), Some("image/png"));
    let response = reqwest::get(&stored.url).await.unwrap();
    assert_eq!(response.headers().get("content-type").unwrap(), "image/png");
    assert_eq!(response.bytes().await.unwrap(), "PNGDATA");
    // A reply attaching the stored URL reads it from the store, not over HTTP.
    assert_eq!(
        media.read_outbound(&stored.url, 1024).await.unwrap(),
        b"PNGDATA"
    );
}

#[tokio::test]
async fn copy_in_to_a_directory_and_refusals_keep_their_reason() {
    let source = TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let settings = MediaConfig {
        store: config::StoreKind::Directory,
        dir: Some(tmp.path().to_path_buf()),
        base_url: Some("https://media.example.com".into()),
        ..MediaConfig::default()
    }
    .validate()
    .unwrap();
    // The default policy: loopback refused, even for a copy.
    let media = Media::new(&settings).unwrap();
    let err = media
        .copy_in(&key(0, None), &source.url("/ok"), 1024, None)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "forbidden", "{err}");
    assert!(!err.is_retryable());
    assert!(source.hits().is_empty());
    // Outbound: an internal URL is refused, our own URL is read from the directory.
    let err = media
        .read_outbound("http://169.254.169.254/latest/meta-data/", 1024)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "forbidden", "{err}");

    let media = Media::from_parts(
        SafeFetcher::new(local_policy()).unwrap(),
        media.store().cloned(),
    );
    let stored = media
        .copy_in(&key(0, Some("x.png")), &source.url("/ok"), 1024, None)
        .await
        .unwrap();
    assert_eq!(
        stored.url,
        "https://media.example.com/acme/0190b6f0-7c1e-7000-8000-000000000001/0-x.png"
    );
    assert_eq!(
        media.read_outbound(&stored.url, 1024).await.unwrap(),
        b"PNGDATA"
    );
    let err = media
        .copy_in(&key(0, None), &source.url("/big-len"), 10, None)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "too_large", "{err}");
}

#[tokio::test]
async fn copy_in_without_a_store_is_refused() {
    let media = Media::new(&MediaConfig::default().validate().unwrap()).unwrap();
    let err = media
        .copy_in(&key(0, None), "https://example.com/a", 10, None)
        .await
        .unwrap_err();
    assert!(matches!(err, MediaError::NoStore), "{err:?}");
}
