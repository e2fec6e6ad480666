//! The media store: where copied attachments live and the URLs events carry for them.
//!
//! Keys are deterministic, `<tenant>/<event id>/<n>-<safe name>`, so an event published
//! again after a crash overwrites its objects instead of adding copies. Two backends share
//! them: a local directory (the e-mail channel's attachment store, generalised) and
//! S3-compatible object storage ([`crate::s3`]). [`MediaStore::get_own`] maps a URL back
//! to its object only when this store handed it out, so an outbound attachment that points
//! at our own store is read directly, and a hostile URL can never name another file.

use bytes::Bytes;
use std::path::{Component, Path, PathBuf};
use tokio::io::AsyncReadExt;

use crate::error::StoreError;
use crate::s3::S3Store;

/// Longest sanitised file name kept, in bytes.
const MAX_NAME: usize = 80;

/// Where one attachment of one event is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaKey<'a> {
    /// The tenant; a plain path segment (letters, digits, `.`, `-`, `_`).
    pub tenant: &'a str,
    /// The event's id, deterministic per provider message; a plain path segment.
    pub event_id: &'a str,
    /// The attachment's position in the event, so two attachments never collide.
    pub index: usize,
    /// The sender-given file name, sanitised into the key; `attachment` when absent.
    pub name: Option<&'a str>,
}

impl MediaKey<'_> {
    /// The object key, `<tenant>/<event id>/<index>-<safe name>`. Fails when the tenant or
    /// the event id is not a plain segment (they are ids, never sanitised silently).
    pub fn path(&self) -> Result<String, StoreError> {
        for part in [self.tenant, self.event_id] {
            if !plain_segment(part) {
                return Err(StoreError::BadKey {
                    part: part.to_owned(),
                });
            }
        }
        Ok(format!(
            "{}/{}/{}-{}",
            self.tenant,
            self.event_id,
            self.index,
            safe_name(self.name)
        ))
    }
}

/// A file-system and URL safe version of a sender-given name: ASCII letters, digits, `.`,
/// `-`, `_`; anything else (`/`, control characters, spaces, non-ASCII) becomes `_`; no
/// leading dot (so never `..`); at most 80 bytes, keeping a short extension.
pub fn safe_name(name: Option<&str>) -> String {
    let name = name.unwrap_or("attachment");
    let mut safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = safe.trim_start_matches('.');
    if trimmed.len() != safe.len() {
        safe = trimmed.to_owned();
    }
    if safe.len() > MAX_NAME {
        let ext = safe
            .rsplit_once('.')
            .map(|(_, e)| e.to_owned())
            .filter(|e| !e.is_empty() && e.len() <= 10);
        safe.truncate(MAX_NAME - ext.as_ref().map_or(0, |e| e.len() + 1));
        if let Some(ext) = ext {
            safe.push('.');
            safe.push_str(&ext);
        }
    }
    if safe.is_empty() {
        "attachment".to_owned()
    } else {
        safe
    }
}

/// Whether `s` is one plain key segment: non-empty, at most 200 bytes, only ASCII letters,
/// digits, `.`, `-`, `_`, and not starting with a dot (so neither `.` nor `..`).
pub(crate) fn plain_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Whether `key` is exactly three plain segments, the shape [`MediaKey::path`] produces.
pub(crate) fn own_key_shape(key: &str) -> bool {
    let parts: Vec<&str> = key.split('/').collect();
    parts.len() == 3 && parts.iter().all(|p| plain_segment(p))
}

/// Where copied media is kept.
#[derive(Debug, Clone)]
pub enum MediaStore {
    /// A local directory, served by the operator's web server or read as `file://`.
    Directory(DirectoryStore),
    /// S3-compatible object storage.
    S3(S3Store),
}

impl MediaStore {
    /// Stores `bytes` under `key` (overwriting an earlier copy) and returns the URL events
    /// carry. The S3 backend records `content_type`; a directory leaves it to the web server.
    pub async fn put(
        &self,
        key: &MediaKey<'_>,
        bytes: Bytes,
        content_type: Option<&str>,
    ) -> Result<String, StoreError> {
        let key = key.path()?;
        match self {
            Self::Directory(d) => d.put(&key, &bytes).await,
            Self::S3(s) => s.put(&key, bytes, content_type).await,
        }
    }

    /// Reads an object by a URL this store handed out. `None` when the URL is not one of
    /// ours (then the caller fetches it safely over HTTP); `Some(Err)` when it is ours but
    /// missing, unreadable or larger than `max_bytes`.
    pub async fn get_own(&self, url: &str, max_bytes: u64) -> Option<Result<Vec<u8>, StoreError>> {
        match self {
            Self::Directory(d) => {
                let path = d.own_path(url)?;
                Some(read_limited(&path, max_bytes).await)
            }
            Self::S3(s) => {
                let key = s.own_key(url)?;
                Some(s.get(&key, max_bytes).await)
            }
        }
    }
}

/// A directory of media files: `<dir>/<key>`, URLs `<base_url>/<key>` or `file://`.
#[derive(Debug, Clone)]
pub struct DirectoryStore {
    /// The directory, made absolute at construction so `file://` URLs are stable.
    dir: PathBuf,
    /// Where the operator serves `dir`, without a trailing slash.
    base_url: Option<String>,
}

impl DirectoryStore {
    /// A store writing under `dir`; `base_url` is where a web server serves it (else URLs
    /// are `file://`, readable only on this host).
    pub fn new(dir: impl Into<PathBuf>, base_url: Option<&str>) -> Self {
        let dir = dir.into();
        Self {
            dir: std::path::absolute(&dir).unwrap_or(dir),
            base_url: base_url.map(|b| b.trim_end_matches('/').to_owned()),
        }
    }

    /// The directory written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn put(&self, key: &str, bytes: &[u8]) -> Result<String, StoreError> {
        let path = self.dir.join(key);
        let parent = path.parent().unwrap_or(&self.dir);
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|source| io_error(parent, source))?;
        write_atomic(&path, bytes).await?;
        Ok(self.url(key))
    }

    fn url(&self, key: &str) -> String {
        match &self.base_url {
            Some(base) => format!("{base}/{key}"),
            None => format!("file://{}", self.dir.join(key).display()),
        }
    }

    /// The file behind a URL this store handed out, or `None`.
    fn own_path(&self, url: &str) -> Option<PathBuf> {
        let key = if let Some(path) = url.strip_prefix("file://") {
            let relative = Path::new(path).strip_prefix(&self.dir).ok()?;
            // Components, not strings: `a//b` or `./a` never pass as a key.
            let parts: Vec<&str> = relative
                .components()
                .map(|c| match c {
                    Component::Normal(s) => s.to_str(),
                    _ => None,
                })
                .collect::<Option<_>>()?;
            parts.join("/")
        } else {
            let base = self.base_url.as_deref()?;
            url.strip_prefix(base)?.strip_prefix('/')?.to_owned()
        };
        own_key_shape(&key).then(|| self.dir.join(key))
    }
}

/// Writes `path` through a temporary file beside it, so a reader never sees half a file and a
/// second write of the same key replaces the first whole.
async fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("media");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    tokio::fs::write(&tmp, bytes)
        .await
        .map_err(|source| io_error(&tmp, source))?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|source| io_error(path, source))
}

/// Reads at most `max_bytes` of `path`, refusing a larger file.
async fn read_limited(path: &Path, max_bytes: u64) -> Result<Vec<u8>, StoreError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|source| io_error(path, source))?;
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| io_error(path, source))?;
    if bytes.len() as u64 > max_bytes {
        return Err(StoreError::TooLarge { limit: max_bytes });
    }
    Ok(bytes)
}

fn io_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(event: &'a str, index: usize, name: Option<&'a str>) -> MediaKey<'a> {
        MediaKey {
            tenant: "acme",
            event_id: event,
            index,
            name,
        }
    }

    #[test]
    fn hostile_names_are_sanitised() {
        assert_eq!(safe_name(Some("hóa đơn.pdf")), "h_a___n.pdf");
        assert_eq!(safe_name(Some("../../etc/passwd")), "_.._etc_passwd");
        assert_eq!(safe_name(Some("..")), "attachment");
        assert_eq!(safe_name(Some("a\nb\0c\u{7f}.txt")), "a_b_c_.txt");
        assert_eq!(safe_name(Some("")), "attachment");
        assert_eq!(safe_name(None), "attachment");
        let long = format!("{}.xlsx", "a".repeat(200));
        let s = safe_name(Some(&long));
        assert!(s.len() <= MAX_NAME && s.ends_with(".xlsx"), "{s}");
    }

    #[test]
    fn keys_are_deterministic_and_refuse_non_plain_ids() {
        let k = key("evt-1", 2, Some("photo 1.jpg"));
        assert_eq!(k.path().unwrap(), "acme/evt-1/2-photo_1.jpg");
        assert_eq!(k.path().unwrap(), k.path().unwrap());
        for bad in ["..", ".", "", "a/b", "a\\b", "x y"] {
            assert!(
                matches!(key(bad, 0, None).path(), Err(StoreError::BadKey { .. })),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn directory_store_round_trips_through_its_file_url() {
        let tmp = tempfile::tempdir().unwrap();
        let store = MediaStore::Directory(DirectoryStore::new(tmp.path(), None));
        let url = store
            .put(
                &key("e1", 0, Some("a.txt")),
                Bytes::from_static(b"hello"),
                None,
            )
            .await
            .unwrap();
        let abs = std::path::absolute(tmp.path()).unwrap();
        assert_eq!(url, format!("file://{}/acme/e1/0-a.txt", abs.display()));
        assert_eq!(
            std::fs::read(abs.join("acme/e1/0-a.txt")).unwrap(),
            b"hello"
        );
        assert_eq!(store.get_own(&url, 100).await.unwrap().unwrap(), b"hello");
        assert!(matches!(
            store.get_own(&url, 4).await,
            Some(Err(StoreError::TooLarge { limit: 4 }))
        ));
    }

    #[tokio::test]
    async fn directory_store_uses_the_base_url_and_overwrites_the_same_key() {
        let tmp = tempfile::tempdir().unwrap();
        let store = MediaStore::Directory(DirectoryStore::new(
            tmp.path(),
            Some("https://media.example.com/m/"),
        ));
        let k = key("e2", 1, Some("../x.png"));
        let first = store
            .put(&k, Bytes::from_static(b"one"), None)
            .await
            .unwrap();
        let second = store
            .put(&k, Bytes::from_static(b"two!"), None)
            .await
            .unwrap();
        assert_eq!(first, "https://media.example.com/m/acme/e2/1-_x.png");
        assert_eq!(first, second);
        assert_eq!(store.get_own(&first, 100).await.unwrap().unwrap(), b"two!");
        let files: Vec<_> = std::fs::read_dir(tmp.path().join("acme/e2"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files, vec![std::ffi::OsString::from("1-_x.png")]);
    }

    #[tokio::test]
    async fn get_own_refuses_foreign_urls_and_dot_dot_paths() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("secret"), b"no").unwrap();
        let store = MediaStore::Directory(DirectoryStore::new(
            tmp.path().join("media"),
            Some("https://media.example.com"),
        ));
        let abs = std::path::absolute(tmp.path()).unwrap();
        for url in [
            "https://evil.example.com/acme/e1/0-a.txt".to_owned(),
            "https://media.example.com/acme/../secret".to_owned(),
            "https://media.example.com/../secret".to_owned(),
            "https://media.example.com/acme/e1/../../../secret".to_owned(),
            "https://media.example.com/acme/e1/0-a.txt?x=1".to_owned(),
            "https://media.example.comx/acme/e1/0-a.txt".to_owned(),
            "file:///etc/passwd".to_owned(),
            format!("file://{}/secret", abs.display()),
            format!("file://{}/media/acme/../../secret", abs.display()),
            format!("file://{}/media/acme/e1/0-a.txt/..", abs.display()),
        ] {
            assert!(store.get_own(&url, 100).await.is_none(), "{url}");
        }
        // Ours in shape but absent: Some(Err), so the caller reports it instead of fetching.
        assert!(matches!(
            store
                .get_own("https://media.example.com/acme/e1/0-a.txt", 100)
                .await,
            Some(Err(StoreError::Io { .. }))
        ));
    }
}
