//! A TCP proxy in front of the real broker that a test can cut and restore, to show what
//! ingest does while RabbitMQ is away, without disturbing the broker itself.

use std::net::SocketAddr;

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
    /// Every connection is closed and new ones are dropped at once: the broker is gone.
    Down,
}

pub struct BrokerProxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
}

impl BrokerProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode, watcher) = watch::channel(Mode::Forward);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *watcher.borrow() == Mode::Down {
                    continue; // dropped: closed at once
                }
                tokio::spawn(pipe(client, upstream, watcher.clone()));
            }
        });
        Self { port, mode }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// The broker URL `base` with host and port replaced by this proxy's.
    pub fn url(&self, base: &str) -> String {
        let uri: lapin::uri::AMQPUri = base.parse().unwrap();
        let user = &uri.authority.userinfo;
        format!(
            "amqp://{}:{}@127.0.0.1:{}/{}",
            user.username,
            user.password,
            self.port,
            uri.vhost.replace('/', "%2f")
        )
    }
}

pub fn upstream_of(url: &str) -> SocketAddr {
    let uri: lapin::uri::AMQPUri = url.parse().unwrap();
    let host = if uri.authority.host == "localhost" {
        "127.0.0.1"
    } else {
        &uri.authority.host
    };
    format!("{host}:{}", uri.authority.port).parse().unwrap()
}

async fn pipe(client: TcpStream, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let mut down = mode.clone();
    tokio::select! {
        _ = forward(client_read, server_write, mode.clone()) => {}
        _ = forward(server_read, client_write, mode) => {}
        _ = down.wait_for(|m| *m == Mode::Down) => {}
    }
}

async fn forward(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        match mode.wait_for(|m| *m != Mode::Freeze).await.map(|m| *m) {
            Ok(Mode::Forward) => {}
            _ => return,
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
