//! A TCP proxy in front of the real broker or database that a test can cut, freeze and
//! restore, to show what a service does while RabbitMQ or PostgreSQL is away, without
//! disturbing the real server (other tests keep using it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes flow both ways.
    Forward,
    /// Connections stay open but no byte moves: the broker hangs.
    Freeze,
    /// What the client sends is held; what the service sends still arrives: a client
    /// that receives but whose answers (acks, commits) never reach the service.
    HoldRequests,
    /// Every connection is closed and new ones are dropped at once: the broker is gone.
    Down,
}

impl Mode {
    /// Whether bytes going `toward_service` (or back) wait in this mode.
    fn holds(self, toward_service: bool) -> bool {
        match self {
            Self::Freeze => true,
            Self::HoldRequests => toward_service,
            Self::Forward | Self::Down => false,
        }
    }
}

pub struct ServiceProxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    /// Reads waiting for a frozen proxy to move again: proof that a client sent something
    /// the service has not received.
    held: Arc<AtomicUsize>,
}

impl ServiceProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode, watcher) = watch::channel(Mode::Forward);
        let held = Arc::new(AtomicUsize::new(0));
        let counted = held.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *watcher.borrow() == Mode::Down {
                    continue; // dropped: closed at once
                }
                tokio::spawn(pipe(client, upstream, watcher.clone(), counted.clone()));
            }
        });
        Self { port, mode, held }
    }

    /// Waits until a frozen proxy holds bytes a client sent (up to 10 s; panics after).
    pub async fn wait_until_holding(&self) {
        crate::testing::eventually(Duration::from_secs(10), || async {
            self.held.load(Ordering::Relaxed) > 0
        })
        .await
        .expect("something was sent through the frozen proxy");
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// `url` (AMQP or PostgreSQL) with its host and port replaced by this proxy's.
    pub fn url(&self, url: &str) -> String {
        with_port(url, self.port)
    }
}

fn with_port(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let userinfo = authority
        .rsplit_once('@')
        .map(|(user, _)| format!("{user}@"));
    format!(
        "{scheme}://{}127.0.0.1:{port}{path}",
        userinfo.unwrap_or_default()
    )
}

/// The `host:port` a broker or database URL points at.
pub fn upstream_of(url: &str) -> SocketAddr {
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port.parse().expect("the URL names host:port")
}

async fn pipe(
    client: TcpStream,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    held: Arc<AtomicUsize>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let mut down = mode.clone();
    tokio::select! {
        _ = forward(client_read, server_write, true, mode.clone(), held.clone()) => {}
        _ = forward(server_read, client_write, false, mode, held) => {}
        _ = down.wait_for(|m| *m == Mode::Down) => {}
    }
}

async fn forward(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    toward_service: bool,
    mut mode: watch::Receiver<Mode>,
    held: Arc<AtomicUsize>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let frozen = mode.borrow().holds(toward_service);
        if frozen {
            held.fetch_add(1, Ordering::Relaxed);
        }
        let moving = mode
            .wait_for(|m| !m.holds(toward_service))
            .await
            .map(|m| *m);
        if frozen {
            held.fetch_sub(1, Ordering::Relaxed);
        }
        match moving {
            Ok(Mode::Forward | Mode::HoldRequests) => {}
            Ok(Mode::Down | Mode::Freeze) | Err(_) => return,
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_pointed_at_the_proxy() {
        let amqp = "amqp://guest:guest@127.0.0.1:5672/%2f";
        let postgres = "postgres://postgres@localhost:5432/test_db?sslmode=disable";
        assert_eq!(upstream_of(amqp).to_string(), "127.0.0.1:5672");
        assert_eq!(upstream_of(postgres).to_string(), "127.0.0.1:5432");
        assert_eq!(
            with_port(amqp, 1234),
            "amqp://guest:guest@127.0.0.1:1234/%2f"
        );
        assert_eq!(
            with_port(postgres, 99),
            "postgres://postgres@127.0.0.1:99/test_db?sslmode=disable"
        );
    }
}
