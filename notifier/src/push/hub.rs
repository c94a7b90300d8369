//! The push side as one thing the web side holds: who is connected ([`Sessions`]) and the
//! broker link that follows them, the event log for replay, the sockets' settings, the
//! shutdown signal, and the count of open connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use shared::config::AmqpConfig;
use shared::db::Pool;
use tokio::sync::watch;

use crate::config::SocketConfig;
use crate::push::dispatch::dispatch;
use crate::push::feed::{Feed, OpenError, Opening};
use crate::push::sessions::Sessions;

pub struct Hub {
    pub sessions: Arc<Sessions>,
    pool: Pool,
    pub sockets: SocketConfig,
    shutdown: watch::Receiver<bool>,
    /// Open WebSocket and SSE connections (for health and graceful shutdown).
    open: AtomicUsize,
}

impl Hub {
    /// Connects to the broker in the background and starts handing its events to the
    /// connections; `shutdown` turning true closes every connection.
    pub fn start(
        amqp: &AmqpConfig,
        sockets: SocketConfig,
        pool: Pool,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let sessions = Sessions::start(amqp, &sockets);
        tokio::spawn(dispatch(Arc::downgrade(&sessions)));
        Arc::new(Self {
            sessions,
            pool,
            sockets,
            shutdown,
            open: AtomicUsize::new(0),
        })
    }

    pub fn broker_connected(&self) -> bool {
        self.sessions.broker_connected()
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Subscribes `user_id`, then reads what it missed since `since` (see [`Feed::open`]).
    pub async fn open_feed(
        &self,
        user_id: &str,
        since: Option<i64>,
    ) -> Result<(Feed, Opening), OpenError> {
        Box::pin(Feed::open(&self.sessions, &self.pool, user_id, since)).await
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// Counts a connection as open until the returned guard drops.
    pub(crate) fn track(self: &Arc<Self>) -> OpenConnection {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    /// Closes the broker connection.
    pub async fn close(&self) {
        self.sessions.close().await;
    }
}

/// A connection counted as open for as long as it lives.
pub(crate) struct OpenConnection(Arc<Hub>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}
