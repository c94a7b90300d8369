//! The WebSocket transport: the socket's settings, and the socket as a client of the shared
//! delivery loop (`deliver.rs`): hello, replay, live events, pings, and a close frame that
//! says why it ends (1001 going away, 1013 too slow, 1011 log unavailable). The handshake
//! is the web side's (`web/streams.rs`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::push::deliver::{Client, Ending, Heard, deliver};
use crate::push::feed::OpenError;
use crate::push::frame::Frame;
use crate::push::hub::Hub;
use crate::push::sessions::ConnectionLimit;

pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Buffers sized for many mostly idle sockets rather than throughput: clients only send
/// pongs and closes (control frames are at most 131 bytes), and events are small. A larger
/// message grows the read buffer for as long as it takes.
pub fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(256)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024))
}

/// Closes a socket that is not taken, saying why (1008: too many for this user, 1013: the
/// server is full, 1011: the event log is unavailable).
pub async fn refuse(mut socket: Socket, code: CloseCode, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.to_owned().into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(Some(frame))).await;
}

/// A WebSocket as a [`Client`] of [`deliver`].
struct WebSocketClient {
    socket: Socket,
    send_timeout: Duration,
}

impl WebSocketClient {
    async fn send_message(&mut self, message: Message) -> bool {
        matches!(
            tokio::time::timeout(self.send_timeout, self.socket.send(message)).await,
            Ok(Ok(()))
        )
    }
}

impl Client for WebSocketClient {
    const ANSWERS_PINGS: bool = true;

    async fn send(&mut self, frame: &Frame) -> bool {
        self.send_message(Message::Text(frame.json.clone())).await
    }

    async fn ping(&mut self) -> bool {
        self.send_message(Message::Ping(Bytes::new())).await
    }

    async fn heard(&mut self) -> Heard {
        match self.socket.next().await {
            Some(Ok(Message::Close(_))) | None => Heard::Closed,
            Some(Ok(_)) => Heard::Something,
            Some(Err(_)) => Heard::Error,
        }
    }

    /// A close frame with the reason, waiting at most a second (a stuck peer is dropped).
    /// Boxed: a waiting connection does not carry its state.
    async fn close(&mut self, ending: Ending, reason: &'static str) {
        let code = match ending {
            Ending::ServerShutdown | Ending::Unresponsive => CloseCode::Away,
            Ending::TooSlow => CloseCode::Again,
            Ending::Error => CloseCode::Error,
            Ending::ClientClosed => return,
        };
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = Box::pin(tokio::time::timeout(
            Duration::from_secs(1),
            self.socket.close(Some(frame)),
        ))
        .await;
    }
}

/// Runs one upgraded connection: opens its feed (refused with a close code that says why),
/// then delivers until it ends.
pub async fn serve(hub: Arc<Hub>, upgraded: Upgraded, user_id: String, since: Option<i64>) {
    let open = hub.track();
    let socket = WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Server,
        Some(socket_config()),
    )
    .await;
    let (feed, opening) = match hub.open_feed(&user_id, since).await {
        Ok(opened) => opened,
        Err(err) => {
            let code = match err {
                OpenError::Limit(ConnectionLimit::PerUser(_)) => CloseCode::Policy,
                OpenError::Limit(ConnectionLimit::Total(_)) => CloseCode::Again,
                OpenError::Db(_) => CloseCode::Error,
            };
            metrics::counter!("notifier_connections_refused_total", "reason" => code_label(code))
                .increment(1);
            tracing::warn!(%user_id, error = %err, "cannot open the feed; closing");
            Box::pin(refuse(socket, code, &err.to_string())).await;
            return;
        }
    };
    let replayed = opening.replay.len();
    tracing::info!(%user_id, ?since, replayed, "websocket connected");
    // The connection's long life in a task of its own, without the states of the upgrade
    // and the opening above: the smaller each waiting task, the more sockets fit (see
    // deploy/bench fanout).
    let (sockets, shutdown) = (hub.sockets, hub.shutdown_signal());
    tokio::spawn(async move {
        let mut client = WebSocketClient {
            socket,
            send_timeout: Duration::from_secs(sockets.send_timeout_secs),
        };
        let ending = deliver(&mut client, feed, opening, sockets, shutdown).await;
        tracing::info!(%user_id, ending = ending.as_str(), "websocket closed");
        drop(open);
    });
}

fn code_label(code: CloseCode) -> &'static str {
    match code {
        CloseCode::Policy => "per_user",
        CloseCode::Again => "total",
        _ => "event_log",
    }
}
