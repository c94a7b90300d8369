//! `AMQP_URL` with several nodes: a service connects to the first that answers, and when
//! the node it is on goes away it fails over to the next by itself. Against the real
//! broker, one "node" being a proxy in front of it that can be taken down.

use std::sync::Arc;
use std::time::Duration;

use lapin::{Channel, Connection};
use shared::amqp::Reconnecting;
use shared::config::AmqpConfig;
use shared::testing::{Mode, ServiceProxy, amqp_url, upstream_of};

fn channel_link(config: &AmqpConfig) -> Reconnecting<Channel> {
    Reconnecting::spawn(
        config,
        "failover-test",
        |connection: Arc<Connection>| async move { connection.create_channel().await },
    )
}

/// A URL nothing listens on.
fn dead_node() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_node_is_passed_over() {
    let config = AmqpConfig::new(&format!("{} {}", dead_node(), amqp_url()), "").unwrap();
    assert_eq!(config.url.nodes().len(), 2);
    let link = channel_link(&config);
    assert!(
        link.wait_connected(Duration::from_secs(10)).await.is_some(),
        "connected through the second node"
    );
    link.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_node_in_use_fails_over_to_the_next() {
    let real = amqp_url();
    let proxy = ServiceProxy::start(upstream_of(&real)).await;
    let config = AmqpConfig::new(&format!("{}, {real}", proxy.url(&real)), "").unwrap();
    let link = channel_link(&config);
    let first = link
        .wait_connected(Duration::from_secs(10))
        .await
        .expect("connected through the first node");

    // The first node goes away and stays away: the link comes back through the second.
    proxy.set(Mode::Down);
    shared::testing::eventually(Duration::from_secs(10), || async {
        link.current()
            .is_some_and(|channel| !Arc::ptr_eq(&channel, &first))
    })
    .await
    .expect("failed over to the second node");
    assert!(
        !first.status().connected(),
        "the first node's channel is gone"
    );
    link.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_line_connection_passes_over_a_dead_node() {
    let config = AmqpConfig::new(&format!("{}, {}", dead_node(), amqp_url()), "").unwrap();
    let connection = shared::amqp::connect_once(&config.url, "failover-test")
        .await
        .expect("connected through the second node");
    assert!(connection.status().connected());

    let only_dead = AmqpConfig::new(&dead_node(), "").unwrap();
    assert!(
        shared::amqp::connect_once(&only_dead.url, "failover-test")
            .await
            .is_err(),
        "no node answers: an error, not a hang"
    );
}
