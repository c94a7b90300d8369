//! Stuck jobs: unfinished and without news past `RECONCILE_AFTER_SECS` (their webhooks went
//! missing and the reconciler has not settled them), and those Replicate answered 404 for
//! (left for a person on purpose: a 404 is not an outcome). Two actions: ask Replicate now
//! (its answer goes in as a webhook, the path every webhook takes) and fail and refund
//! (through the ledger, once, recorded as an operator action and logged `operator=true`).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use serde::Serialize;
use shared::amqp::{Webhook, publish_webhook};
use shared::db::schema::{operator_actions, unconfirmed_jobs};
use shared::events::JobKind;
use shared::jobs::apply::{self, ApplyOutcome, Change};
use shared::jobs::transition::JobStatus;
use shared::replicate::Status;

use crate::api::replicate::ReplicateError;
use crate::ops::timeline::find;
use crate::ops::{Operations, OpsError};

/// Stuck jobs listed at most, oldest news first.
const MAX_STUCK: i64 = 500;

#[derive(Debug, Serialize, QueryableByName)]
pub struct StuckJob {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Text)]
    pub user_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub job_id: Option<String>,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = Text)]
    pub label: String,
    #[diesel(sql_type = Integer)]
    pub credits_used: i32,
    /// The last change.
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
    /// Since when Replicate answers 404 for it, if it does.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub not_found_since: Option<DateTime<Utc>>,
}

/// What an action did, in words for the console, with the job as it is now.
#[derive(Debug, Serialize)]
pub struct ActionDone {
    pub message: String,
    pub job: crate::ops::timeline::JobSummary,
}

impl Operations {
    pub async fn stuck_jobs(&self) -> Result<Vec<StuckJob>, OpsError> {
        let mut conn = shared::db::connection(&self.pool).await?;
        let jobs = diesel::sql_query(
            "SELECT id, kind, user_id, job_id, status, label, credits_used, updated_at, not_found_since FROM (
               SELECT g.id,
                      CASE WHEN g.prompt LIKE '[UPSCALED]%' THEN 'upscale' ELSE 'generation' END AS kind,
                      g.user_id, g.job_id, g.status, g.prompt AS label, g.credits_used, g.updated_at,
                      u.first_at AS not_found_since
                 FROM generations g LEFT JOIN unconfirmed_jobs u ON u.job_id = g.job_id
                WHERE g.status IN ('PENDING', 'PROCESSING')
                  AND g.updated_at < now() - make_interval(secs => $1)
               UNION ALL
               SELECT m.id, 'training', m.user_id, m.job_id, m.status, m.name, m.credits_used,
                      m.updated_at, u.first_at
                 FROM ai_models m LEFT JOIN unconfirmed_jobs u ON u.job_id = m.job_id
                WHERE m.status IN ('PENDING', 'PROCESSING')
                  AND m.updated_at < now() - make_interval(secs => $1)
             ) stuck ORDER BY updated_at LIMIT $2",
        )
        .bind::<diesel::sql_types::Double, _>(self.stuck_after.as_secs_f64())
        .bind::<BigInt, _>(MAX_STUCK)
        .load(&mut conn)
        .await?;
        Ok(jobs)
    }

    /// Asks Replicate about job `id` now; its answer goes into `replicate.webhooks` as a
    /// webhook (and so is applied, downloaded and refunded as any other).
    pub async fn ask_replicate(&self, id: &str) -> Result<ActionDone, OpsError> {
        let started = Utc::now();
        let mut conn = shared::db::connection(&self.pool).await?;
        let job = find(&mut conn, id).await?;
        drop(conn);
        let Some(replicate_id) = job.job_id.clone() else {
            return Err(OpsError::Conflict(
                "Replicate never named this job (its creation did not finish): there is nothing to ask about; fail and refund it".into(),
            ));
        };
        let replicate = self.jobs.replicate().ok_or_else(|| {
            OpsError::Unavailable("REPLICATE_API_TOKEN is not set on this notifier".into())
        })?;
        let training = job.kind == JobKind::Training;
        let (message, detail) = match replicate.fetch(training, &replicate_id).await {
            Ok(body) => {
                let status = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["status"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "unknown".into());
                let now = Utc::now().timestamp();
                let webhook_id = format!("operator_{replicate_id}_{now}");
                let channel = self.channel()?;
                publish_webhook(
                    &channel,
                    &self.topology,
                    Webhook {
                        id: &webhook_id,
                        timestamp: &now.to_string(),
                        body: &body,
                        tag: None,
                    },
                    std::time::Duration::from_secs(10),
                )
                .await
                .map_err(|err| OpsError::Broker(err.to_string()))?;
                (
                    format!(
                        "Replicate says {status}; its answer is queued as webhook {webhook_id}"
                    ),
                    format!("Replicate answered {status}; enqueued as {webhook_id}"),
                )
            }
            Err(ReplicateError::Refused { status: 404, .. }) => {
                let mut conn = shared::db::connection(&self.pool).await?;
                note_not_found(&mut conn, &replicate_id).await?;
                (
                    "Replicate does not know this job (404); fail and refund it if it is lost"
                        .into(),
                    "Replicate answered 404".into(),
                )
            }
            Err(err) => return Err(OpsError::Unavailable(err.to_string())),
        };
        let mut conn = shared::db::connection(&self.pool).await?;
        record_action(&mut conn, started, "ask_replicate", Some(&job.id), &detail).await?;
        tracing::info!(operator = true, action = "ask_replicate", job = %job.id, job_id = %replicate_id, %detail, "operator asked Replicate about a job");
        let job = find(&mut conn, id).await?;
        Ok(ActionDone { message, job })
    }

    /// Fails job `id` and refunds it through the ledger (once: a second call finds it
    /// ended, `409`), tells its user's browsers, records the action.
    pub async fn fail_and_refund(&self, id: &str, reason: &str) -> Result<ActionDone, OpsError> {
        let started = Utc::now();
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(OpsError::Invalid(
                "say why in 1 to 500 characters (the user sees it as the job's error)".into(),
            ));
        }
        let mut conn = shared::db::connection(&self.pool).await?;
        let summary = find(&mut conn, id).await?;
        if JobStatus::parse(&summary.status).is_some_and(JobStatus::is_terminal) {
            return Err(OpsError::Conflict(format!(
                "the job has already ended ({})",
                summary.status
            )));
        }
        let job = summary.ledger_job();
        let error = format!("Failed by an operator: {reason}");
        let outcome =
            apply::apply(&mut conn, &job, &Status::Failed, Change::Failed { error }).await?;
        let ApplyOutcome::Applied(applied) = outcome else {
            return Err(OpsError::Conflict(
                "the job ended meanwhile; nothing was changed".into(),
            ));
        };
        let detail = format!(
            "{} → FAILED, {} credits refunded: {reason}",
            applied.from.as_str(),
            applied.refunded
        );
        record_action(
            &mut conn,
            started,
            "fail_and_refund",
            Some(&job.id),
            &detail,
        )
        .await?;
        if let Some(replicate_id) = &summary.job_id {
            diesel::delete(unconfirmed_jobs::table.find(replicate_id))
                .execute(&mut conn)
                .await?;
        }
        self.jobs.publish(&applied.event).await;
        tracing::info!(operator = true, action = "fail_and_refund", job = %job.id, user_id = %job.user_id, refunded = applied.refunded, seq = applied.event.seq, %reason, "operator failed and refunded a job");
        let job = find(&mut conn, id).await?;
        Ok(ActionDone {
            message: format!("Failed; {} credits refunded", applied.refunded),
            job,
        })
    }
}

/// Replicate answered 404: noted (or counted again) as the reconciler notes it.
async fn note_not_found(
    conn: &mut shared::db::Connection,
    replicate_id: &str,
) -> Result<(), OpsError> {
    diesel::insert_into(unconfirmed_jobs::table)
        .values(unconfirmed_jobs::job_id.eq(replicate_id))
        .on_conflict(unconfirmed_jobs::job_id)
        .do_update()
        .set((
            unconfirmed_jobs::last_at.eq(diesel::dsl::now),
            unconfirmed_jobs::answers.eq(unconfirmed_jobs::answers + 1),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Writes what an operator did to `operator_actions`, dated when the action started (so a
/// job's timeline shows it before what it caused).
pub async fn record_action(
    conn: &mut shared::db::Connection,
    started: DateTime<Utc>,
    action: &str,
    job_row_id: Option<&str>,
    detail: &str,
) -> Result<(), OpsError> {
    diesel::insert_into(operator_actions::table)
        .values((
            operator_actions::at.eq(started),
            operator_actions::action.eq(action),
            operator_actions::job_row_id.eq(job_row_id),
            operator_actions::detail.eq(detail),
        ))
        .execute(conn)
        .await?;
    Ok(())
}
