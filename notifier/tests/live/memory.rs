//! A real notifier process holds a few thousand idle sockets, counts them, and keeps each
//! one small. The figure (stdout and target/tmp/notifier-memory.txt) is the benchmark's
//! (`deploy/bench sockets`); this test only refuses a socket that costs as much as a
//! default-sized WebSocket buffer, which would mean the idle-socket settings were lost.

use std::time::Duration;

use tokio::process::Command;

use crate::helpers::{TestEnv, connect, next_json};

/// Sockets opened: 2,000, or `NOTIFIER_MEMORY_SOCKETS` (`deploy/bench sockets` opens 10,000).
fn socket_count() -> usize {
    std::env::var("NOTIFIER_MEMORY_SOCKETS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000)
}

const USERS: usize = 100;

/// Far above what an idle socket costs here (about 6 KiB), far below a default WebSocket
/// read buffer (128 KiB).
const MOST_BYTES_PER_SOCKET: u64 = 64 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_sockets_are_held_counted_and_kept_small() {
    let count = socket_count();
    let env = TestEnv::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let config = &env.config;
    let mut child = Command::new(env!("CARGO_BIN_EXE_notifier"))
        .env_clear()
        .env("NOTIFIER_ADDR", &address)
        .env("NOTIFIER_JWT_SECRET", crate::helpers::JWT_SECRET)
        // Many sockets per user here: the per-user cap is not what this measures.
        .env("NOTIFIER_MAX_CONNECTIONS_PER_USER", count.to_string())
        .env("DATABASE_URL", config.database.url.as_str())
        .env("AMQP_URL", config.amqp.url.as_str())
        .env("AMQP_NAME_PREFIX", &config.amqp.name_prefix)
        .env("STORAGE_URL", &config.storage.url)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let client = shared::http::client_builder().build().unwrap();
    let health = format!("http://{address}/api/health");
    shared::testing::eventually(Duration::from_secs(10), || async {
        client
            .get(&health)
            .send()
            .await
            .is_ok_and(|response| response.status() == 200)
    })
    .await
    .expect("the notifier process becomes healthy");
    // Warm up allocator and pools with a few sockets first.
    let mut sockets = Vec::with_capacity(count);
    for i in 0..10 {
        let mut socket = connect(
            &address,
            &format!("token={}", env.token(&format!("user-{}", i % USERS))),
        )
        .await
        .unwrap();
        next_json(&mut socket, Duration::from_secs(5))
            .await
            .unwrap();
        sockets.push(socket);
    }
    let before = rss_kib(pid);
    for i in 10..count {
        let mut socket = connect(
            &address,
            &format!("token={}", env.token(&format!("user-{}", i % USERS))),
        )
        .await
        .unwrap();
        next_json(&mut socket, Duration::from_secs(5))
            .await
            .expect("hello");
        sockets.push(socket);
    }
    // Every socket has had its hello: each connection's task runs.
    let after = rss_kib(pid);
    let reported: serde_json::Value = shared::testing::get_json(&client, &health).await;
    assert_eq!(reported["connections"], count);

    let per_socket = (after.saturating_sub(before)) * 1024 / (count as u64 - 10);
    let report = format!(
        "notifier RSS: {before} KiB with 10 sockets, {after} KiB with {count} idle sockets ({USERS} users): {per_socket} bytes per socket\n"
    );
    print!("{report}");
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("notifier-memory.txt"),
        &report,
    );

    assert!(
        per_socket < MOST_BYTES_PER_SOCKET,
        "an idle socket costs {per_socket} bytes"
    );
    drop(sockets);
    child.kill().await.unwrap();
    env.cleanup().await;
}
