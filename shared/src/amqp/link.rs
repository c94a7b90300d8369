//! A RabbitMQ connection that comes back by itself after the broker (or a node of a
//! cluster) goes away, with the service's channels and consumers rebuilt on it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::amqp::direct_publish::DirectPublisher;
use crate::config::{AmqpConfig, AmqpNodes};

/// Something built on top of a connection (channels, consumers) that can tell whether it
/// still works. When it stops working the connection is rebuilt.
pub trait Link: Send + Sync + 'static {
    fn is_healthy(&self) -> bool;
}

impl Link for Channel {
    fn is_healthy(&self) -> bool {
        self.status().connected()
    }
}

impl Link for DirectPublisher {
    fn is_healthy(&self) -> bool {
        DirectPublisher::is_healthy(self)
    }
}

/// A [`DirectPublisher`] to the node the link is connected to, with the topology declared
/// on the link's lapin connection first: ingest's hot path.
pub fn direct_publisher(
    config: &AmqpConfig,
    connection_name: &str,
) -> Reconnecting<DirectPublisher> {
    let topology = config.topology();
    let name = format!(
        "{} (publishing)",
        connection_name_of_this_process(connection_name)
    );
    Reconnecting::spawn_on_node(
        config,
        connection_name,
        move |connection: Arc<Connection>, node: &str| {
            let topology = topology.clone();
            let node = node.to_owned();
            let name = name.clone();
            async move {
                topology.declare(&connection).await?;
                Ok(DirectPublisher::connect(&node, &name).await?)
            }
        },
    )
}

/// A channel in confirm mode on a [`Reconnecting`] connection, with the topology declared:
/// what a service that only publishes needs (ingest, the notifier's jobs API).
pub fn confirmed_channel(config: &AmqpConfig, connection_name: &str) -> Reconnecting<Channel> {
    let topology = config.topology();
    Reconnecting::spawn(
        config,
        connection_name,
        move |connection: Arc<Connection>| {
            let topology = topology.clone();
            async move {
                topology.declare(&connection).await?;
                let channel = connection.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                Ok(channel)
            }
        },
    )
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HEALTH_POLL: Duration = Duration::from_millis(200);

struct Live<T> {
    connection: Arc<Connection>,
    link: Arc<T>,
}

impl<T: Link> Live<T> {
    fn is_healthy(&self) -> bool {
        self.connection.status().connected() && self.link.is_healthy()
    }
}

type Slot<T> = Option<Arc<Live<T>>>;

/// A RabbitMQ connection kept alive in the background: connects (retrying with exponential
/// backoff from 100 ms to 5 s), runs `setup` to build the service's [`Link`], and starts
/// over whenever the connection or the link breaks. Until then [`Reconnecting::current`]
/// returns `None`, so callers fail fast instead of hanging.
pub struct Reconnecting<T> {
    current: watch::Receiver<Slot<T>>,
    stop: watch::Sender<bool>,
    supervisor: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl<T: Link> Reconnecting<T> {
    /// Starts connecting in the background; returns at once, even if the broker is down.
    pub fn spawn<F, Fut>(config: &AmqpConfig, connection_name: &str, setup: F) -> Self
    where
        F: Fn(Arc<Connection>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = lapin::Result<T>> + Send + 'static,
    {
        Self::spawn_on_node(config, connection_name, move |connection, _node| {
            setup(connection)
        })
    }

    /// [`Reconnecting::spawn`] whose `setup` is also told the URL of the node it is on
    /// (to open a second connection to the same node).
    pub fn spawn_on_node<F, Fut>(config: &AmqpConfig, connection_name: &str, setup: F) -> Self
    where
        F: Fn(Arc<Connection>, &str) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = lapin::Result<T>> + Send + 'static,
    {
        let (slot_tx, current) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let nodes = config
            .url
            .nodes()
            .iter()
            .map(|node| Node {
                url: node.as_str().to_owned(),
                shown: node.to_string(),
            })
            .collect();
        let supervisor = tokio::spawn(supervise(
            nodes,
            connection_name_of_this_process(connection_name),
            setup,
            slot_tx,
            stop_rx,
        ));
        Self {
            current,
            stop,
            supervisor: std::sync::Mutex::new(Some(supervisor)),
        }
    }

    /// The working link, or `None` while the broker is unreachable.
    pub fn current(&self) -> Option<Arc<T>> {
        let live = self.current.borrow().clone()?;
        live.is_healthy().then(|| live.link.clone())
    }

    pub fn is_connected(&self) -> bool {
        self.current().is_some()
    }

    /// Waits up to `timeout` for a working link.
    pub async fn wait_connected(&self, timeout: Duration) -> Option<Arc<T>> {
        let mut current = self.current.clone();
        let wait = async {
            loop {
                if let Some(link) = self.current() {
                    return link;
                }
                if current.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok()
    }

    /// Stops reconnecting and closes the connection cleanly.
    pub async fn close(&self) {
        let _ = self.stop.send(true);
        let supervisor = self.supervisor.lock().expect("not poisoned").take();
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
    }
}

impl<T> Drop for Reconnecting<T> {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// One broker node: its URL, and the same with the password hidden.
struct Node {
    url: String,
    shown: String,
}

/// One connection for a command-line tool: to the first node of `nodes` that answers (a
/// service keeps a [`Reconnecting`] link instead). The last node's error when none does.
pub async fn connect_once(nodes: &AmqpNodes, service: &str) -> lapin::Result<Connection> {
    let name = connection_name_of_this_process(service);
    let mut last_error = None;
    for node in nodes.nodes() {
        let properties = ConnectionProperties::default().with_connection_name(name.clone().into());
        match Connection::connect(node.as_str(), properties).await {
            Ok(connection) => return Ok(connection),
            Err(err) => {
                tracing::warn!(broker = %node, error = %err, "cannot connect to RabbitMQ; trying the next node");
                last_error = Some(err);
            }
        }
    }
    Err(last_error.expect("AMQP_URL names at least one node"))
}

/// The name the broker shows for a connection (`connection_name` in `rabbitmqctl
/// list_connections client_properties`): the service, this host (the pod's name under Kubernetes) and the
/// process id, so that an operator can tell which replica sits on which node.
pub fn connection_name_of_this_process(service: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{service} {} pid {}", host.trim(), std::process::id())
}

/// Connects to the nodes in turn: after a failure or a lost connection, the next one is
/// tried at once; only when a whole round failed does it wait (backoff).
async fn supervise<T, F, Fut>(
    nodes: Vec<Node>,
    connection_name: String,
    setup: F,
    slot: watch::Sender<Slot<T>>,
    mut stop: watch::Receiver<bool>,
) where
    T: Link,
    F: Fn(Arc<Connection>, &str) -> Fut,
    Fut: Future<Output = lapin::Result<T>>,
{
    let mut backoff = MIN_BACKOFF;
    let mut failures: u32 = 0;
    let mut index = 0;
    // Since when the service has had no broker (none before the first connection).
    let mut lost_at: Option<Instant> = None;
    loop {
        let node = &nodes[index % nodes.len()];
        let attempt = async {
            let properties = ConnectionProperties::default()
                .with_connection_name(connection_name.clone().into());
            let connection = Arc::new(Connection::connect(&node.url, properties).await?);
            let link = Arc::new(setup(connection.clone(), &node.url).await?);
            Ok::<_, lapin::Error>(Live { connection, link })
        };
        let outcome = tokio::select! {
            _ = stop.changed() => return,
            outcome = tokio::time::timeout(CONNECT_TIMEOUT, attempt) => outcome,
        };
        match outcome {
            Ok(Ok(live)) => {
                match lost_at.take() {
                    Some(lost) => {
                        metrics::histogram!("amqp_failover_seconds")
                            .record(lost.elapsed().as_secs_f64());
                        tracing::info!(broker = %node.shown, connection = %connection_name, failover_ms = lost.elapsed().as_millis() as u64, "connected to RabbitMQ again")
                    }
                    None => {
                        tracing::info!(broker = %node.shown, connection = %connection_name, "connected to RabbitMQ")
                    }
                }
                let live = Arc::new(live);
                slot.send_replace(Some(live.clone()));
                backoff = MIN_BACKOFF;
                failures = 0;
                let stopped = wait_until_broken(&live, &mut stop).await;
                slot.send_replace(None);
                if stopped {
                    let _ = live.connection.close(200, "shutting down".into()).await;
                    return;
                }
                lost_at = Some(Instant::now());
                // A channel closed while the connection stays up: after a nack (see
                // `publish_confirmed`) or a channel error the broker raised.
                let lost = if live.connection.status().connected() {
                    "channel"
                } else {
                    "connection"
                };
                metrics::counter!("amqp_links_lost_total", "lost" => lost).increment(1);
                tracing::warn!(broker = %node.shown, connection = %connection_name, lost, "lost the RabbitMQ link, reconnecting");
                let _ = live.connection.close(200, "reconnecting".into()).await;
                // The next node first: the one just lost may be the one that is down.
                index += 1;
                continue;
            }
            Ok(Err(err)) => {
                failures += 1;
                tracing::warn!(broker = %node.shown, connection = %connection_name, failures, error = %err, "cannot connect to RabbitMQ");
            }
            Err(_) => {
                failures += 1;
                tracing::warn!(broker = %node.shown, connection = %connection_name, failures, "connecting to RabbitMQ timed out");
            }
        }
        index += 1;
        if index % nodes.len() != 0 {
            continue; // the rest of the round first
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Returns `true` when asked to stop, `false` when the connection or link broke.
async fn wait_until_broken<T: Link>(live: &Live<T>, stop: &mut watch::Receiver<bool>) -> bool {
    let mut poll = tokio::time::interval(HEALTH_POLL);
    loop {
        tokio::select! {
            _ = stop.changed() => return true,
            _ = poll.tick() => {
                if !live.is_healthy() {
                    return false;
                }
            }
        }
    }
}
