//! Fetching a job's output images, within the operator's limits: allowed hosts only (also
//! for every redirect), `https` unless plain HTTP is allowed, a size cap, a timeout, and
//! image content only. Transient failures are retried here with backoff; what still fails
//! is reported as transient (the webhook is retried later) or permanent (the job fails).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::CONTENT_TYPE;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One entry of `DOWNLOAD_ALLOWED_HOSTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    /// `replicate.delivery`: that host, any port.
    Host(String),
    /// `*.replicate.delivery`: any subdomain (not the domain itself).
    Subdomains(String),
    /// `127.0.0.1:8090`: that host on that port only.
    HostPort(String, u16),
}

impl HostRule {
    fn allows(&self, host: &str, port: u16) -> bool {
        match self {
            Self::Host(allowed) => host == allowed,
            Self::Subdomains(domain) => host
                .strip_suffix(domain.as_str())
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            Self::HostPort(allowed, allowed_port) => host == allowed && port == *allowed_port,
        }
    }
}

impl FromStr for HostRule {
    type Err = String;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let entry = entry.trim().to_ascii_lowercase();
        if entry.is_empty() {
            return Err("empty host entry".into());
        }
        if let Some(domain) = entry.strip_prefix("*.") {
            return Ok(Self::Subdomains(domain.to_owned()));
        }
        // An IPv6 literal is written in brackets: `[::1]:8080`.
        if let Some((host, port)) = entry.rsplit_once(':')
            && !host.ends_with(':')
            && (!host.contains(':') || host.starts_with('['))
        {
            let port = port
                .parse()
                .map_err(|_| format!("bad port in host entry {entry:?}"))?;
            return Ok(Self::HostPort(host.to_owned(), port));
        }
        Ok(Self::Host(entry))
    }
}

/// What may be downloaded.
#[derive(Debug, Clone)]
pub struct DownloadPolicy {
    pub allowed_hosts: Vec<HostRule>,
    pub allow_http: bool,
    pub max_bytes: u64,
    pub timeout: Duration,
}

impl DownloadPolicy {
    /// Parses the comma-separated `DOWNLOAD_ALLOWED_HOSTS` list.
    pub fn parse_hosts(list: &str) -> Result<Vec<HostRule>, String> {
        list.split(',')
            .filter(|entry| !entry.trim().is_empty())
            .map(HostRule::from_str)
            .collect()
    }

    /// Whether `url` may be fetched; the error says why not.
    pub fn check(&self, url: &Url) -> Result<(), String> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            other => return Err(format!("scheme {other} not allowed for {url}")),
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("no host in {url}"))?
            .to_ascii_lowercase();
        let port = url.port_or_known_default().unwrap_or(0);
        if self
            .allowed_hosts
            .iter()
            .any(|rule| rule.allows(&host, port))
        {
            Ok(())
        } else {
            Err(format!("host {host} not allowed (DOWNLOAD_ALLOWED_HOSTS)"))
        }
    }
}

/// Why an output was not fetched. [`DownloadError::is_permanent`] decides: a permanent
/// error fails the job with this message, any other is retried.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("bad output URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// `DOWNLOAD_ALLOWED_HOSTS` or `DOWNLOAD_ALLOW_HTTP` refuses it.
    #[error("{0}")]
    NotAllowed(String),
    #[error("GET {url} answered {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("{url} is not an image (content-type {content_type:?})")]
    NotAnImage { url: String, content_type: String },
    #[error("{url} is larger than {max} bytes (DOWNLOAD_MAX_BYTES)")]
    TooLarge { url: String, max: u64 },
    #[error("{url} is not the image it claims: declared {content_type:?}, the bytes are {found}")]
    WrongBytes {
        url: String,
        content_type: String,
        found: &'static str,
    },
    /// A redirect our policy refused (its reason is the message).
    #[error("GET {url}: {reason}")]
    RedirectRefused { url: String, reason: String },
    /// Timeouts, refused or reset connections, bodies cut short.
    #[error("GET {url}: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

impl DownloadError {
    /// Will not work however often it is tried.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Status { status, .. } => {
                !(status.is_server_error()
                    || *status == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || *status == reqwest::StatusCode::REQUEST_TIMEOUT)
            }
            Self::Request { source, .. } => source.is_builder(),
            Self::BadUrl { .. }
            | Self::NotAllowed(_)
            | Self::NotAnImage { .. }
            | Self::TooLarge { .. }
            | Self::WrongBytes { .. }
            | Self::RedirectRefused { .. } => true,
        }
    }
}

/// An image fetched in full. It holds its share of the download memory budget until it
/// is dropped (once stored).
#[derive(Debug)]
pub struct Image {
    pub bytes: bytes::Bytes,
    pub content_type: String,
    _memory: OwnedSemaphorePermit,
}

/// How many downloads run at once, and the memory their bodies may take together.
#[derive(Debug, Clone, Copy)]
pub struct DownloadLimits {
    pub concurrency: usize,
    pub budget_bytes: u64,
}

/// Budget permits are KiB, so that large budgets fit a semaphore.
const BUDGET_UNIT: u64 = 1024;

/// Backoff between attempts of one download.
const ATTEMPT_DELAYS: &[Duration] = &[Duration::from_millis(250), Duration::from_secs(1)];
const MAX_REDIRECTS: usize = 5;

#[derive(Clone)]
pub struct Downloader {
    client: reqwest::Client,
    policy: Arc<DownloadPolicy>,
    /// Downloads in flight.
    slots: Arc<Semaphore>,
    /// Memory of fetched bodies not yet stored, in [`BUDGET_UNIT`]s.
    memory: Arc<Semaphore>,
    budget_units: u32,
}

impl Downloader {
    pub fn new(policy: DownloadPolicy, limits: DownloadLimits) -> Result<Self, reqwest::Error> {
        let budget_units =
            u32::try_from(limits.budget_bytes.div_ceil(BUDGET_UNIT).max(1)).unwrap_or(u32::MAX);
        let policy = Arc::new(policy);
        let redirect_policy = policy.clone();
        let client = shared::http::client_builder()
            .timeout(policy.timeout)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
                }
                match redirect_policy.check(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(reason) => attempt.error(format!("redirect refused: {reason}")),
                }
            }))
            .build()?;
        Ok(Self {
            client,
            policy,
            slots: Arc::new(Semaphore::new(limits.concurrency.max(1))),
            memory: Arc::new(Semaphore::new(budget_units as usize)),
            budget_units,
        })
    }

    /// Waits until `bytes` of the memory budget are free and takes them (a file larger
    /// than the whole budget takes all of it).
    async fn reserve(&self, bytes: u64) -> OwnedSemaphorePermit {
        let units = u32::try_from(bytes.div_ceil(BUDGET_UNIT).max(1))
            .unwrap_or(u32::MAX)
            .min(self.budget_units);
        self.memory
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("the budget semaphore is never closed")
    }

    /// Fetches one image, retrying transient failures a few times.
    pub async fn fetch(&self, url: &str) -> Result<Image, DownloadError> {
        let parsed = Url::parse(url).map_err(|err| DownloadError::BadUrl {
            url: url.to_owned(),
            reason: err.to_string(),
        })?;
        self.policy
            .check(&parsed)
            .map_err(DownloadError::NotAllowed)?;
        let mut delays = ATTEMPT_DELAYS.iter();
        loop {
            match self.fetch_once(parsed.clone()).await {
                Err(err) if !err.is_permanent() => match delays.next() {
                    Some(delay) => {
                        tracing::debug!(%url, error = %err, retry_in = ?delay, "download failed, retrying");
                        tokio::time::sleep(*delay).await;
                    }
                    None => return Err(err),
                },
                result => return result,
            }
        }
    }

    async fn fetch_once(&self, url: Url) -> Result<Image, DownloadError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the download slots are never closed");
        let shown = url.to_string();
        let mut response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|err| request_failed(&shown, err))?;
        let status = response.status();
        if !status.is_success() {
            return Err(DownloadError::Status { url: shown, status });
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !content_type.starts_with("image/") {
            return Err(DownloadError::NotAnImage {
                url: shown,
                content_type,
            });
        }
        let max = self.policy.max_bytes;
        let too_large = || DownloadError::TooLarge {
            url: shown.clone(),
            max,
        };
        if response.content_length().is_some_and(|length| length > max) {
            return Err(too_large());
        }
        // The body's memory is reserved before it is read: the announced length, or the
        // largest file allowed when none is announced.
        let memory = self.reserve(response.content_length().unwrap_or(max)).await;
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| request_failed(&shown, err))?
        {
            if (body.len() + chunk.len()) as u64 > max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        if let Err(found) = check_magic(&content_type, &body) {
            return Err(DownloadError::WrongBytes {
                url: shown,
                content_type,
                found,
            });
        }
        Ok(Image {
            bytes: body.freeze(),
            content_type,
            _memory: memory,
        })
    }
}

/// Whether `bytes` start as an image of `content_type` says they do. Stored files are
/// served on the gallery's origin, so a file whose bytes are not what it declares (HTML,
/// script) is refused, and types we cannot check are refused too.
pub fn check_magic(content_type: &str, bytes: &[u8]) -> Result<(), &'static str> {
    let is = |prefix: &[u8]| bytes.starts_with(prefix);
    let declared = content_type.split(';').next().unwrap_or_default().trim();
    let matches = match declared {
        "image/png" => is(b"\x89PNG\r\n\x1a\n"),
        "image/jpeg" | "image/jpg" => is(&[0xFF, 0xD8, 0xFF]),
        "image/gif" => is(b"GIF87a") || is(b"GIF89a"),
        "image/webp" => bytes.len() >= 12 && is(b"RIFF") && &bytes[8..12] == b"WEBP",
        "image/avif" => bytes.len() >= 12 && &bytes[4..8] == b"ftyp" && &bytes[8..12] == b"avif",
        // SVG is text: it must open as XML or an <svg> element. It is served sandboxed.
        "image/svg+xml" => {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]);
            let text = text.trim_start_matches('\u{feff}').trim_start();
            text.starts_with("<?xml") || text.starts_with("<svg") || text.starts_with("<!--")
        }
        _ => return Err("of a type the gallery does not serve"),
    };
    if matches {
        Ok(())
    } else {
        Err("something else")
    }
}

/// A failed request as a [`DownloadError`]: our redirect policy's refusals say why.
fn request_failed(url: &str, err: reqwest::Error) -> DownloadError {
    if err.is_redirect()
        && let Some(reason) = std::error::Error::source(&err)
    {
        return DownloadError::RedirectRefused {
            url: url.to_owned(),
            reason: reason.to_string(),
        };
    }
    DownloadError::Request {
        url: url.to_owned(),
        source: err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_must_be_what_they_claim() {
        assert!(check_magic("image/png", b"\x89PNG\r\n\x1a\nrest").is_ok());
        assert!(check_magic("image/png", b"<html><script>").is_err());
        assert!(check_magic("image/jpeg", &[0xFF, 0xD8, 0xFF, 0xE0]).is_ok());
        assert!(check_magic("image/webp", b"RIFF\0\0\0\0WEBPVP8 ").is_ok());
        assert!(check_magic("image/gif; charset=x", b"GIF89a..").is_ok());
        assert!(
            check_magic(
                "image/svg+xml",
                b"  <svg xmlns='http://www.w3.org/2000/svg'/>"
            )
            .is_ok()
        );
        assert!(check_magic("image/svg+xml", b"<html><script>alert(1)</script>").is_err());
        assert!(check_magic("image/x-icon", b"\0\0\x01\0").is_err());
    }

    fn policy(hosts: &str, allow_http: bool) -> DownloadPolicy {
        DownloadPolicy {
            allowed_hosts: DownloadPolicy::parse_hosts(hosts).unwrap(),
            allow_http,
            max_bytes: 1024,
            timeout: Duration::from_secs(5),
        }
    }

    fn check(policy: &DownloadPolicy, url: &str) -> Result<(), String> {
        policy.check(&Url::parse(url).unwrap())
    }

    #[test]
    fn default_hosts() {
        let p = policy("replicate.delivery,*.replicate.delivery", false);
        assert!(check(&p, "https://replicate.delivery/pbxt/a/out-0.png").is_ok());
        assert!(check(&p, "https://pbxt.replicate.delivery/a/out-0.png").is_ok());
        assert!(check(&p, "https://evilreplicate.delivery/x.png").is_err());
        assert!(check(&p, "https://replicate.delivery.evil.com/x.png").is_err());
        assert!(check(&p, "https://example.com/x.png").is_err());
    }

    #[test]
    fn http_only_when_allowed() {
        let strict = policy("replicate.delivery", false);
        let err = check(&strict, "http://replicate.delivery/x.png").unwrap_err();
        assert!(err.contains("scheme http"), "{err}");
        assert!(
            check(
                &policy("replicate.delivery", true),
                "http://replicate.delivery/x.png"
            )
            .is_ok()
        );
        assert!(check(&strict, "file:///etc/passwd").is_err());
    }

    #[test]
    fn host_and_port_entries() {
        let p = policy("127.0.0.1:8090, localhost", true);
        assert!(check(&p, "http://127.0.0.1:8090/delivery/a.png").is_ok());
        assert!(check(&p, "http://127.0.0.1:8091/delivery/a.png").is_err());
        assert!(check(&p, "http://localhost:1234/a.png").is_ok());
        assert_eq!(
            "[::1]:8080".parse::<HostRule>(),
            Ok(HostRule::HostPort("[::1]".into(), 8080))
        );
        assert!("host:notaport".parse::<HostRule>().is_err());
    }
}
