//! `/media/<key>`: files stored under a `file://` `STORAGE_URL`, with no way out of it.

use std::path::{Path, PathBuf};

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
