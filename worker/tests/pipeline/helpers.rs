//! A test environment per test: its own database, queue-name prefix and media directory on
//! the real PostgreSQL and RabbitMQ, a worker running in-process (or as a child process),
//! and helpers to publish webhooks and observe rows and events.

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures_util::StreamExt;
use lapin::Channel;
use lapin::options::{BasicConsumeOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use shared::amqp::{Outgoing, publish_confirmed};
use shared::db;
use shared::db::schema::{ai_models, credit_transactions, generations, job_events, users};
use shared::events::Event;
use shared::testing::Isolated;
use tokio::sync::oneshot;
use worker::config::{AllowedHosts, WorkerConfig};
use worker::startup::Worker;

pub struct TestEnv {
    pub config: WorkerConfig,
    services: Isolated,
}

impl std::ops::Deref for TestEnv {
    type Target = Isolated;

    fn deref(&self) -> &Isolated {
        &self.services
    }
}

impl TestEnv {
    /// A fresh database and prefix; downloads allowed from `image_host` (`127.0.0.1:port`).
    pub async fn new(image_host: &str) -> Self {
        let services = Isolated::new("worker").await;
        let config = WorkerConfig::for_test(
            services.database.clone(),
            services.amqp.clone(),
            services.storage(),
            image_host.parse::<AllowedHosts>().unwrap(),
        );
        Self { config, services }
    }

    pub async fn conn(&self) -> db::PooledConnection {
        db::connection(&self.pool).await.unwrap()
    }

    /// Enqueues a webhook exactly as ingest does.
    pub async fn send(&self, webhook_id: &str, body: &serde_json::Value) {
        self.send_tagged(webhook_id, body, None).await;
    }

    /// Enqueues a webhook as ingest does when the URL it was posted to carried `?job=<tag>`.
    pub async fn send_tagged(&self, webhook_id: &str, body: &serde_json::Value, tag: Option<&str>) {
        let body = serde_json::to_vec(body).unwrap();
        publish_confirmed(
            &self.channel,
            Outgoing {
                exchange: "",
                routing_key: &self.topology.webhooks_queue(),
                body: &body,
                properties: shared::amqp::webhook_properties(webhook_id, "0", tag),
                mandatory: true,
            },
            Duration::from_secs(5),
        )
        .await
        .expect("webhook enqueued");
    }

    /// A queue of the test's own receiving every event of `jobs.events`.
    pub async fn observe_events(&self) -> EventObserver {
        let channel = self.connection.create_channel().await.unwrap();
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.name().clone(),
                self.topology.events_exchange().into(),
                "user.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "observer".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        EventObserver {
            _channel: channel,
            consumer,
        }
    }

    /// Every message in the dead-letter queue, with its reason header.
    pub async fn dead_letters(&self) -> Vec<(String, String)> {
        let mut found = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(
                self.topology.dead_letter_queue().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            let delivery = message.delivery;
            let reason = delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-dead-letter-reason").cloned())
                .map(|v| match v {
                    lapin::types::AMQPValue::LongString(s) => s.to_string(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            found.push((String::from_utf8(delivery.data).unwrap(), reason));
        }
        found
    }

    pub async fn queue_depth(&self, queue: &str) -> u32 {
        shared::testing::queue_depth(&self.channel, queue).await
    }

    /// Starts a worker in this process.
    pub async fn spawn_worker(&self) -> RunningWorker {
        self.spawn_worker_with(self.config.clone()).await
    }

    pub async fn spawn_worker_with(&self, config: WorkerConfig) -> RunningWorker {
        let worker = Worker::build(&config).await.expect("worker starts");
        let metrics_port = worker.metrics_port();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.run_until_stopped(async {
            let _ = stopped.await;
        }));
        RunningWorker {
            stop: Some(stop),
            task,
            metrics_port,
        }
    }

    // ---- the web app's side: users and jobs ----

    pub async fn insert_user(&self, id: &str, credits: i32) {
        diesel::insert_into(users::table)
            .values((users::id.eq(id), users::credits.eq(credits)))
            .execute(&mut self.conn().await)
            .await
            .unwrap();
    }

    /// Inserts a generation (or an upscale when the prompt starts with `[UPSCALED]`).
    pub async fn insert_generation(
        &self,
        id: &str,
        user: &str,
        job_id: &str,
        prompt: &str,
        credits: i32,
    ) {
        diesel::insert_into(generations::table)
            .values((
                generations::id.eq(id),
                generations::user_id.eq(user),
                generations::job_id.eq(job_id),
                generations::prompt.eq(prompt),
                generations::credits_used.eq(credits),
            ))
            .execute(&mut self.conn().await)
            .await
            .unwrap();
    }

    /// A generation of `u1` as the jobs API leaves it before Replicate answers: no Replicate
    /// id, 4 credits, created `age` ago, with its debit under the row's id when `debited`
    /// says so (otherwise a row someone else wrote).
    pub async fn insert_unbound(
        &self,
        id: &str,
        status: &str,
        debited: Debited,
        age: chrono::Duration,
    ) {
        let mut conn = self.conn().await;
        diesel::insert_into(generations::table)
            .values((
                generations::id.eq(id),
                generations::user_id.eq("u1"),
                generations::prompt.eq("a corgi"),
                generations::status.eq(status),
                generations::credits_used.eq(4),
                generations::created_at.eq(chrono::Utc::now() - age),
            ))
            .execute(&mut conn)
            .await
            .unwrap();
        if debited == Debited::Yes {
            diesel::insert_into(credit_transactions::table)
                .values((
                    credit_transactions::user_id.eq("u1"),
                    credit_transactions::amount.eq(-4),
                    credit_transactions::kind.eq("DEBIT"),
                    credit_transactions::job_id.eq(id),
                ))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }

    /// A generation's Replicate id, if it has one.
    pub async fn job_id_of(&self, id: &str) -> Option<String> {
        generations::table
            .find(id)
            .select(generations::job_id)
            .first(&mut self.conn().await)
            .await
            .unwrap()
    }

    pub async fn insert_training(&self, id: &str, user: &str, job_id: &str, credits: i32) {
        diesel::insert_into(ai_models::table)
            .values((
                ai_models::id.eq(id),
                ai_models::user_id.eq(user),
                ai_models::job_id.eq(job_id),
                ai_models::name.eq("my model"),
                ai_models::credits_used.eq(credits),
            ))
            .execute(&mut self.conn().await)
            .await
            .unwrap();
    }

    pub async fn generation(&self, id: &str) -> GenerationRow {
        generations::table
            .find(id)
            .select((
                generations::status,
                generations::image_urls,
                generations::thumb_urls,
                generations::error_message,
            ))
            .first::<(String, Vec<String>, Vec<String>, Option<String>)>(&mut self.conn().await)
            .await
            .map(
                |(status, image_urls, thumb_urls, error_message)| GenerationRow {
                    status,
                    image_urls,
                    thumb_urls,
                    error_message,
                },
            )
            .unwrap()
    }

    pub async fn training(&self, id: &str) -> (String, Option<String>, Option<String>) {
        ai_models::table
            .find(id)
            .select((
                ai_models::status,
                ai_models::model_version,
                ai_models::weights_url,
            ))
            .first(&mut self.conn().await)
            .await
            .unwrap()
    }

    pub async fn status_of(&self, id: &str) -> String {
        let generation = generations::table
            .find(id)
            .select(generations::status)
            .first::<String>(&mut self.conn().await)
            .await
            .optional()
            .unwrap();
        match generation {
            Some(status) => status,
            None => self.training(id).await.0,
        }
    }

    pub async fn credits(&self, user: &str) -> i32 {
        users::table
            .find(user)
            .select(users::credits)
            .first(&mut self.conn().await)
            .await
            .unwrap()
    }

    pub async fn refunds_for(&self, job_id: &str) -> Vec<i32> {
        credit_transactions::table
            .filter(credit_transactions::job_id.eq(job_id))
            .filter(credit_transactions::kind.eq("REFUND"))
            .select(credit_transactions::amount)
            .load(&mut self.conn().await)
            .await
            .unwrap()
    }

    pub async fn stored_seqs(&self, user: &str) -> Vec<i64> {
        job_events::table
            .filter(job_events::user_id.eq(user))
            .order(job_events::seq)
            .select(job_events::seq)
            .load(&mut self.conn().await)
            .await
            .unwrap()
    }

    /// The payload stored for `user`'s event `seq`.
    pub async fn stored_payload(&self, user: &str, seq: i64) -> serde_json::Value {
        job_events::table
            .filter(job_events::user_id.eq(user))
            .filter(job_events::seq.eq(seq))
            .select(job_events::payload)
            .first(&mut self.conn().await)
            .await
            .unwrap()
    }

    pub async fn unpublished_events(&self) -> i64 {
        job_events::table
            .filter(job_events::published_at.is_null())
            .count()
            .get_result(&mut self.conn().await)
            .await
            .unwrap()
    }

    /// Waits until every listed job has the expected status.
    pub async fn wait_for_statuses(&self, expected: &[(&str, &str)]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut pending = Vec::new();
            for (id, status) in expected {
                let actual = self.status_of(id).await;
                if actual != *status {
                    pending.push(format!("{id}: {actual} (want {status})"));
                }
            }
            if pending.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "jobs did not settle: {pending:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the worker has nothing left: the work queue is empty and settled.
    pub async fn wait_until_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let queue = self.topology.webhooks_queue();
        let mut quiet_rounds = 0;
        while quiet_rounds < 5 {
            assert!(Instant::now() < deadline, "the worker never went idle");
            tokio::time::sleep(Duration::from_millis(100)).await;
            if self.queue_depth(&queue).await == 0 {
                quiet_rounds += 1;
            } else {
                quiet_rounds = 0;
            }
        }
    }

    /// Removes the database, the queues and the media directory.
    pub async fn cleanup(self) {
        self.services.cleanup().await;
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationRow {
    pub status: String,
    pub image_urls: Vec<String>,
    pub thumb_urls: Vec<String>,
    pub error_message: Option<String>,
}

pub struct RunningWorker {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    pub metrics_port: u16,
}

impl RunningWorker {
    /// Graceful stop: finishes in-flight webhooks.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("worker stops in time")
            .unwrap();
    }
}

pub struct EventObserver {
    _channel: Channel,
    consumer: lapin::Consumer,
}

impl EventObserver {
    /// The next event, or `None` after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Event> {
        let delivery = tokio::time::timeout(wait, self.consumer.next())
            .await
            .ok()??
            .ok()?;
        Some(serde_json::from_slice(&delivery.data).expect("events are valid JSON"))
    }

    /// Collects events until none arrives for `quiet`.
    pub async fn collect(&mut self, quiet: Duration) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(event) = self.next(quiet).await {
            events.push(event);
        }
        events
    }
}

/// Whether the jobs API debited a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Debited {
    Yes,
    No,
}

/// A Replicate prediction body.
pub fn prediction(job_id: &str, status: &str, output: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "id": job_id,
        "status": status,
        "output": output,
        "error": if status == "failed" { serde_json::json!("CUDA out of memory") } else { serde_json::Value::Null },
        "logs": "",
        "created_at": "2023-08-16T18:57:08.360785Z",
    })
}
