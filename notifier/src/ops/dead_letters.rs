//! The dead letters in the console: each with its reason (the cause chain the worker wrote)
//! and its history, filtered by reason or id; replayed by id, the list the operator was
//! shown (so "all matching" replays exactly the count confirmed, never what arrived since).

use serde::{Deserialize, Serialize};
use shared::amqp::dead_letters::{self, DeadLetter, Selection};

use crate::ops::stuck::record_action;
use crate::ops::{Operations, OpsError};

/// Ids named in one replay, at most.
const MAX_REPLAY: usize = dead_letters::LIST_LIMIT;

#[derive(Debug, Default, Deserialize)]
pub struct DeadLetterFilter {
    /// Words the reason contains (case-insensitive).
    pub reason: Option<String>,
    /// A webhook id or a Replicate id, exactly.
    pub q: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct LetterList {
    /// Messages in the queue (the list holds the first `LIST_LIMIT`).
    pub total: usize,
    pub letters: Vec<DeadLetter>,
}

impl DeadLetterFilter {
    fn matches(&self, letter: &DeadLetter) -> bool {
        let reason = self
            .reason
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty());
        let q = self.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
        reason.is_none_or(|r| letter.reason.to_lowercase().contains(&r.to_lowercase()))
            && q.is_none_or(|q| letter.webhook_id == q || letter.job_id.as_deref() == Some(q))
    }
}

impl Operations {
    pub async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<LetterList, OpsError> {
        let _one_at_a_time = self.dead_letters.lock().await;
        let channel = self.channel()?;
        let letters = dead_letters::list(&channel, &self.topology)
            .await
            .map_err(|err| OpsError::Broker(err.to_string()))?;
        let total = letters.len();
        Ok(LetterList {
            total,
            letters: letters
                .into_iter()
                .filter(|letter| filter.matches(letter))
                .collect(),
        })
    }

    /// Sends the dead letters with these webhook ids back to `replicate.webhooks`; returns
    /// those replayed (ids no longer there are skipped).
    pub async fn replay(&self, ids: Vec<String>) -> Result<Vec<DeadLetter>, OpsError> {
        if ids.is_empty() || ids.len() > MAX_REPLAY {
            return Err(OpsError::Invalid(format!(
                "name 1 to {MAX_REPLAY} webhook ids to replay"
            )));
        }
        let _one_at_a_time = self.dead_letters.lock().await;
        let started = chrono::Utc::now();
        let channel = self.channel()?;
        let replayed = dead_letters::replay(&channel, &self.topology, &Selection::Ids(ids))
            .await
            .map_err(|err| OpsError::Broker(err.to_string()))?;
        if !replayed.is_empty() {
            let mut shown: Vec<&str> = replayed
                .iter()
                .take(20)
                .map(|l| l.webhook_id.as_str())
                .collect();
            if replayed.len() > shown.len() {
                shown.push("…");
            }
            let detail = format!("{} replayed: {}", replayed.len(), shown.join(", "));
            let mut conn = shared::db::connection(&self.pool).await?;
            record_action(&mut conn, started, "replay_dead_letters", None, &detail).await?;
            // A job's page shows the replay of its webhooks too.
            for letter in &replayed {
                if let Some(job_id) = &letter.job_id
                    && let Ok(job) = crate::ops::timeline::find(&mut conn, job_id).await
                {
                    let detail = format!(
                        "webhook {} replayed from the dead letters",
                        letter.webhook_id
                    );
                    record_action(
                        &mut conn,
                        started,
                        "replay_dead_letter",
                        Some(&job.id),
                        &detail,
                    )
                    .await?;
                }
            }
        }
        tracing::info!(
            operator = true,
            action = "replay_dead_letters",
            replayed = replayed.len(),
            "operator replayed dead letters"
        );
        Ok(replayed)
    }
}
