//! Jobs created through the jobs API at a steady rate while a test injects faults: one
//! generation after another (every tenth a training), spread over the users and over the
//! notifiers given, each creation on its own so that a slow Replicate does not slow the
//! rate. A refused creation (an error answer) is counted; with impatient clients, every fifth
//! creation hangs up before the answer (its job must still end right).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use replicate_sim::jobs_client::{JobsClient, random_prompt};
use tokio::task::JoinHandle;

/// Jobs created a second in a run under faults: `variable` (set by its deploy script's
/// `--quick`), else `default`.
pub fn rate_from_env(variable: &str, default: f64) -> f64 {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One creation in five hangs up, when impatient clients are given.
const HANG_UP_EVERY: usize = 5;

#[derive(Default)]
pub struct Creations {
    creating: AtomicBool,
    done: AtomicBool,
    in_flight: AtomicUsize,
    created: AtomicUsize,
    refused: AtomicUsize,
    /// Creations whose client hung up, or whose notifier died under them: no answer.
    unanswered: AtomicUsize,
}

impl Creations {
    /// Starts creating `rate` jobs a second, each through the next of `clients`; every
    /// [`HANG_UP_EVERY`]th through the next of `impatient` instead, when it has any.
    pub fn start(
        clients: Vec<Arc<JobsClient>>,
        impatient: Vec<Arc<JobsClient>>,
        users: Vec<String>,
        rate: f64,
    ) -> (Arc<Self>, JoinHandle<()>) {
        let creations = Arc::new(Self::default());
        creations.creating.store(true, Ordering::SeqCst);
        let this = creations.clone();
        let task = tokio::spawn(async move {
            let pace = Duration::from_secs_f64(1.0 / rate.max(0.1));
            let mut under_way = Vec::new();
            let mut i = 0;
            while !this.done.load(Ordering::SeqCst) {
                if !this.creating.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let user = users[i % users.len()].clone();
                let client = if !impatient.is_empty() && i % HANG_UP_EVERY == HANG_UP_EVERY - 1 {
                    impatient[i % impatient.len()].clone()
                } else {
                    clients[i % clients.len()].clone()
                };
                let training = i % 10 == 3;
                i += 1;
                this.in_flight.fetch_add(1, Ordering::SeqCst);
                let counts = this.clone();
                under_way.push(tokio::spawn(async move {
                    let result = if training {
                        client.train(&user, "chaos portraits").await
                    } else {
                        client.generate(&user, random_prompt()).await
                    };
                    match result {
                        Ok(_) => counts.created.fetch_add(1, Ordering::SeqCst),
                        Err(err) if err.status().is_some() => {
                            counts.refused.fetch_add(1, Ordering::SeqCst)
                        }
                        Err(_) => counts.unanswered.fetch_add(1, Ordering::SeqCst),
                    };
                    counts.in_flight.fetch_sub(1, Ordering::SeqCst);
                }));
                under_way.retain(|creation: &JoinHandle<()>| !creation.is_finished());
                tokio::time::sleep(pace).await;
            }
            for creation in under_way {
                creation.await.expect("a creation does not panic");
            }
        });
        (creations, task)
    }

    /// Stops creating and waits for creations under way to finish (a fault that follows
    /// then meets no creation).
    pub async fn pause(&self) {
        self.creating.store(false, Ordering::SeqCst);
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn resume(&self) {
        self.creating.store(true, Ordering::SeqCst);
    }

    /// Stops for good once the creations under way are done.
    pub async fn finish(&self, task: JoinHandle<()>) {
        self.done.store(true, Ordering::SeqCst);
        task.await.expect("the creating task does not panic");
    }

    pub fn created(&self) -> usize {
        self.created.load(Ordering::SeqCst)
    }

    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    pub fn unanswered(&self) -> usize {
        self.unanswered.load(Ordering::SeqCst)
    }
}
