//! `/media/<key>`: files stored under a `file://` `STORAGE_URL`, with no way out of it.

use std::path::{Path, PathBuf};

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::http::{AppState, Body, json, text};

/// The file for `key` under `root`, if `key` is a plain relative path: segments of
/// `[A-Za-z0-9._-]` only, none empty, `.` or `..`. Anything encoded (`%2f`), absolute or
/// with a backslash is refused.
pub fn resolve(root: &Path, key: &str) -> Option<PathBuf> {
    let valid_segment = |segment: &str| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    if key.is_empty() || !key.split('/').all(valid_segment) {
        return None;
    }
    Some(root.join(key))
}

/// Served with every media file: no scripts, no plugins, no requests, a unique origin.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox";

pub fn content_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
    {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "avif" => "image/avif",
        "svg" => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// `/media/<key>`: the stored file, never sniffed, sandboxed; 404 when missing or when
/// media is not stored in a local directory.
pub async fn serve(state: &AppState, key: &str) -> Response<Body> {
    let not_found = || {
        json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found"}),
        )
    };
    let Some(root) = &state.media_root else {
        return not_found();
    };
    let Some(path) = resolve(root, key) else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "invalid media key"}),
        );
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let mut response = text(StatusCode::OK, content_type(&path), bytes);
            let headers = response.headers_mut();
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            );
            // Media shares the gallery's origin: never sniffed into something else, and an
            // SVG opened on its own runs no script and reaches nothing.
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            );
            response
        }
        Err(_) => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_keys() {
        let root = Path::new("/srv/media");
        assert_eq!(
            resolve(root, "generations/g1/0.png"),
            Some(PathBuf::from("/srv/media/generations/g1/0.png"))
        );
        for bad in [
            "",
            "../etc/passwd",
            "generations/../../etc",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "a%2f..%2fb",
            "a\\b",
            "..",
            "a/b/",
        ] {
            assert_eq!(resolve(root, bad), None, "{bad:?}");
        }
    }
}
