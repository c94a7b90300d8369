//! One WebSocket connection: hello, replay, then live events; pings to keep it honest; closed
//! when it stops answering, when it cannot keep up, or when the server shuts down.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::config::SocketConfig;
use crate::replay::{Feed, Opening};

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

/// Why a connection ended, for the log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    ClientClosed,
    ServerShutdown,
    TooSlow,
    Unresponsive,
    Error,
}

impl Ending {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::ServerShutdown => "server_shutdown",
            Self::TooSlow => "too_slow",
            Self::Unresponsive => "unresponsive",
            Self::Error => "error",
        }
    }
}

pub async fn serve(
    mut socket: Socket,
    mut feed: Feed,
    opening: Opening,
    settings: SocketConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Ending {
    let send_timeout = Duration::from_secs(settings.send_timeout_secs);
    let idle_timeout = Duration::from_secs(settings.idle_timeout_secs);
    let mut first = vec![opening.hello];
    first.extend(opening.replay);
    for frame in first {
        if send(&mut socket, Message::Text(frame.json), send_timeout)
            .await
            .is_err()
        {
            return Ending::TooSlow;
        }
    }

    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(settings.ping_secs),
        Duration::from_secs(settings.ping_secs),
    );
    let mut last_heard = Instant::now();
    let too_slow = feed.too_slow_signal();
    let ending = loop {
        // A client far behind gets the log page by page before live pushes again.
        if feed.has_more() {
            match feed.next_page().await {
                Ok(frames) => {
                    let mut failed = false;
                    for frame in frames {
                        if send(&mut socket, Message::Text(frame.json), send_timeout)
                            .await
                            .is_err()
                        {
                            failed = true;
                            break;
                        }
                    }
                    if failed {
                        break Ending::TooSlow;
                    }
                    continue;
                }
                Err(err) => {
                    tracing::warn!(user_id = %feed.user_id(), error = %err, "cannot read the event log; closing so the client resumes with since");
                    Box::pin(close(
                        &mut socket,
                        CloseCode::Error,
                        "event log unavailable",
                    ))
                    .await;
                    break Ending::Error;
                }
            }
        }
        tokio::select! {
            _ = shutdown.changed() => {
                Box::pin(close(&mut socket, CloseCode::Away, "server shutting down")).await;
                break Ending::ServerShutdown;
            }
            _ = too_slow.notified() => {
                Box::pin(close(&mut socket, CloseCode::Again, "too slow: send queue full")).await;
                break Ending::TooSlow;
            }
            push = feed.recv() => {
                let Some(push) = push else { break Ending::Error };
                let frames = match feed.accept(push).await {
                    Ok(frames) => frames,
                    Err(err) => {
                        tracing::warn!(user_id = %feed.user_id(), error = %err, "cannot read the event log; closing so the client resumes with since");
                        Box::pin(close(&mut socket, CloseCode::Error, "event log unavailable")).await;
                        break Ending::Error;
                    }
                };
                let mut failed = false;
                for frame in frames {
                    if send(&mut socket, Message::Text(frame.json), send_timeout).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed {
                    break Ending::TooSlow;
                }
            }
            message = socket.next() => match message {
                Some(Ok(Message::Close(_))) | None => break Ending::ClientClosed,
                Some(Ok(_)) => last_heard = Instant::now(),
                Some(Err(_)) => break Ending::Error,
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > idle_timeout {
                    Box::pin(close(&mut socket, CloseCode::Away, "no answer to pings")).await;
                    break Ending::Unresponsive;
                }
                if send(&mut socket, Message::Ping(Bytes::new()), send_timeout).await.is_err() {
                    break Ending::TooSlow;
                }
            }
        }
    };
    if ending == Ending::TooSlow {
        metrics::counter!("notifier_slow_consumer_closes_total").increment(1);
    }
    ending
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

async fn send(socket: &mut Socket, message: Message, timeout: Duration) -> Result<(), ()> {
    match tokio::time::timeout(timeout, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Sends a close frame with a reason, waiting at most a second (a stuck peer gets dropped).
async fn close(socket: &mut Socket, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(Some(frame))).await;
}
