//! The attachment store: attachment contents and each mail's original bytes, written under
//! the operator's directory so Kafka carries only their URLs.
//!
//! Layout: `<dir>/<tenant>/<event id>/<n>-<safe name>` for attachments and
//! `<dir>/<tenant>/<event id>/original.eml` for the mail as received (full body, HTML and
//! quoted history included). The event id is deterministic, so a mail published again after
//! a crash overwrites the same files instead of adding copies. URLs are `<base_url>/<tenant>/
//! <event id>/<file>` when a base URL is configured, else `file://` URLs.
//!
//! With the daemon's `[media]` store configured (a directory or S3), the same files go there
//! instead, under `<tenant>/<event id>/0-original.eml` and `<n>-<safe name>`, with the media
//! store's URLs.

use omni_core::{Attachment, EventId, TenantId};
use std::path::{Path, PathBuf};

use crate::error::EmailError;
use crate::parse::MailAttachment;
use crate::settings::AttachmentStore;

/// The name of a mail's original bytes in its directory.
pub const ORIGINAL: &str = "original.eml";

/// Writes attachments of one mail.
pub struct Store<'a> {
    settings: &'a AttachmentStore,
    media: Option<&'a omni_media::MediaStore>,
}

impl<'a> Store<'a> {
    /// A store over `settings`.
    pub fn new(settings: &'a AttachmentStore) -> Self {
        Self {
            settings,
            media: None,
        }
    }

    /// Writes into the daemon's media store instead, when there is one.
    pub fn in_media_store(mut self, media: Option<&'a omni_media::MediaStore>) -> Self {
        self.media = media;
        self
    }

    /// The directory of one mail's files.
    fn mail_dir(&self, tenant: &TenantId, event: EventId) -> PathBuf {
        self.settings
            .dir
            .join(tenant.as_str())
            .join(event.to_string())
    }

    /// Stores the original mail and its attachments; returns the attachments' metadata for
    /// the event. An attachment over the size limit is listed with the original mail's URL.
    pub async fn put(
        &self,
        tenant: &TenantId,
        event: EventId,
        raw: &[u8],
        attachments: &[MailAttachment],
    ) -> Result<Vec<Attachment>, EmailError> {
        if let Some(media) = self.media {
            return self.put_media(media, tenant, event, raw, attachments).await;
        }
        let dir = self.mail_dir(tenant, event);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|source| EmailError::Store {
                path: dir.display().to_string(),
                source,
            })?;
        write_atomic(&dir, ORIGINAL, raw).await?;
        let mut out = Vec::with_capacity(attachments.len());
        for (n, a) in attachments.iter().enumerate() {
            let size = a.content.len() as u64;
            let file = if size <= self.settings.max_attachment_bytes {
                let file = format!("{}-{}", n + 1, safe_name(a.name.as_deref()));
                write_atomic(&dir, &file, &a.content).await?;
                file
            } else {
                ORIGINAL.to_owned()
            };
            out.push(Attachment {
                url: self.url(tenant, event, &dir, &file),
                content_type: Some(a.content_type.clone()),
                name: a.name.clone(),
                size: Some(size),
            });
        }
        Ok(out)
    }

    /// [`Store::put`] into the media store.
    async fn put_media(
        &self,
        media: &omni_media::MediaStore,
        tenant: &TenantId,
        event: EventId,
        raw: &[u8],
        attachments: &[MailAttachment],
    ) -> Result<Vec<Attachment>, EmailError> {
        let event_id = event.to_string();
        let original = media
            .put(
                &omni_media::MediaKey {
                    tenant: tenant.as_str(),
                    event_id: &event_id,
                    index: 0,
                    name: Some(ORIGINAL),
                },
                bytes::Bytes::copy_from_slice(raw),
                Some("message/rfc822"),
            )
            .await
            .map_err(|e| EmailError::MediaStore(Box::new(e)))?;
        let mut out = Vec::with_capacity(attachments.len());
        for (n, a) in attachments.iter().enumerate() {
            let size = a.content.len() as u64;
            let url = if size <= self.settings.max_attachment_bytes {
                media
                    .put(
                        &omni_media::MediaKey {
                            tenant: tenant.as_str(),
                            event_id: &event_id,
                            index: n + 1,
                            name: a.name.as_deref(),
                        },
                        bytes::Bytes::copy_from_slice(&a.content),
                        Some(&a.content_type),
                    )
                    .await
                    .map_err(|e| EmailError::MediaStore(Box::new(e)))?
            } else {
                original.clone()
            };
            out.push(Attachment {
                url,
                content_type: Some(a.content_type.clone()),
                name: a.name.clone(),
                size: Some(size),
            });
        }
        Ok(out)
    }

    fn url(&self, tenant: &TenantId, event: EventId, dir: &Path, file: &str) -> String {
        match &self.settings.base_url {
            Some(base) => format!("{}/{tenant}/{event}/{file}", base.trim_end_matches('/')),
            None => {
                let path = std::path::absolute(dir.join(file)).unwrap_or_else(|_| dir.join(file));
                format!("file://{}", path.display())
            }
        }
    }

    /// The local path of a URL this store handed out (`file://` under the store's directory,
    /// or under the base URL), for the sender to attach stored files. `None` for anything
    /// else, so a reply can never attach an arbitrary file of the host.
    pub fn local_path(&self, url: &str) -> Option<PathBuf> {
        let relative = if let Some(path) = url.strip_prefix("file://") {
            let root = std::path::absolute(&self.settings.dir).ok()?;
            Path::new(path).strip_prefix(&root).ok()?.to_path_buf()
        } else {
            let base = self.settings.base_url.as_deref()?.trim_end_matches('/');
            PathBuf::from(url.strip_prefix(base)?.strip_prefix('/')?)
        };
        // Only plain names: no `..`, no root, no prefix.
        if relative
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
            && relative.components().count() == 3
        {
            Some(self.settings.dir.join(relative))
        } else {
            None
        }
    }
}

/// Writes `content` as `dir/name` through a temporary file, so a reader never sees half a file.
async fn write_atomic(dir: &Path, name: &str, content: &[u8]) -> Result<(), EmailError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let err = |source| EmailError::Store {
        path: path.display().to_string(),
        source,
    };
    tokio::fs::write(&tmp, content).await.map_err(err)?;
    tokio::fs::rename(&tmp, &path).await.map_err(err)
}

/// A file-system and URL safe version of a sender-given name (the media store's rule), never
/// the original mail's own name.
pub(crate) fn safe_name(name: Option<&str>) -> String {
    match omni_media::store::safe_name(name) {
        safe if safe == ORIGINAL => "attachment".to_owned(),
        safe => safe,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe() {
        assert_eq!(safe_name(Some("hóa đơn.pdf")), "h_a___n.pdf");
        assert_eq!(safe_name(Some("../../etc/passwd")), "_.._etc_passwd");
        assert_eq!(safe_name(Some("...")), "attachment");
        assert_eq!(safe_name(None), "attachment");
        let long = format!("{}.xlsx", "a".repeat(200));
        let s = safe_name(Some(&long));
        assert!(s.len() <= 80 && s.ends_with(".xlsx"), "{s}");
    }

    /// A 3-byte attachment named `name` and a 7-byte one over the tests' 4-byte limit.
    fn small_and_big(name: &str) -> [MailAttachment; 2] {
        [
            MailAttachment {
                name: Some(name.into()),
                content_type: "text/plain".into(),
                content: b"abc".to_vec(),
            },
            MailAttachment {
                name: Some("big.bin".into()),
                content_type: "application/octet-stream".into(),
                content: b"too big".to_vec(),
            },
        ]
    }

    #[tokio::test]
    async fn stores_files_and_maps_urls_back_only_inside_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let settings = AttachmentStore {
            dir: dir.path().to_path_buf(),
            base_url: None,
            max_attachment_bytes: 4,
        };
        let store = Store::new(&settings);
        let tenant = TenantId::new("acme").unwrap();
        let event = EventId::new_random();
        let list = store
            .put(&tenant, event, b"raw mail", &small_and_big("a.txt"))
            .await
            .unwrap();
        assert!(list[0].url.starts_with("file:///"), "{}", list[0].url);
        assert!(list[0].url.ends_with("/1-a.txt"));
        assert!(list[1].url.ends_with("/original.eml"));
        assert_eq!(list[1].size, Some(7));
        let path = store.local_path(&list[0].url).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"abc");
        assert!(store.local_path("file:///etc/passwd").is_none());
        assert!(store
            .local_path(&format!("file://{}/acme/../../x/y", dir.path().display()))
            .is_none());

        let with_base = AttachmentStore {
            base_url: Some("https://files.example.vn/mail/".into()),
            ..settings.clone()
        };
        let store = Store::new(&with_base);
        let url = store.url(&tenant, event, dir.path(), "1-a.txt");
        assert_eq!(
            url,
            format!("https://files.example.vn/mail/acme/{event}/1-a.txt")
        );
        assert_eq!(
            store.local_path(&url).unwrap(),
            dir.path()
                .join("acme")
                .join(event.to_string())
                .join("1-a.txt")
        );
        assert!(store
            .local_path("https://files.example.vn/mail/acme/../x")
            .is_none());
    }

    /// With the daemon's media store (S3, a real moto server), the original and each
    /// attachment go there; an oversized attachment points at the stored original; the
    /// URLs serve the bytes with their types.
    #[tokio::test]
    async fn with_a_media_store_originals_and_attachments_go_to_s3() {
        let moto = omni_media::testing::Moto::start(&[]).await;
        moto.create_bucket("mail").await;
        let media =
            omni_media::MediaStore::S3(omni_media::S3Store::new(&moto.settings("mail")).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let settings = AttachmentStore {
            dir: dir.path().to_path_buf(),
            base_url: None,
            max_attachment_bytes: 4,
        };
        let tenant = TenantId::new("acme").unwrap();
        let event = EventId::new_random();
        let list = Store::new(&settings)
            .in_media_store(Some(&media))
            .put(&tenant, event, b"raw mail", &small_and_big("hóa đơn.txt"))
            .await
            .unwrap();
        let base = format!("{}/mail/acme/{event}", moto.endpoint);
        assert!(
            list[0].url.starts_with(&format!("{base}/1-")),
            "{}",
            list[0].url
        );
        assert_eq!(list[0].name.as_deref(), Some("hóa đơn.txt"));
        assert_eq!(list[1].url, format!("{base}/0-original.eml"));
        let get = |url: String| async move {
            let r = reqwest::get(url).await.unwrap();
            let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
            (ct, r.bytes().await.unwrap().to_vec())
        };
        assert_eq!(
            get(list[0].url.clone()).await,
            ("text/plain".to_owned(), b"abc".to_vec())
        );
        assert_eq!(
            get(list[1].url.clone()).await,
            ("message/rfc822".to_owned(), b"raw mail".to_vec())
        );
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "nothing written to the mailbox's directory"
        );
        // A reply attaching it reads it back from the store, not over HTTP.
        let own = media.get_own(&list[0].url, 1024).await.unwrap().unwrap();
        assert_eq!(own, b"abc");
    }
}
