//! Object-store access for task artifacts and logs.
//!
//! [`open`] turns a URL (`file:///abs/dir`, `s3://bucket/prefix`, `gs://…`,
//! `az://…`) into a [`Store`]: a cheap-to-clone handle that resolves keys
//! under the URL's path and moves files in and out with streaming I/O — a
//! file is never held in memory whole, and its sha256 is computed on the way.
//!
//! S3 is always built in; `gs://` and `az://` need this crate's `cloud`
//! feature, and without it [`open`] says so instead of failing later.
//!
//! A download can be checked against the sha256 recorded at upload
//! ([`Store::download_verified`]): the content is hashed as it streams to
//! disk, and a file that does not match is removed and reported as
//! [`ArtifactError::Corrupt`], so nothing downstream ever reads it.

mod open;
pub mod snapshot;

pub use open::{open, open_with, RetryPolicy, StoreOptions};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Read size when streaming a file into the store.
const CHUNK_SIZE: usize = 1024 * 1024;

/// What went wrong talking to the object store.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The store URL could not be parsed or does not name a usable location.
    #[error("invalid artifact store url `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// The URL's scheme is unknown or its backend is not compiled in.
    #[error("unsupported artifact store url `{url}`: {reason}")]
    UnsupportedScheme { url: String, reason: String },

    /// The key is not a valid object path (empty segment, `..`, …).
    #[error("invalid artifact key `{key}`: {reason}")]
    InvalidKey { key: String, reason: String },

    /// No object under that key.
    #[error("artifact `{key}` not found")]
    NotFound { key: String },

    /// The object's content does not hash to the sha256 recorded for it
    /// (lowercase hex both).
    #[error("artifact `{key}` is corrupt: sha256 {want} != {got}")]
    Corrupt {
        key: String,
        want: String,
        got: String,
    },

    /// A local file could not be read or written.
    #[error("{action} `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The object store refused or failed the operation.
    #[error("object store error on `{key}`: {source}")]
    Store {
        key: String,
        #[source]
        source: object_store::Error,
    },
}

impl ArtifactError {
    fn store(key: &str, source: object_store::Error) -> Self {
        match source {
            object_store::Error::NotFound { .. } => ArtifactError::NotFound {
                key: key.to_owned(),
            },
            source => ArtifactError::Store {
                key: key.to_owned(),
                source,
            },
        }
    }

    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        ArtifactError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// An object written to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactInfo {
    /// Key relative to the store's URL.
    pub key: String,
    /// Lowercase hex sha256 of the content.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// An object as [`Store::list`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    /// Relative to the store's URL.
    pub key: String,
    pub etag: String,
    pub size: u64,
}

/// A handle on an object store rooted at the path of the URL it was opened from.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// Path inside `inner` that every key lives under (empty for `file://`,
    /// whose directory is the store root).
    prefix: ObjectPath,
    url: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

impl Store {
    /// The URL this store was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn location(&self, key: &str) -> Result<ObjectPath, ArtifactError> {
        let invalid = |reason: String| ArtifactError::InvalidKey {
            key: key.to_owned(),
            reason,
        };
        if key.is_empty() {
            return Err(invalid("key is empty".to_owned()));
        }
        let rel = ObjectPath::parse(key).map_err(|e| invalid(e.to_string()))?;
        if rel.as_ref() != key {
            // `parse` strips leading/trailing slashes; refuse rather than
            // silently writing somewhere other than the caller said.
            return Err(invalid("key must not start or end with `/`".to_owned()));
        }
        Ok(self.prefix.parts().chain(rel.parts()).collect())
    }

    /// Streams the file at `path` to `key`, computing its sha256 on the way.
    pub async fn upload_file(&self, key: &str, path: &Path) -> Result<ArtifactInfo, ArtifactError> {
        let location = self.location(key)?;
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ArtifactError::io("opening", path, e))?;
        let mut writer = BufWriter::new(Arc::clone(&self.inner), location);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let copied = async {
            loop {
                let mut buf = BytesMut::with_capacity(CHUNK_SIZE);
                let n = file
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| ArtifactError::io("reading", path, e))?;
                if n == 0 {
                    return Ok(());
                }
                hasher.update(&buf);
                size += n as u64;
                writer
                    .put(buf.freeze())
                    .await
                    .map_err(|e| ArtifactError::store(key, e))?;
            }
        }
        .await;
        if let Err(e) = copied {
            // Best effort: a failed multipart upload leaves parts behind otherwise.
            let _ = writer.abort().await;
            return Err(e);
        }
        // Completes the upload (one put, or the multipart's last part and commit).
        writer.shutdown().await.map_err(|e| ArtifactError::Store {
            key: key.to_owned(),
            source: object_store::Error::Generic {
                store: "upload",
                source: Box::new(e),
            },
        })?;
        Ok(ArtifactInfo {
            key: key.to_owned(),
            sha256: hex(&hasher.finalize()),
            size,
        })
    }

    /// Stores `bytes` under `key` in one request (small objects only).
    pub async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<ArtifactInfo, ArtifactError> {
        let location = self.location(key)?;
        let info = ArtifactInfo {
            key: key.to_owned(),
            sha256: hex(&Sha256::digest(&bytes)),
            size: bytes.len() as u64,
        };
        self.inner
            .put(&location, PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| ArtifactError::store(key, e))?;
        Ok(info)
    }

    /// Streams the object at `key` into a new file at `dest` (parent
    /// directories are created), returning the number of bytes written.
    /// A partially written file is removed on failure.
    pub async fn download_file(&self, key: &str, dest: &Path) -> Result<u64, ArtifactError> {
        self.download(key, dest, None).await
    }

    /// As [`Store::download_file`], and the content must hash to `sha256`
    /// (lowercase hex; empty: unknown, not checked): else the file is
    /// removed and the error is [`ArtifactError::Corrupt`].
    pub async fn download_verified(
        &self,
        key: &str,
        dest: &Path,
        sha256: &str,
    ) -> Result<u64, ArtifactError> {
        self.download(key, dest, Some(sha256).filter(|s| !s.is_empty()))
            .await
    }

    async fn download(
        &self,
        key: &str,
        dest: &Path,
        want: Option<&str>,
    ) -> Result<u64, ArtifactError> {
        let mut stream = self.get_bytes_stream(key).await?;
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| ArtifactError::io("creating directory", parent, e))?;
        }
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| ArtifactError::io("creating", dest, e))?;
        let copied = async {
            let mut hasher = want.map(|_| Sha256::new());
            let mut size = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                if let Some(hasher) = hasher.as_mut() {
                    hasher.update(&chunk);
                }
                file.write_all(&chunk)
                    .await
                    .map_err(|e| ArtifactError::io("writing", dest, e))?;
                size += chunk.len() as u64;
            }
            file.flush()
                .await
                .map_err(|e| ArtifactError::io("writing", dest, e))?;
            if let (Some(want), Some(hasher)) = (want, hasher) {
                let got = hex(&hasher.finalize());
                if !got.eq_ignore_ascii_case(want) {
                    return Err(ArtifactError::Corrupt {
                        key: key.to_owned(),
                        want: want.to_owned(),
                        got,
                    });
                }
            }
            Ok(size)
        }
        .await;
        if copied.is_err() {
            drop(file);
            let _ = tokio::fs::remove_file(dest).await;
        }
        copied
    }

    /// Opens the object at `key` as a stream of chunks. A missing key is
    /// reported here as [`ArtifactError::NotFound`], before any chunk.
    pub async fn get_bytes_stream(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, ArtifactError>>, ArtifactError> {
        let location = self.location(key)?;
        let result = self
            .inner
            .get(&location)
            .await
            .map_err(|e| ArtifactError::store(key, e))?;
        let key = key.to_owned();
        Ok(result
            .into_stream()
            .map_err(move |e| ArtifactError::store(&key, e))
            .boxed())
    }

    /// Removes the object at `key`; removing one that is not there is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), ArtifactError> {
        let location = self.location(key)?;
        match self.inner.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(ArtifactError::store(key, e)),
        }
    }

    /// Whether an object is stored under `key`.
    pub async fn exists(&self, key: &str) -> Result<bool, ArtifactError> {
        let location = self.location(key)?;
        match self.inner.head(&location).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(ArtifactError::store(key, e)),
        }
    }

    /// Opens the object at `key` from byte `offset` on (nothing when
    /// `offset` is its size), as a stream of chunks. A missing key is
    /// reported here as [`ArtifactError::NotFound`], before any chunk.
    pub async fn get_bytes_stream_from(
        &self,
        key: &str,
        offset: u64,
    ) -> Result<BoxStream<'static, Result<Bytes, ArtifactError>>, ArtifactError> {
        if offset == 0 {
            return self.get_bytes_stream(key).await;
        }
        let location = self.location(key)?;
        // From the byte before `offset`, dropped below: a range starting
        // at the object's end is refused, and asking the size first would
        // cost another round trip.
        let options = object_store::GetOptions {
            range: Some(object_store::GetRange::Offset(offset - 1)),
            ..Default::default()
        };
        let result = self
            .inner
            .get_opts(&location, options)
            .await
            .map_err(|e| ArtifactError::store(key, e))?;
        let key = key.to_owned();
        let mut skip = 1usize;
        Ok(result
            .into_stream()
            .map_err(move |e| ArtifactError::store(&key, e))
            .map_ok(move |mut chunk| {
                let dropped = skip.min(chunk.len());
                skip -= dropped;
                chunk.split_off(dropped)
            })
            .try_filter(|chunk| std::future::ready(!chunk.is_empty()))
            .boxed())
    }

    /// Every object under the store's URL: keys relative to it, with the
    /// store's ETag (S3: the content's MD5 for a single-part upload; a
    /// directory: inode, time and size) and size.
    pub async fn list(&self) -> Result<Vec<ListedObject>, ArtifactError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let depth = self.prefix.parts().count();
        self.inner
            .list(prefix)
            .map_err(|e| ArtifactError::store(self.prefix.as_ref(), e))
            .map_ok(|meta| ListedObject {
                key: meta
                    .location
                    .parts()
                    .skip(depth)
                    .map(|p| p.as_ref().to_owned())
                    .collect::<Vec<_>>()
                    .join("/"),
                etag: meta.e_tag.unwrap_or_default(),
                size: meta.size,
            })
            .try_collect()
            .await
    }

    /// The sha256 (lowercase hex) of the object at `key`, read as a stream.
    pub async fn sha256_of(&self, key: &str) -> Result<String, ArtifactError> {
        let mut stream = self.get_bytes_stream(key).await?;
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.next().await {
            hasher.update(&chunk?);
        }
        Ok(hex(&hasher.finalize()))
    }

    /// Reads the whole object at `key` (small objects only).
    pub async fn get_bytes(&self, key: &str) -> Result<Bytes, ArtifactError> {
        let location = self.location(key)?;
        let result = self
            .inner
            .get(&location)
            .await
            .map_err(|e| ArtifactError::store(key, e))?;
        result
            .bytes()
            .await
            .map_err(|e| ArtifactError::store(key, e))
    }
}

/// Lowercase hex sha256 of `bytes`, as [`ArtifactInfo::sha256`] has it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab]), "000fab");
    }
}
