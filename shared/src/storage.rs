//! Media storage behind `object_store`: a local directory (`file://`) or S3 and any
//! S3-compatible store (`s3://bucket/prefix`).

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("STORAGE_URL must start with file:// or s3://, got {0:?}")]
    UnsupportedUrl(String),
    #[error("cannot use the media directory {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the object store: {0}")]
    Store(#[from] object_store::Error),
}

/// Opens the store `STORAGE_URL` names. A relative `file://` path is relative to the
/// working directory and is created if missing.
pub fn open(url: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
    if let Some(path) = url.strip_prefix("file://") {
        std::fs::create_dir_all(path).map_err(|source| StorageError::Directory {
            path: path.to_owned(),
            source,
        })?;
        return Ok(Arc::new(LocalFileSystem::new_with_prefix(path)?));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        crate::http::install_crypto_provider();
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()?;
        let prefix = prefix.trim_matches('/');
        return Ok(if prefix.is_empty() {
            Arc::new(store)
        } else {
            Arc::new(PrefixStore::new(store, prefix))
        });
    }
    Err(StorageError::UnsupportedUrl(url.to_owned()))
}

/// The local directory of a `file://` URL, for serving files directly.
pub fn local_directory(url: &str) -> Option<&str> {
    url.strip_prefix("file://")
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::path::Path;

    #[tokio::test]
    async fn local_store_round_trip_and_overwrite() {
        let dir = std::env::temp_dir().join(format!("storage-test-{}", std::process::id()));
        let store = open(&format!("file://{}", dir.display())).unwrap();
        let key = Path::from("generations/g1/0.png");
        store.put(&key, b"first".to_vec().into()).await.unwrap();
        store.put(&key, b"second".to_vec().into()).await.unwrap();
        let bytes = store.get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(&bytes[..], b"second");
        assert_eq!(
            std::fs::read(dir.join("generations/g1/0.png")).unwrap(),
            b"second"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn other_schemes_are_refused() {
        assert!(matches!(
            open("ftp://example.com/media"),
            Err(StorageError::UnsupportedUrl(_))
        ));
    }
}
