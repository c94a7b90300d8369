//! The topology against the real broker: every queue is a quorum queue (so a cluster keeps
//! each on three nodes), declaring is idempotent, a broker holding the queues of an earlier
//! version (classic delay queues, quorum queues without a replica count) is taken as it is,
//! and the old delay queues are retired once empty, never while they hold a message.

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use shared::amqp::{RETRY_DELAYS, Topology};
use shared::testing::{amqp_url, queue_depth, unique_name};

async fn connect() -> Connection {
    Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("the real RabbitMQ")
}

/// Whether `queue` exists (a passive declare, on a channel of its own).
async fn exists(connection: &Connection, queue: &str) -> bool {
    let channel = connection.create_channel().await.unwrap();
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .is_ok()
}

/// Declares a queue the way an earlier version did, with `args`.
async fn declare_old(connection: &Connection, queue: &str, args: &[(&str, AMQPValue)]) {
    let channel = connection.create_channel().await.unwrap();
    let mut table = FieldTable::default();
    for (key, value) in args {
        table.insert((*key).into(), value.clone());
    }
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), options, table)
        .await
        .unwrap();
}

/// A queue's type as the broker reports it (`rabbitmqctl list_queues name type`).
fn queue_type(queue: &str) -> Option<String> {
    let output = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "type", "--no-table-headers"])
        .output()
        .expect("rabbitmqctl beside the broker");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(name, _)| *name == queue)
        .map(|(_, kind)| kind.trim().to_owned())
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_is_quorum_and_declaring_twice_changes_nothing() {
    let connection = connect().await;
    let topology = Topology::new(&format!("{}.", unique_name("topology")));
    topology.declare(&connection).await.unwrap();
    topology.declare(&connection).await.unwrap();
    let mut queues = vec![topology.webhooks_queue(), topology.dead_letter_queue()];
    queues.extend(RETRY_DELAYS.iter().map(|d| topology.retry_queue(*d)));
    for queue in &queues {
        assert_eq!(queue_type(queue).as_deref(), Some("quorum"), "{queue}");
    }
    let channel = connection.create_channel().await.unwrap();
    topology.delete(&channel).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_versions_queues_are_used_and_old_delay_queues_retired_once_empty() {
    let connection = connect().await;
    let prefix = format!("{}.", unique_name("legacy"));
    let topology = Topology::new(&prefix);
    // What an earlier version declared: the work queue without a replica count or
    // dead-letter strategy, and classic delay queues.
    declare_old(
        &connection,
        &topology.webhooks_queue(),
        &[
            ("x-queue-type", text("quorum")),
            ("x-dead-letter-exchange", text("")),
            (
                "x-dead-letter-routing-key",
                text(&topology.dead_letter_queue()),
            ),
            ("x-delivery-limit", AMQPValue::LongLongInt(20)),
        ],
    )
    .await;
    let legacy: Vec<String> = RETRY_DELAYS
        .iter()
        .map(|d| format!("{prefix}replicate.webhooks.retry.{}s", d.as_secs()))
        .collect();
    for (queue, delay) in legacy.iter().zip(RETRY_DELAYS) {
        declare_old(
            &connection,
            queue,
            &[
                (
                    "x-message-ttl",
                    AMQPValue::LongLongInt(delay.as_millis() as i64),
                ),
                ("x-dead-letter-exchange", text("")),
                (
                    "x-dead-letter-routing-key",
                    text(&topology.webhooks_queue()),
                ),
            ],
        )
        .await;
    }
    // A retry waiting in the longest old delay queue.
    let waiting = legacy.last().unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            "".into(),
            waiting.as_str().into(),
            BasicPublishOptions::default(),
            b"a retry in flight",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let probe = connection.create_channel().await.unwrap();
    assert!(
        shared::testing::eventually(std::time::Duration::from_secs(5), || async {
            queue_depth(&probe, waiting).await == 1
        })
        .await
        .is_ok()
    );

    // This version declares over them without failing, then retires the empty ones.
    topology
        .declare(&connection)
        .await
        .expect("declared over an earlier version");
    topology.retire_legacy_retry_queues(&connection).await;
    assert_eq!(
        queue_type(&topology.webhooks_queue()).as_deref(),
        Some("quorum")
    );
    for queue in &legacy[..legacy.len() - 1] {
        assert!(!exists(&connection, queue).await, "{queue} retired");
    }
    assert!(
        exists(&connection, waiting).await,
        "an old delay queue holding a message is left until it drains"
    );
    assert_eq!(queue_depth(&probe, waiting).await, 1);

    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(waiting.as_str().into(), Default::default())
        .await
        .unwrap();
    topology.delete(&channel).await.unwrap();
}
