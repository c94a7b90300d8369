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
