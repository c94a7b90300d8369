//! The figures of the moment: webhooks accepted and refused per second (ingest's counters),
//! what the workers made of them in the last minute, the queues (depth, consumers), the
//! oldest wait, browsers connected, creations failing. A background task exports the broker
//! and database figures to Prometheus (`pipeline_queue_messages`, `pipeline_queue_consumers`,
//! `pipeline_jobs_stuck`), so the alerts hold even while no worker runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable, Text};
use diesel_async::RunQueryDsl;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde::Serialize;
use shared::amqp::RETRY_DELAYS;

use crate::ops::{Operations, OpsError};

/// How often the exported figures are refreshed.
const EXPORT_EVERY: Duration = Duration::from_secs(5);
/// The window of "the last minute" and of "creations failing".
const RECENT_SECS: f64 = 60.0;
const CREATIONS_WINDOW_SECS: f64 = 900.0;

/// One queue as the broker reports it.
#[derive(Debug, Clone, Serialize)]
pub struct QueueFigures {
    pub name: String,
    /// Messages ready (not yet handed to a consumer).
    pub messages: u32,
    pub consumers: u32,
}

#[derive(Debug, Serialize)]
pub struct Now {
    /// Ingest's webhooks per second over the last few seconds (`None` until ingest's
    /// `/metrics` was read twice), accepted and refused.
    pub ingest: Option<IngestRate>,
    /// What workers made of webhooks in the last minute, by outcome.
    pub handled_last_minute: BTreeMap<String, i64>,
    pub queues: Vec<QueueFigures>,
    /// Workers consuming `replicate.webhooks`.
    pub workers: u32,
    /// The longest a webhook waited before a worker took it, in the last minute; while
    /// webhooks wait and none is taken, at least the time since the last one was.
    pub oldest_wait_secs: Option<f64>,
    /// Open sockets and streams on this notifier.
    pub browsers: usize,
    /// Jobs created in the last 15 minutes, and those failed before Replicate named them.
    pub creations: i64,
    pub creations_failed: i64,
    pub stuck_jobs: i64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct IngestRate {
    pub accepted_per_sec: f64,
    pub refused_per_sec: f64,
}

/// Ingest's counters, read from its `/metrics`, turned into rates between two looks.
pub struct IngestRates {
    url: String,
    http: reqwest::Client,
    last: Mutex<Option<Look>>,
}

/// One reading of ingest's counters, and the rate it gave.
#[derive(Clone, Copy)]
struct Look {
    at: Instant,
    accepted: f64,
    refused: f64,
    rate: Option<IngestRate>,
}

impl IngestRates {
    pub fn new(ingest_url: &str) -> Self {
        Self {
            url: format!("{}/metrics", ingest_url.trim_end_matches('/')),
            http: shared::http::client_builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("an HTTP client with default settings builds"),
            last: Mutex::new(None),
        }
    }

    /// Reads ingest's counters and turns them into a rate over the time since the last
    /// reading (the export task reads every few seconds).
    async fn sample(&self) {
        let Some(text) = self.read().await else {
            return;
        };
        let name = "ingest_webhooks_total";
        let accepted = shared::metrics::sum_in(&text, name, Some(("outcome", "accepted")));
        let refused = shared::metrics::sum_in(&text, name, None) - accepted;
        let now = Instant::now();
        let mut last = self.last.lock().expect("never poisoned");
        let rate = match *last {
            Some(look) if accepted >= look.accepted && refused >= look.refused => {
                let secs = now.duration_since(look.at).as_secs_f64().max(0.001);
                Some(IngestRate {
                    accepted_per_sec: (accepted - look.accepted) / secs,
                    refused_per_sec: (refused - look.refused) / secs,
                })
            }
            // The first reading (or ingest restarted): a rate from the next one.
            _ => None,
        };
        *last = Some(Look {
            at: now,
            accepted,
            refused,
            rate,
        });
    }

    async fn read(&self) -> Option<String> {
        self.http
            .get(&self.url)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    /// The latest rate, if ingest answered the last two readings.
    fn rate(&self) -> Option<IngestRate> {
        self.last
            .lock()
            .expect("never poisoned")
            .and_then(|look| look.rate)
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = Text)]
    outcome: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Recent {
    #[diesel(sql_type = Nullable<Double>)]
    max_wait_ms: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    since_last_secs: Option<f64>,
}

#[derive(QueryableByName)]
struct Creations {
    #[diesel(sql_type = BigInt)]
    created: i64,
    #[diesel(sql_type = BigInt)]
    failed: i64,
}

impl Operations {
    pub async fn now(&self) -> Result<Now, OpsError> {
        let ingest = self.ingest.rate();
        let queues = self.queues().await?;
        let mut conn = shared::db::connection(&self.pool).await?;
        let handled: Vec<Count> = diesel::sql_query(
            "SELECT outcome, count(*) AS n FROM webhook_attempts
              WHERE at > now() - make_interval(secs => $1) GROUP BY outcome",
        )
        .bind::<Double, _>(RECENT_SECS)
        .load(&mut conn)
        .await?;
        let recent: Recent = diesel::sql_query(
            "SELECT (SELECT max(waited_ms)::float8 FROM webhook_attempts
                      WHERE at > now() - make_interval(secs => $1)) AS max_wait_ms,
                    (SELECT extract(epoch FROM now() - max(at))::float8
                       FROM webhook_attempts WHERE at > now() - interval '1 day') AS since_last_secs",
        )
        .bind::<Double, _>(RECENT_SECS)
        .get_result(&mut conn)
        .await?;
        let creations: Creations = diesel::sql_query(
            "SELECT count(*) AS created,
                    count(*) FILTER (WHERE status = 'FAILED' AND job_id IS NULL) AS failed
               FROM generations WHERE created_at > now() - make_interval(secs => $1)",
        )
        .bind::<Double, _>(CREATIONS_WINDOW_SECS)
        .get_result(&mut conn)
        .await?;
        drop(conn);
        let stuck_jobs = self.stuck_count().await?;

        let work = <[QueueFigures]>::first(&queues);
        let waiting = work.is_some_and(|q| q.messages > 0);
        let mut oldest_wait_secs = recent.max_wait_ms.map(|ms| ms / 1000.0);
        if waiting && let Some(since_last) = recent.since_last_secs {
            oldest_wait_secs = Some(oldest_wait_secs.unwrap_or(0.0).max(since_last));
        }
        Ok(Now {
            ingest,
            handled_last_minute: handled.into_iter().map(|c| (c.outcome, c.n)).collect(),
            workers: work.map_or(0, |q| q.consumers),
            queues,
            oldest_wait_secs,
            browsers: self.hub.open_connections(),
            creations: creations.created,
            creations_failed: creations.failed,
            stuck_jobs,
        })
    }

    /// The work queue first, then the delay queues, then the dead letters.
    pub async fn queues(&self) -> Result<Vec<QueueFigures>, OpsError> {
        let channel = self.channel()?;
        let mut names = vec![self.topology.webhooks_queue()];
        names.extend(RETRY_DELAYS.iter().map(|d| self.topology.retry_queue(*d)));
        names.push(self.topology.dead_letter_queue());
        let mut figures = Vec::with_capacity(names.len());
        for name in names {
            let queue = channel
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|err| OpsError::Broker(format!("looking at {name}: {err}")))?;
            figures.push(QueueFigures {
                name,
                messages: queue.message_count(),
                consumers: queue.consumer_count(),
            });
        }
        Ok(figures)
    }

    async fn stuck_count(&self) -> Result<i64, OpsError> {
        #[derive(QueryableByName)]
        struct Stuck {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut conn = shared::db::connection(&self.pool).await?;
        let stuck: Stuck = diesel::sql_query(
            "SELECT (SELECT count(*) FROM generations WHERE status IN ('PENDING', 'PROCESSING')
                       AND updated_at < now() - make_interval(secs => $1))
                  + (SELECT count(*) FROM ai_models WHERE status IN ('PENDING', 'PROCESSING')
                       AND updated_at < now() - make_interval(secs => $1)) AS n",
        )
        .bind::<Double, _>(self.stuck_after.as_secs_f64())
        .get_result(&mut conn)
        .await?;
        Ok(stuck.n)
    }

    /// Exports the queues and the stuck jobs to Prometheus every few seconds, until `stop`.
    pub async fn export(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(EXPORT_EVERY);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = ticks.tick() => {}
            }
            match self.queues().await {
                Ok(queues) => {
                    for queue in queues {
                        let name = queue.name.clone();
                        metrics::gauge!("pipeline_queue_messages", "queue" => name.clone())
                            .set(f64::from(queue.messages));
                        metrics::gauge!("pipeline_queue_consumers", "queue" => name)
                            .set(f64::from(queue.consumers));
                    }
                }
                Err(err) => tracing::debug!(error = %err, "queue figures not exported this time"),
            }
            self.ingest.sample().await;
            match self.stuck_count().await {
                Ok(n) => metrics::gauge!("pipeline_jobs_stuck").set(n as f64),
                Err(err) => tracing::debug!(error = %err, "stuck jobs not counted this time"),
            }
        }
    }
}
