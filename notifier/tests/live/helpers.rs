//! A notifier per test on port 0, with its own database, queue-name prefix and media
//! directory on the real PostgreSQL and RabbitMQ; events are produced the way the worker
//! produces them (its event log, then a confirmed publish).

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use lapin::BasicProperties;
use notifier::config::{NotifierConfig, SocketConfig};
use shared::amqp::{Outgoing, PERSISTENT, publish_confirmed};
use shared::auth::Auth;
use shared::db;
use shared::db::schema::users;
use shared::events::{Event, GenerationJob, JobKind, JobProgress};
use shared::testing::Isolated;

#[path = "../common/running.rs"]
mod running;
pub use running::Running;

pub const JWT_SECRET: &str = "notifier-test-jwt-secret-32-bytes!";

pub struct TestEnv {
    pub config: NotifierConfig,
    pub auth: Auth,
    services: Isolated,
}

impl std::ops::Deref for TestEnv {
    type Target = Isolated;

    fn deref(&self) -> &Isolated {
        &self.services
    }
}

impl TestEnv {
    pub async fn new() -> Self {
        Self::with_sockets(SocketConfig::default()).await
    }

    pub async fn with_sockets(sockets: SocketConfig) -> Self {
        let services = Isolated::new("notifier").await;
        let mut config = NotifierConfig::for_test(
            JWT_SECRET,
            services.database.clone(),
            services.amqp.clone(),
            services.storage(),
        );
        config.sockets = sockets;
        Self {
            config,
            auth: Auth::new(JWT_SECRET),
            services,
        }
    }

    pub async fn start(&self) -> Running {
        self.start_with(&self.config).await
    }

    pub async fn start_with(&self, config: &NotifierConfig) -> Running {
        Running::start(config).await
    }

    pub fn token(&self, user: &str) -> String {
        self.auth.mint(user, Duration::from_secs(600))
    }

    pub async fn insert_user(&self, id: &str, credits: i32) {
        let mut conn = db::connection(&self.pool).await.unwrap();
        diesel::insert_into(users::table)
            .values((users::id.eq(id), users::credits.eq(credits)))
            .execute(&mut conn)
            .await
            .unwrap();
    }

    /// Stores a status change in the user's log as the worker does, and returns its event.
    pub async fn store(&self, user: &str, job_id: &str, status: &str) -> Event {
        let mut conn = db::connection(&self.pool).await.unwrap();
        let user = user.to_owned();
        let job_id = job_id.to_owned();
        let status = status.to_owned();
        conn.transaction(async |conn| {
            let (seq, credits) = shared::jobs::event_log::next_seq(conn, &user, 0).await?;
            let event = Event::GenerationStatusChanged {
                seq,
                user_id: user.clone(),
                credits,
                refunded: 0,
                job: GenerationJob {
                    kind: JobKind::Generation,
                    id: format!("gen-{job_id}"),
                    job_id: Some(job_id.clone()),
                    status: status.clone(),
                    image_urls: if status == "COMPLETED" {
                        vec![format!("/media/generations/gen-{job_id}/0.png")]
                    } else {
                        vec![]
                    },
                    error: None,
                    prompt: format!("prompt of {job_id}"),
                    credits_used: 4,
                    created_at: None,
                    thumb_urls: Vec::new(),
                    model: None,
                    source_id: None,
                },
            };
            shared::jobs::event_log::append(conn, &event).await?;
            Ok::<_, shared::db::DbError>(event)
        })
        .await
        .unwrap()
    }

    /// Publishes an event to `jobs.events` as the worker does after commit.
    pub async fn publish(&self, event: &Event) {
        let body = serde_json::to_vec(event).unwrap();
        publish_confirmed(
            &self.channel,
            Outgoing {
                exchange: &self.topology.events_exchange(),
                routing_key: &event.routing_key(),
                body: &body,
                properties: BasicProperties::default().with_delivery_mode(PERSISTENT),
                mandatory: false,
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    }

    /// Stores and publishes: one status change, end to end.
    pub async fn emit(&self, user: &str, job_id: &str, status: &str) -> Event {
        let event = self.store(user, job_id, status).await;
        self.publish(&event).await;
        event
    }

    pub fn progress(user: &str, job_id: &str, progress: f64) -> Event {
        Event::JobProgress {
            user_id: user.to_owned(),
            job: JobProgress {
                kind: JobKind::Generation,
                id: format!("gen-{job_id}"),
                job_id: job_id.to_owned(),
                progress,
            },
        }
    }

    pub async fn cleanup(self) {
        self.services.cleanup().await;
    }
}

pub use shared::testing::browser::{connect, next_json, seqs_until};
