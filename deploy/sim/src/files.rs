//! Replicate's files API as the pipeline uses it: `POST /v1/files` (multipart field
//! `content`, as the official clients send it) keeps the file and answers its object, whose
//! `urls.get` a training takes as `input_images`; `GET /v1/files/{id}` answers the object
//! and `GET /v1/files/{id}/download` the bytes. Kept in memory, for tests and demos.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use serde_json::{Value, json};

/// One uploaded file.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub name: String,
    pub content_type: String,
    pub bytes: Bytes,
    pub created_at: String,
}

#[derive(Default)]
pub struct Files {
    files: Mutex<HashMap<String, StoredFile>>,
}

impl Files {
    /// Keeps the file; returns its object as Replicate answers it.
    pub fn keep(&self, file: StoredFile, api_url: &str) -> Value {
        let id = crate::prediction::new_id();
        let object = object(&id, &file, api_url);
        self.files.lock().expect("not poisoned").insert(id, file);
        object
    }

    pub fn get(&self, id: &str) -> Option<StoredFile> {
        self.files.lock().expect("not poisoned").get(id).cloned()
    }

    /// The file's object, as `GET /v1/files/{id}` answers it.
    pub fn object(&self, id: &str, api_url: &str) -> Option<Value> {
        self.get(id).map(|file| object(id, &file, api_url))
    }
}

fn object(id: &str, file: &StoredFile, api_url: &str) -> Value {
    json!({
        "id": id,
        "name": file.name,
        "content_type": file.content_type,
        "size": file.bytes.len(),
        "created_at": file.created_at,
        "urls": {"get": format!("{api_url}/v1/files/{id}")},
    })
}

/// The `content` field of a multipart body: its name, type and bytes.
pub async fn content_field(content_type: &str, body: Bytes) -> Result<StoredFile, String> {
    let boundary = multer::parse_boundary(content_type).map_err(|err| err.to_string())?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    while let Some(field) = form.next_field().await.map_err(|err| err.to_string())? {
        if field.name() != Some("content") {
            continue;
        }
        let name = field.file_name().unwrap_or("file").to_owned();
        let content_type = field
            .content_type()
            .map(ToString::to_string)
            .unwrap_or_else(|| "application/octet-stream".into());
        let bytes = field.bytes().await.map_err(|err| err.to_string())?;
        return Ok(StoredFile {
            name,
            content_type,
            bytes,
            created_at: chrono::Utc::now().to_rfc3339(),
        });
    }
    Err("no `content` field".into())
}
