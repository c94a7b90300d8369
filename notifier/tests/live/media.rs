//! `/media/<key>` serves stored files and nothing outside the media directory.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::TestEnv;

/// Sends a raw request line, so that no client normalises the path first.
async fn raw_get(address: &str, path: &str) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let status = std::str::from_utf8(&response[9..12])
        .unwrap()
        .parse()
        .unwrap();
    let body_start = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    (status, response[body_start..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_is_served_without_path_traversal() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let running = env.start().await;
    std::fs::create_dir_all(env.media_dir.join("generations/g1")).unwrap();
    std::fs::write(env.media_dir.join("generations/g1/0.png"), b"\x89PNG fake").unwrap();
    // A secret next to the media directory.
    let secret = env.media_dir.parent().unwrap().join(format!(
        "{}-secret.txt",
        env.media_dir.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(&secret, b"secret").unwrap();

    let (status, body) = raw_get(&running.address, "/media/generations/g1/0.png").await;
    assert_eq!((status, body.as_slice()), (200, b"\x89PNG fake".as_slice()));
    assert_eq!(
        raw_get(&running.address, "/media/generations/g1/1.png")
            .await
            .0,
        404
    );
    let escape = format!(
        "/media/../{}",
        secret.file_name().unwrap().to_str().unwrap()
    );
    for path in [
        escape.as_str(),
        "/media/generations/../../etc/passwd",
        "/media/..%2f..%2fetc%2fpasswd",
        "/media/generations%2fg1%2f0.png",
        "/media//etc/passwd",
        "/media/%2e%2e/secret",
        "/media/generations\\g1\\0.png",
    ] {
        let (status, body) = raw_get(&running.address, path).await;
        assert!(status == 400 || status == 404, "{path}: {status}");
        assert_ne!(body, b"secret", "{path} leaked a file");
    }
    std::fs::remove_file(secret).unwrap();
    running.stop().await;
    env.cleanup().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_svg_is_served_sandboxed_and_never_sniffed() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let running = env.start().await;
    std::fs::create_dir_all(env.media_dir.join("generations/g2")).unwrap();
    std::fs::write(
        env.media_dir.join("generations/g2/0.svg"),
        br#"<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.cookie)</script></svg>"#,
    )
    .unwrap();
    let response = shared::http::client_builder()
        .build()
        .unwrap()
        .get(format!(
            "http://{}/media/generations/g2/0.svg",
            running.address
        ))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "image/svg+xml");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(
        policy.contains("sandbox") && policy.contains("default-src 'none'"),
        "{policy}"
    );
    running.stop().await;
    env.cleanup().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_are_answered_206_and_out_of_range_416() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let running = env.start().await;
    std::fs::create_dir_all(env.media_dir.join("generations/g3")).unwrap();
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(env.media_dir.join("generations/g3/0.png"), &content).unwrap();
    let http = shared::http::client_builder().build().unwrap();
    let url = format!("http://{}/media/generations/g3/0.png", running.address);
    let get = |range: Option<&'static str>| {
        let mut request = http.get(&url);
        if let Some(range) = range {
            request = request.header("range", range);
        }
        request.send()
    };

    let whole = get(None).await?;
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    assert_eq!(whole.headers()["content-length"], "200000");
    assert_eq!(whole.bytes().await?.as_ref(), content.as_slice());

    for (range, start, end) in [
        ("bytes=0-99", 0, 100),
        ("bytes=150000-", 150_000, 200_000),
        ("bytes=-10", 199_990, 200_000),
        ("bytes=70000-70000", 70_000, 70_001),
    ] {
        let part = get(Some(range)).await?;
        assert_eq!(part.status(), 206, "{range}");
        assert_eq!(
            part.headers()["content-range"],
            format!("bytes {start}-{}/200000", end - 1).as_str(),
            "{range}"
        );
        assert_eq!(
            part.bytes().await?.as_ref(),
            &content[start..end],
            "{range}"
        );
    }
    let beyond = get(Some("bytes=200000-")).await?;
    assert_eq!(beyond.status(), 416);
    assert_eq!(beyond.headers()["content-range"], "bytes */200000");
    // Several ranges at once are answered with the whole file, as RFC 9110 allows.
    assert_eq!(get(Some("bytes=0-1,5-6")).await?.status(), 200);
    running.stop().await;
    env.cleanup().await;
    Ok(())
}

/// The resident memory of this process (the notifier runs inside the test), in bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_of_a_large_image_hold_little_memory() -> anyhow::Result<()> {
    const SIZE: usize = 40 * 1024 * 1024;
    const READERS: usize = 60;
    let env = TestEnv::new().await;
    let running = env.start().await;
    std::fs::create_dir_all(env.media_dir.join("generations/big")).unwrap();
    std::fs::write(env.media_dir.join("generations/big/0.png"), vec![7u8; SIZE]).unwrap();
    let before = resident_bytes();
    // Each reader asks for the image, reads its first bytes and then stops reading.
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut stream = TcpStream::connect(&running.address).await?;
        stream
            .write_all(b"GET /media/generations/big/0.png HTTP/1.1\r\nHost: test\r\n\r\n")
            .await?;
        let mut first = [0u8; 512];
        let read = stream.read(&mut first).await?;
        assert!(first[..read].starts_with(b"HTTP/1.1 200"));
        readers.push(stream);
    }
    // Give the server every chance to read ahead into memory.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let grown = resident_bytes().saturating_sub(before);
    // Read whole, the files alone would be 60 × 40 MiB = 2.4 GiB. Streamed, each reader
    // holds a chunk and what the sockets buffer.
    assert!(
        grown < 150 * 1024 * 1024,
        "{READERS} stalled readers grew the process by {} MiB",
        grown / 1024 / 1024
    );
    drop(readers);
    running.stop().await;
    env.cleanup().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_the_notifier_serves_sends_a_referer() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let running = env.start().await;
    std::fs::create_dir_all(env.media_dir.join("generations/g4")).unwrap();
    std::fs::write(env.media_dir.join("generations/g4/0.png"), b"\x89PNG").unwrap();
    let http = shared::http::client_builder().build().unwrap();
    let token = env.token("u1");
    for path in [
        format!("/?token={token}"),
        "/app.js".to_owned(),
        "/style.css".to_owned(),
        "/media/generations/g4/0.png".to_owned(),
        "/media/generations/g4/missing.png".to_owned(),
        "/api/jobs".to_owned(),
        "/api/health".to_owned(),
        "/nowhere".to_owned(),
    ] {
        let response = http
            .get(format!("http://{}{path}", running.address))
            .send()
            .await?;
        assert_eq!(
            response
                .headers()
                .get("referrer-policy")
                .map(|v| v.to_str().unwrap()),
            Some("no-referrer"),
            "{path} answered {}",
            response.status()
        );
    }
    running.stop().await;
    env.cleanup().await;
    Ok(())
}
