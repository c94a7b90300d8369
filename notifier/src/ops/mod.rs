//! The operator console's work, without HTTP: the webhook record and a job's timeline
//! ([`webhooks`], [`timeline`]), the dead letters ([`dead_letters`]), stuck jobs and what an
//! operator can do about them ([`stuck`]), and the figures of the moment ([`now`]), which a
//! background task also exports to Prometheus (queue depths, consumers, stuck jobs).

pub mod dead_letters;
pub mod now;
pub mod stuck;
pub mod timeline;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use lapin::Channel;
use shared::amqp::{Reconnecting, Topology, confirmed_channel};
use shared::config::AmqpConfig;
use shared::db::{DbError, Pool};
use shared::jobs::apply::ApplyError;

use crate::api::jobs::JobsApi;
use crate::config::OpsConfig;
use crate::push::hub::Hub;

/// Why an operator call did not do what it was asked; each maps to one status.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The broker or Replicate cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
    #[error("the database is unavailable: {0}")]
    Database(#[from] DbError),
    #[error("the job could not be changed: {0}")]
    Ledger(#[from] ApplyError),
    #[error("RabbitMQ: {0}")]
    Broker(String),
}

impl From<diesel::result::Error> for OpsError {
    fn from(err: diesel::result::Error) -> Self {
        Self::Database(err.into())
    }
}

impl OpsError {
    pub fn status(&self) -> u16 {
        match self {
            Self::Invalid(_) => 400,
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::Unavailable(_) | Self::Database(_) | Self::Broker(_) => 503,
            Self::Ledger(err) if err.is_transient() => 503,
            Self::Ledger(_) => 500,
        }
    }
}

/// What the console's calls share.
pub struct Operations {
    pool: Pool,
    jobs: JobsApi,
    hub: Arc<Hub>,
    /// A confirmed channel of the console's own: queue depths, dead letters, and answers
    /// fetched from Replicate sent in as webhooks.
    broker: Reconnecting<Channel>,
    topology: Topology,
    /// A job unfinished without news this long is stuck.
    stuck_after: Duration,
    ingest: now::IngestRates,
    /// One dead-letter listing or replay at a time: each takes the whole queue for a moment.
    dead_letters: tokio::sync::Mutex<()>,
}

impl Operations {
    pub fn new(
        config: &OpsConfig,
        amqp: &AmqpConfig,
        ingest_url: &str,
        pool: Pool,
        jobs: JobsApi,
        hub: Arc<Hub>,
    ) -> Arc<Self> {
        Arc::new(Self {
            pool,
            jobs,
            hub,
            broker: confirmed_channel(amqp, "notifier-ops"),
            topology: amqp.topology(),
            stuck_after: Duration::from_secs(config.stuck_after_secs),
            ingest: now::IngestRates::new(ingest_url),
            dead_letters: tokio::sync::Mutex::new(()),
        })
    }

    fn channel(&self) -> Result<Arc<Channel>, OpsError> {
        self.broker
            .current()
            .ok_or_else(|| OpsError::Unavailable("RabbitMQ is not connected".into()))
    }

    pub async fn close(&self) {
        self.broker.close().await;
    }
}
