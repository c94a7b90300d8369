//! Storing downloaded outputs under `STORAGE_URL` and naming their public URLs.
//!
//! Keys are derived from the job and the output's position, so a retried webhook
//! overwrites the same objects instead of adding copies.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::download::Image;

#[derive(Clone)]
pub struct MediaStore {
    store: Arc<dyn ObjectStore>,
    /// `MEDIA_BASE_URL` without a trailing slash.
    base_url: String,
}

impl MediaStore {
    pub fn new(store: Arc<dyn ObjectStore>, base_url: &str) -> Self {
        Self {
            store,
            base_url: base_url.trim_end_matches('/').to_owned(),
        }
    }

    /// Stores output number `index` of generation `generation_id`; returns its public URL.
    pub async fn put(
        &self,
        generation_id: &str,
        index: usize,
        image: &Image,
    ) -> Result<String, object_store::Error> {
        let key = key_for(generation_id, index, &image.content_type);
        self.store
            .put(
                &Path::from(key.as_str()),
                PutPayload::from(image.bytes.clone()),
            )
            .await?;
        Ok(format!("{}/{key}", self.base_url))
    }

    /// Stores the thumbnail (a JPEG) of output number `index`; returns its public URL.
    pub async fn put_thumbnail(
        &self,
        generation_id: &str,
        index: usize,
        jpeg: Vec<u8>,
    ) -> Result<String, object_store::Error> {
        let key = key_for(generation_id, index, "image/jpeg").replace(".jpg", ".thumb.jpg");
        self.store
            .put(&Path::from(key.as_str()), PutPayload::from(jpeg))
            .await?;
        Ok(format!("{}/{key}", self.base_url))
    }
}

/// `generations/<id>/<index>.<ext>`; characters outside `[A-Za-z0-9_-]` in the id become
/// `_`, so an id can never climb out of its folder.
pub fn key_for(generation_id: &str, index: usize, content_type: &str) -> String {
    let safe_id: String = generation_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("generations/{safe_id}/{index}.{}", extension(content_type))
}

fn extension(content_type: &str) -> &'static str {
    match content_type.split(';').next().unwrap_or_default().trim() {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpg",
        "image/webp" => "webp",
        "image/gif" => "gif",
        "image/avif" => "avif",
        "image/svg+xml" => "svg",
        _ => "img",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_safe() {
        assert_eq!(key_for("gen_1", 0, "image/png"), "generations/gen_1/0.png");
        assert_eq!(
            key_for("../../etc", 2, "image/jpeg; charset=binary"),
            "generations/______etc/2.jpg"
        );
        assert_eq!(key_for("g", 1, "image/x-unknown"), "generations/g/1.img");
    }
}
