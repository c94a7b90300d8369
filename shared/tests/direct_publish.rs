//! The direct publisher against the real broker: every publish confirmed and delivered
//! intact whatever thread it came from, refusals (unroutable, nack, a closed channel)
//! answered as errors, and a broken connection saying so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use shared::amqp::direct_publish::DirectPublisher;
use shared::amqp::{Outgoing, PublishError};
use shared::testing::{amqp_url, unique_name};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A queue of its own on a lapin channel (to declare, read back and delete).
struct Queue {
    name: String,
    channel: Channel,
    _connection: Connection,
}

impl Queue {
    async fn declare(arguments: FieldTable) -> Self {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ is running");
        let channel = connection.create_channel().await.unwrap();
        let name = unique_name("direct");
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::default(),
                arguments,
            )
            .await
            .unwrap();
        Self {
            name,
            channel,
            _connection: connection,
        }
    }

    /// Every message in the queue: message id → body.
    async fn drain(&self) -> BTreeMap<String, Vec<u8>> {
        let mut messages = BTreeMap::new();
        while let Some(message) = self
            .channel
            .basic_get(self.name.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let id = message
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .to_string();
            messages.insert(id, message.delivery.data.clone());
        }
        messages
    }

    async fn delete(self) {
        let _ = self
            .channel
            .queue_delete(self.name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

fn message<'a>(routing_key: &'a str, id: &str, body: &'a [u8]) -> Outgoing<'a> {
    Outgoing {
        exchange: "",
        routing_key,
        body,
        properties: BasicProperties::default().with_message_id(ShortString::from(id)),
        mandatory: true,
    }
}

async fn connect() -> Arc<DirectPublisher> {
    Arc::new(
        DirectPublisher::connect(&amqp_url(), "direct-publish-test")
            .await
            .expect("connects to RabbitMQ"),
    )
}

/// Bodies of every size class: empty, small, one frame's worth and several frames.
fn body_of(n: usize) -> Vec<u8> {
    let len = match n % 4 {
        0 => 0,
        1 => 100 + n,
        2 => 131_072 - 8,
        _ => 300_000 + n,
    };
    (0..len).map(|i| (i * 31 + n) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_from_many_tasks_are_each_confirmed_and_arrive_intact() {
    let queue = Queue::declare(FieldTable::default()).await;
    let publisher = connect().await;
    let tasks: Vec<_> = (0..400)
        .map(|n| {
            let publisher = publisher.clone();
            let queue = queue.name.clone();
            tokio::spawn(async move {
                let body = body_of(n);
                publisher
                    .publish(message(&queue, &format!("m{n:03}"), &body), TIMEOUT)
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("confirmed");
    }
    let delivered = queue.drain().await;
    assert_eq!(delivered.len(), 400, "each publish arrived once");
    for (n, (id, body)) in delivered.iter().enumerate() {
        assert_eq!(id, &format!("m{n:03}"));
        assert!(body == &body_of(n), "body of {id} arrived intact");
    }
    assert!(publisher.is_healthy());
    publisher.close(TIMEOUT).await;
    assert!(!publisher.is_healthy(), "closed");
    queue.delete().await;
}

#[tokio::test]
async fn an_unroutable_message_is_refused_and_the_connection_goes_on() {
    let queue = Queue::declare(FieldTable::default()).await;
    let publisher = connect().await;
    let nowhere = unique_name("no_such_queue");
    let refused = publisher
        .publish(message(&nowhere, "lost", b"{}"), TIMEOUT)
        .await;
    assert!(
        matches!(refused, Err(PublishError::Unroutable(_))),
        "{refused:?}"
    );
    let anonymous = Outgoing {
        properties: BasicProperties::default(),
        ..message(&queue.name, "unused", b"{}")
    };
    assert!(
        matches!(
            publisher.publish(anonymous, TIMEOUT).await,
            Err(PublishError::Unroutable(_))
        ),
        "a mandatory message without an id could not be told apart if returned"
    );
    publisher
        .publish(message(&queue.name, "kept", b"{}"), TIMEOUT)
        .await
        .expect("the next publish goes through");
    assert_eq!(
        queue.drain().await.into_keys().collect::<Vec<_>>(),
        ["kept"]
    );
    queue.delete().await;
}

#[tokio::test]
async fn with_heartbeats_off_an_idle_connection_stays_up() {
    let queue = Queue::declare(FieldTable::default()).await;
    let url = format!("{}?heartbeat=0", amqp_url());
    let publisher = DirectPublisher::connect(&url, "direct-publish-test")
        .await
        .expect("connects");
    // Longer than twice the shortest heartbeat the reader could have taken for "none".
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        publisher.is_healthy(),
        "silence is no sign of a dead broker"
    );
    publisher
        .publish(message(&queue.name, "late", b"{}"), TIMEOUT)
        .await
        .expect("still publishes");
    queue.delete().await;
}

#[tokio::test]
async fn a_nack_is_an_error_and_marks_the_connection_broken() {
    // A queue that holds one message and refuses publishes beyond that: the broker nacks.
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(1));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let queue = Queue::declare(arguments).await;
    let publisher = connect().await;
    publisher
        .publish(message(&queue.name, "first", b"{}"), TIMEOUT)
        .await
        .expect("room for one");
    let second = publisher
        .publish(message(&queue.name, "second", b"{}"), TIMEOUT)
        .await;
    assert!(matches!(second, Err(PublishError::Nacked)), "{second:?}");
    assert!(!publisher.is_healthy(), "its owner builds a new connection");
    let after = publisher
        .publish(message(&queue.name, "third", b"{}"), TIMEOUT)
        .await;
    assert!(
        matches!(after, Err(PublishError::BrokerUnavailable)),
        "{after:?}"
    );
    queue.delete().await;
}

#[tokio::test]
async fn a_channel_the_broker_closes_breaks_the_connection() {
    let publisher = connect().await;
    let to_no_exchange = Outgoing {
        exchange: "no-such-exchange",
        ..message("anything", "x", b"{}")
    };
    let refused = publisher.publish(to_no_exchange, TIMEOUT).await;
    assert!(
        matches!(refused, Err(PublishError::BrokerUnavailable)),
        "{refused:?}"
    );
    assert!(!publisher.is_healthy());
}

#[tokio::test]
async fn amqps_and_wrong_credentials_are_refused_with_the_reason() {
    let tls = DirectPublisher::connect("amqps://guest:guest@127.0.0.1:5671/%2f", "test").await;
    assert!(tls.is_err_and(|error| error.to_string().contains("TLS")));
    let url = amqp_url().replacen("guest:guest", "guest:wrong", 1);
    assert_ne!(url, amqp_url(), "the test URL carries guest:guest");
    let refused = DirectPublisher::connect(&url, "test").await;
    assert!(
        refused.as_ref().is_err_and(
            |error| error.to_string().contains("403") || error.to_string().contains("closed")
        ),
        "{:?}",
        refused.err()
    );
}
