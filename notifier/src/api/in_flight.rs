//! How many creations may wait on Replicate at once: per user and in all. A creation holds
//! its [`Slot`] until its job is bound or failed, whether or not its client still waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::error::JobsError;

/// Creations waiting on Replicate: at most `per_user` for one user and `total` for all.
pub struct InFlight {
    per_user: usize,
    total: usize,
    permits: Arc<Semaphore>,
    users: Arc<Mutex<HashMap<String, usize>>>,
}

/// One creation's place; given back when dropped.
pub struct Slot {
    user_id: String,
    users: Arc<Mutex<HashMap<String, usize>>>,
    _permit: OwnedSemaphorePermit,
}

impl InFlight {
    pub fn new(per_user: usize, total: usize) -> Self {
        Self {
            per_user: per_user.max(1),
            total: total.max(1),
            permits: Arc::new(Semaphore::new(total.max(1))),
            users: Arc::default(),
        }
    }

    pub fn take(&self, user_id: &str) -> Result<Slot, JobsError> {
        let mut users = self.users.lock().expect("not poisoned");
        let mine = users.get(user_id).copied().unwrap_or(0);
        if mine >= self.per_user {
            metrics::counter!("notifier_creations_refused_total", "reason" => "user_busy")
                .increment(1);
            return Err(JobsError::TooMany(format!(
                "you already have {mine} jobs being created; try again once one has started"
            )));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            metrics::counter!("notifier_creations_refused_total", "reason" => "busy").increment(1);
            return Err(JobsError::TooMany(
                "too many jobs are being created right now; try again in a moment".into(),
            ));
        };
        users.insert(user_id.to_owned(), mine + 1);
        metrics::gauge!("notifier_creations_in_flight").increment(1.0);
        Ok(Slot {
            user_id: user_id.to_owned(),
            users: self.users.clone(),
            _permit: permit,
        })
    }

    pub async fn drain(&self, timeout: Duration) -> bool {
        let all = u32::try_from(self.total).unwrap_or(u32::MAX);
        tokio::time::timeout(timeout, self.permits.acquire_many(all))
            .await
            .is_ok_and(|permits| permits.is_ok())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!("notifier_creations_in_flight").decrement(1.0);
        let mut users = self.users.lock().expect("not poisoned");
        if let Some(count) = users.get_mut(&self.user_id) {
            *count -= 1;
            if *count == 0 {
                users.remove(&self.user_id);
            }
        }
    }
}
