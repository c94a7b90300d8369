//! Who is connected here, and the broker bindings that follow them: this instance's queue
//! is bound to `user.<id>` while that user has a socket open here and unbound when the last
//! one closes, so each notifier receives only the events it has someone to give to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use shared::amqp::{Link, Reconnecting, Topology};
use shared::config::AmqpConfig;
use shared::events::routing_key;
use tokio::sync::{Notify, mpsc};

use crate::push::frame::Push;

struct SocketHandle {
    tx: mpsc::Sender<Push>,
    /// Told when the socket cannot keep up: its queue is full.
    too_slow: Arc<Notify>,
}

#[derive(Default)]
struct UserEntry {
    sockets: HashMap<u64, SocketHandle>,
    /// Serialises bind/unbind of this user's routing key; true while bound.
    bound: Arc<tokio::sync::Mutex<bool>>,
}

/// The instance's queue and its consumer; rebuilt after a reconnect.
pub struct EventsLink {
    channel: Channel,
    queue: String,
    pub consumer: Consumer,
}

impl Link for EventsLink {
    fn is_healthy(&self) -> bool {
        self.channel.status().connected()
    }
}

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionLimit {
    #[error("too many connections for this user (at most {0})")]
    PerUser(usize),
    #[error("this server holds as many connections as it may ({0}); retry later")]
    Total(usize),
}

pub struct Sessions {
    users: Mutex<HashMap<String, UserEntry>>,
    next_id: AtomicU64,
    queue_capacity: usize,
    /// Registered connections, and the most this instance and one user may have.
    registered: std::sync::atomic::AtomicUsize,
    max_total: usize,
    max_per_user: usize,
    topology: Topology,
    link: OnceLock<Reconnecting<EventsLink>>,
}

/// One open connection's place in [`Sessions`]; dropping it unregisters it.
pub struct Registration {
    sessions: Arc<Sessions>,
    pub user_id: String,
    id: u64,
    pub rx: mpsc::Receiver<Push>,
    pub too_slow: Arc<Notify>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let sessions = self.sessions.clone();
        let user_id = std::mem::take(&mut self.user_id);
        let id = self.id;
        tokio::spawn(async move { sessions.unregister(&user_id, id).await });
    }
}

impl Sessions {
    /// Starts the broker link (an exclusive queue of this instance's) in the background.
    pub fn start(amqp: &AmqpConfig, settings: &crate::config::SocketConfig) -> Arc<Self> {
        let sessions = Arc::new(Self {
            users: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            queue_capacity: settings.send_queue.max(1),
            registered: std::sync::atomic::AtomicUsize::new(0),
            max_total: settings.max_connections.max(1),
            max_per_user: settings.max_connections_per_user.max(1),
            topology: amqp.topology(),
            link: OnceLock::new(),
        });
        let for_setup = Arc::downgrade(&sessions);
        let link = Reconnecting::spawn(amqp, "notifier", move |connection: Arc<Connection>| {
            let sessions = for_setup.clone();
            async move {
                let sessions = sessions.upgrade().ok_or_else(|| {
                    lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
                        lapin::ConnectionState::Closed,
                    ))
                })?;
                sessions.open_link(&connection).await
            }
        });
        let _ = sessions.link.set(link);
        sessions
    }

    async fn open_link(&self, connection: &Connection) -> lapin::Result<EventsLink> {
        self.topology.declare(connection).await?;
        let channel = connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let queue = declared.name().to_string();
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "notifier".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(EventsLink {
            channel,
            queue,
            consumer,
        })
    }

    pub(crate) fn link(&self) -> &Reconnecting<EventsLink> {
        self.link.get().expect("set at start")
    }

    pub fn broker_connected(&self) -> bool {
        self.link().is_connected()
    }

    pub async fn close(&self) {
        self.link().close().await;
    }

    pub fn user_ids(&self) -> Vec<String> {
        self.users
            .lock()
            .expect("not poisoned")
            .keys()
            .cloned()
            .collect()
    }

    pub fn connection_count(&self) -> usize {
        self.users
            .lock()
            .expect("not poisoned")
            .values()
            .map(|entry| entry.sockets.len())
            .sum()
    }

    /// Registers a connection of `user_id` and makes sure its events are routed here
    /// before returning (subscribe first, then read the log: no gap).
    pub async fn register(
        self: &Arc<Self>,
        user_id: &str,
    ) -> Result<Registration, ConnectionLimit> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        let too_slow = Arc::new(Notify::new());
        let bound = {
            let mut users = self.users.lock().expect("not poisoned");
            // The user's own limit is the more useful reason to give.
            if users
                .get(user_id)
                .is_some_and(|entry| entry.sockets.len() >= self.max_per_user)
            {
                return Err(ConnectionLimit::PerUser(self.max_per_user));
            }
            if self.registered.load(Ordering::Relaxed) >= self.max_total {
                return Err(ConnectionLimit::Total(self.max_total));
            }
            self.registered.fetch_add(1, Ordering::Relaxed);
            let entry = users.entry(user_id.to_owned()).or_default();
            entry.sockets.insert(
                id,
                SocketHandle {
                    tx,
                    too_slow: too_slow.clone(),
                },
            );
            entry.bound.clone()
        };
        let mut bound = bound.lock().await;
        if !*bound {
            *bound = self.bind_now(user_id).await;
        }
        metrics::gauge!("notifier_connections").increment(1.0);
        Ok(Registration {
            sessions: self.clone(),
            user_id: user_id.to_owned(),
            id,
            rx,
            too_slow,
        })
    }

    async fn unregister(&self, user_id: &str, id: u64) {
        metrics::gauge!("notifier_connections").decrement(1.0);
        let bound = {
            let mut users = self.users.lock().expect("not poisoned");
            let Some(entry) = users.get_mut(user_id) else {
                return;
            };
            if entry.sockets.remove(&id).is_some() {
                self.registered.fetch_sub(1, Ordering::Relaxed);
            }
            if !entry.sockets.is_empty() {
                return;
            }
            entry.bound.clone()
        };
        let mut bound = bound.lock().await;
        // Someone may have connected while we waited for the lock.
        let still_empty = {
            let mut users = self.users.lock().expect("not poisoned");
            let empty = users
                .get(user_id)
                .is_some_and(|entry| entry.sockets.is_empty());
            if empty {
                users.remove(user_id);
            }
            empty
        };
        if still_empty && *bound {
            self.unbind_now(user_id).await;
            *bound = false;
        }
    }

    /// Binds every connected user to a new link's queue (the old queue and its bindings
    /// died with the old connection). Called once the link is current, so a connection
    /// that registers meanwhile is either seen here or binds by itself: none is missed.
    pub(crate) async fn rebind_all(&self, link: &EventsLink) {
        for user_id in self.user_ids() {
            let bound = match self.users.lock().expect("not poisoned").get(&user_id) {
                Some(entry) => entry.bound.clone(),
                None => continue,
            };
            let mut bound = bound.lock().await;
            match bind(&link.channel, &link.queue, &self.topology, &user_id).await {
                Ok(()) => *bound = true,
                Err(err) => {
                    *bound = false;
                    tracing::warn!(%user_id, error = %err, "cannot bind the user's events; will resync after reconnect");
                }
            }
        }
    }

    async fn bind_now(&self, user_id: &str) -> bool {
        let Some(link) = self.link().current() else {
            // Bound by `rebind_all` once the link is back.
            return false;
        };
        match bind(&link.channel, &link.queue, &self.topology, user_id).await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(%user_id, error = %err, "cannot bind the user's events; will resync after reconnect");
                false
            }
        }
    }

    async fn unbind_now(&self, user_id: &str) {
        let Some(link) = self.link().current() else {
            return; // the queue died with the connection, and its bindings with it
        };
        let unbound = link
            .channel
            .queue_unbind(
                link.queue.as_str().into(),
                self.topology.events_exchange().into(),
                routing_key(user_id).into(),
                FieldTable::default(),
            )
            .await;
        if let Err(err) = unbound {
            tracing::warn!(%user_id, error = %err, "cannot unbind the user's events");
        }
    }

    /// Whether this instance's queue is bound to the user's events right now.
    pub async fn is_bound(&self, user_id: &str) -> bool {
        let bound = {
            let users = self.users.lock().expect("not poisoned");
            match users.get(user_id) {
                Some(entry) => entry.bound.clone(),
                None => return false,
            }
        };
        *bound.lock().await
    }

    /// Hands an event to every connection of its user. A connection whose queue is full is
    /// told it is too slow (it closes itself); the others are not held up.
    /// Returns how many connections it was handed to.
    pub fn deliver(&self, user_id: &str, push: Push) -> usize {
        let users = self.users.lock().expect("not poisoned");
        let Some(entry) = users.get(user_id) else {
            return 0;
        };
        for socket in entry.sockets.values() {
            if let Err(mpsc::error::TrySendError::Full(_)) = socket.tx.try_send(push.clone()) {
                socket.too_slow.notify_one();
            }
        }
        entry.sockets.len()
    }

    pub(crate) fn resync_all(&self) {
        let users = self.users.lock().expect("not poisoned");
        for entry in users.values() {
            for socket in entry.sockets.values() {
                if let Err(mpsc::error::TrySendError::Full(_)) = socket.tx.try_send(Push::Resync) {
                    socket.too_slow.notify_one();
                }
            }
        }
    }
}

async fn bind(
    channel: &Channel,
    queue: &str,
    topology: &Topology,
    user_id: &str,
) -> lapin::Result<()> {
    channel
        .queue_bind(
            queue.into(),
            topology.events_exchange().into(),
            routing_key(user_id).into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}
