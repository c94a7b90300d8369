//! Delivering one connection's feed to its client, the same way over a WebSocket (`ws.rs`)
//! and over Server-Sent Events (`sse.rs`): the opening (hello and replay), the log page by
//! page when the client is far behind, then live events; pings; and the ending — the client
//! left, the server shuts down, the client cannot keep up or stopped answering.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::SocketConfig;
use crate::push::feed::{Feed, Opening};
use crate::push::frame::Frame;

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

/// What a client did while we waited for events.
pub enum Heard {
    /// Anything (a pong, a message): it is alive.
    Something,
    Closed,
    Error,
}

/// One transport to the browser.
pub trait Client: Send {
    /// Whether the client answers pings, so that its silence means it is gone.
    const ANSWERS_PINGS: bool;

    /// Sends one frame; false when the client is gone or did not take it in time.
    fn send(&mut self, frame: &Frame) -> impl Future<Output = bool> + Send;

    fn ping(&mut self) -> impl Future<Output = bool> + Send;

    /// Resolves when the client says something or goes away (cancel-safe).
    fn heard(&mut self) -> impl Future<Output = Heard> + Send;

    /// Says why the connection ends, where the transport can.
    fn close(&mut self, ending: Ending, reason: &'static str) -> impl Future<Output = ()> + Send;
}

/// Runs the connection until it ends.
pub async fn deliver<C: Client>(
    client: &mut C,
    mut feed: Feed,
    opening: Opening,
    settings: SocketConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Ending {
    let ending = run(client, &mut feed, opening, settings, &mut shutdown).await;
    if ending == Ending::TooSlow {
        metrics::counter!("notifier_slow_consumer_closes_total").increment(1);
    }
    ending
}

async fn run<C: Client>(
    client: &mut C,
    feed: &mut Feed,
    opening: Opening,
    settings: SocketConfig,
    shutdown: &mut watch::Receiver<bool>,
) -> Ending {
    let idle_timeout = Duration::from_secs(settings.idle_timeout_secs);
    if !client.send(&opening.hello).await || !send_all(client, &opening.replay).await {
        return Ending::TooSlow;
    }
    drop(opening);
    let ping_every = Duration::from_secs(settings.ping_secs.max(1));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut last_heard = Instant::now();
    let too_slow = feed.too_slow_signal();
    loop {
        // A client far behind gets the log page by page before live pushes again.
        if feed.has_more() {
            match feed.next_page().await {
                Ok(frames) if send_all(client, &frames).await => continue,
                Ok(_) => return Ending::TooSlow,
                Err(err) => return log_unavailable(client, feed, err).await,
            }
        }
        tokio::select! {
            _ = shutdown.changed() => {
                client.close(Ending::ServerShutdown, "server shutting down").await;
                return Ending::ServerShutdown;
            }
            _ = too_slow.notified() => {
                client.close(Ending::TooSlow, "too slow: send queue full").await;
                return Ending::TooSlow;
            }
            push = feed.recv() => {
                let Some(push) = push else { return Ending::Error };
                match feed.accept(push).await {
                    Ok(frames) if send_all(client, &frames).await => {}
                    Ok(_) => return Ending::TooSlow,
                    Err(err) => return log_unavailable(client, feed, err).await,
                }
            }
            heard = client.heard() => match heard {
                Heard::Something => last_heard = Instant::now(),
                Heard::Closed => return Ending::ClientClosed,
                Heard::Error => return Ending::Error,
            },
            _ = ping.tick() => {
                if C::ANSWERS_PINGS && last_heard.elapsed() > idle_timeout {
                    client.close(Ending::Unresponsive, "no answer to pings").await;
                    return Ending::Unresponsive;
                }
                if !client.ping().await {
                    return Ending::TooSlow;
                }
            }
        }
    }
}

async fn send_all<C: Client>(client: &mut C, frames: &[Frame]) -> bool {
    for frame in frames {
        if !client.send(frame).await {
            return false;
        }
    }
    true
}

/// The log cannot be read: the client is told, and resumes with `since` when it comes back.
async fn log_unavailable<C: Client>(
    client: &mut C,
    feed: &Feed,
    err: shared::db::DbError,
) -> Ending {
    tracing::warn!(user_id = %feed.user_id(), error = %err, "cannot read the event log; closing so the client resumes with since");
    client.close(Ending::Error, "event log unavailable").await;
    Ending::Error
}
