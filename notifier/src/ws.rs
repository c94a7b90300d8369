//! `/ws`: the handshake, the socket's settings, and the WebSocket as a client of the shared
//! delivery loop (`deliver.rs`): hello, replay, live events, pings, and a close frame that
//! says why it ends (1001 going away, 1013 too slow, 1011 log unavailable).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::upgrade::Upgraded;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::deliver::{Client, Ending, Heard, deliver};
use crate::http::{AppState, Body, OpenConnection, authenticate, full, json, query, since};
use crate::replay::{Feed, Frame, OpenError};
use crate::sessions::ConnectionLimit;

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

/// `/ws`: checks the token and the handshake, answers 101, then runs the connection in a
/// task of its own.
pub async fn upgrade(mut request: Request<Incoming>, state: Arc<AppState>) -> Response<Body> {
    let user_id = match authenticate(&request, &state) {
        Ok(user_id) => user_id,
        Err(refusal) => return refusal.into_response(),
    };
    let since = match since(query(&request).get("since").map(String::as_str)) {
        Ok(since) => since,
        Err(refusal) => return refusal.into_response(),
    };
    let headers = request.headers();
    let upgrade_ok = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "not a WebSocket upgrade"}),
        );
    };
    if !upgrade_ok || !version_ok {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "not a WebSocket upgrade (version 13)"}),
        );
    }

    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(error = %err, "upgrade failed");
                return;
            }
        };
        let open = OpenConnection::new(state.clone());
        let socket = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(socket_config()),
        )
        .await;
        let (feed, opening) = match Box::pin(Feed::open(
            &state.sessions,
            &state.pool,
            &user_id,
            since,
        ))
        .await
        {
            Ok(opened) => opened,
            Err(err) => {
                let code = match err {
                    OpenError::Limit(ConnectionLimit::PerUser(_)) => CloseCode::Policy,
                    OpenError::Limit(ConnectionLimit::Total(_)) => CloseCode::Again,
                    OpenError::Db(_) => CloseCode::Error,
                };
                metrics::counter!("notifier_connections_refused_total", "reason" => code_label(code)).increment(1);
                tracing::warn!(%user_id, error = %err, "cannot open the feed; closing");
                Box::pin(refuse(socket, code, &err.to_string())).await;
                return;
            }
        };
        let replayed = opening.replay.len();
        tracing::info!(%user_id, ?since, replayed, "websocket connected");
        // The connection's long life in a task of its own, without the states of the
        // upgrade and the opening above: the smaller each waiting task, the more sockets
        // fit (see deploy/bench fanout).
        let (sockets, shutdown) = (state.sockets, state.shutdown.clone());
        tokio::spawn(async move {
            let mut client = WebSocketClient {
                socket,
                send_timeout: Duration::from_secs(sockets.send_timeout_secs),
            };
            let ending = deliver(&mut client, feed, opening, sockets, shutdown).await;
            tracing::info!(%user_id, ending = ending.as_str(), "websocket closed");
            drop(open);
        });
    });

    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("base64 is a valid header"),
    );
    response
}

fn code_label(code: CloseCode) -> &'static str {
    match code {
        CloseCode::Policy => "per_user",
        CloseCode::Again => "total",
        _ => "event_log",
    }
}
