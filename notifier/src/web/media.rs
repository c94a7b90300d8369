//! `/media/<key>`: files stored under a `file://` `STORAGE_URL`, with no way out of it.

use std::convert::Infallible;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::web::respond::{Body, json, not_found};

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

/// Bytes read from disk and handed to the connection at a time: a slow reader holds at most
/// about this much of a file in memory, however large the file.
const CHUNK: usize = 64 * 1024;

/// A file name a browser may save under: the name asked for (the gallery sends the prompt)
/// reduced to letters, digits and dashes, at most 60 characters, or the key's own segments;
/// with the stored file's extension.
pub fn download_name(key: &str, asked: Option<&str>) -> String {
    let slug = |text: &str| {
        let mut slug = String::new();
        for c in text.chars() {
            if c.is_ascii_alphanumeric() {
                slug.push(c.to_ascii_lowercase());
            } else if !slug.is_empty() && !slug.ends_with('-') {
                slug.push('-');
            }
            if slug.len() >= 60 {
                break;
            }
        }
        slug.trim_end_matches('-').to_owned()
    };
    let path = Path::new(key);
    let stem = asked
        .map(slug)
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| slug(key.rsplit_once('.').map_or(key, |(stem, _)| stem)));
    let stem = if stem.is_empty() {
        "image".to_owned()
    } else {
        stem
    };
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.bytes().all(|b| b.is_ascii_alphanumeric()) => format!("{stem}.{ext}"),
        _ => stem,
    }
}

/// `/media/<key>`: the stored file, streamed (never read whole into memory), with single
/// `Range` requests answered `206`; never sniffed, sandboxed; 404 when missing or when media
/// is not stored in a local directory. With `download`, a file to save under that name
/// (`Content-Disposition: attachment`).
pub async fn serve(
    root: Option<&Path>,
    key: &str,
    range: Option<&str>,
    download: Option<&str>,
) -> Response<Body> {
    let Some(root) = root else {
        return not_found();
    };
    let Some(path) = resolve(root, key) else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "invalid media key"}),
        );
    };
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return not_found();
    };
    let length = match file.metadata().await {
        Ok(metadata) if metadata.is_file() => metadata.len(),
        _ => return not_found(),
    };
    let (status, start, end) = match range.map(|header| parse_range(header, length)) {
        None | Some(RangeAsked::Ignored) => (StatusCode::OK, 0, length),
        Some(RangeAsked::Part { start, end }) => (StatusCode::PARTIAL_CONTENT, start, end),
        Some(RangeAsked::Unsatisfiable) => {
            let mut response = json(
                StatusCode::RANGE_NOT_SATISFIABLE,
                serde_json::json!({"error": format!("the file has {length} bytes")}),
            );
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{length}")).expect("ASCII"),
            );
            return response;
        }
    };
    if start > 0 && file.seek(SeekFrom::Start(start)).await.is_err() {
        return not_found();
    }
    let chunks = futures_util::stream::unfold((file, end - start), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buffer = vec![0u8; CHUNK.min(left as usize)];
        match file.read(&mut buffer).await {
            // A file cut short or unreadable ends the body early: the client sees fewer
            // bytes than announced and knows the transfer failed.
            Ok(0) | Err(_) => None,
            Ok(read) => {
                buffer.truncate(read);
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(buffer))),
                    (file, left - read as u64),
                ))
            }
        }
    });
    let mut response = Response::new(StreamBody::new(chunks).boxed());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&path)),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        headers.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{}/{length}", end - 1)).expect("ASCII"),
        );
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    // Media shares the gallery's origin: never sniffed into something else, and an SVG
    // opened on its own runs no script and reaches nothing.
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    if let Some(name) = download {
        headers.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
                .expect("a name of ASCII letters, digits, dashes and a dot"),
        );
    }
    response
}

/// What a `Range` header asks of a file of `length` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeAsked {
    /// Bytes `start..end` (end exclusive).
    Part { start: u64, end: u64 },
    /// Nothing of the file: `416`.
    Unsatisfiable,
    /// Not a single byte range (another unit, several ranges, garbage): the whole file, as
    /// RFC 9110 allows.
    Ignored,
}

fn parse_range(header: &str, length: u64) -> RangeAsked {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeAsked::Ignored;
    };
    if spec.contains(',') {
        return RangeAsked::Ignored;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAsked::Ignored;
    };
    let number = |text: &str| text.trim().parse::<u64>().ok();
    let (start, end) = match (first.trim().is_empty(), last.trim().is_empty()) {
        // `bytes=-N`: the last N bytes.
        (true, false) => match number(last) {
            Some(0) => return RangeAsked::Unsatisfiable,
            Some(suffix) => (length.saturating_sub(suffix), length),
            None => return RangeAsked::Ignored,
        },
        // `bytes=N-`: from N to the end.
        (false, true) => match number(first) {
            Some(start) => (start, length),
            None => return RangeAsked::Ignored,
        },
        (false, false) => match (number(first), number(last)) {
            (Some(start), Some(last)) if last >= start => (start, (last + 1).min(length)),
            _ => return RangeAsked::Ignored,
        },
        (true, true) => return RangeAsked::Ignored,
    };
    if start >= length {
        return RangeAsked::Unsatisfiable;
    }
    RangeAsked::Part { start, end }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_names_are_safe_and_keep_the_extension() {
        assert_eq!(
            download_name("generations/r1/0.png", Some("A corgi, in \"space\"!")),
            "a-corgi-in-space.png"
        );
        assert_eq!(
            download_name("generations/r1/0.png", None),
            "generations-r1-0.png"
        );
        assert_eq!(download_name("x/0.webp", Some("\u{1F436}")), "x-0.webp");
        assert_eq!(download_name("a/b", Some("../../etc")), "etc");
        assert!(download_name("a/0.png", Some(&"long ".repeat(40))).len() <= 64);
    }

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

    #[test]
    fn single_byte_ranges_are_served_and_the_rest_is_not() {
        use RangeAsked::*;
        assert_eq!(parse_range("bytes=0-99", 1000), Part { start: 0, end: 100 });
        assert_eq!(
            parse_range("bytes=900-", 1000),
            Part {
                start: 900,
                end: 1000
            }
        );
        assert_eq!(
            parse_range("bytes=-10", 1000),
            Part {
                start: 990,
                end: 1000
            }
        );
        assert_eq!(
            parse_range("bytes=-5000", 1000),
            Part {
                start: 0,
                end: 1000
            }
        );
        assert_eq!(
            parse_range("bytes=990-5000", 1000),
            Part {
                start: 990,
                end: 1000
            }
        );
        assert_eq!(parse_range("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), Unsatisfiable);
        for ignored in [
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=-",
        ] {
            assert_eq!(parse_range(ignored, 1000), Ignored, "{ignored}");
        }
    }
}
