//! Jobs created through the jobs API at a steady rate while a test injects faults: one
//! generation after another (every tenth a training), spread over the users and over the
//! notifiers given; a refused creation is counted and tried again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use replicate_sim::jobs_client::{JobsClient, random_prompt};
use tokio::task::JoinHandle;

#[derive(Default)]
pub struct Creations {
    creating: AtomicBool,
    done: AtomicBool,
    in_flight: AtomicUsize,
    created: AtomicUsize,
    refused: AtomicUsize,
}

impl Creations {
    /// Starts creating `rate` jobs a second, each through the next of `clients`.
    pub fn start(
        clients: Vec<Arc<JobsClient>>,
        users: Vec<String>,
        rate: f64,
    ) -> (Arc<Self>, JoinHandle<()>) {
        let creations = Arc::new(Self::default());
        creations.creating.store(true, Ordering::SeqCst);
        let this = creations.clone();
        let task = tokio::spawn(async move {
            let mut i = 0;
            let pace = Duration::from_secs_f64(1.0 / rate.max(0.1));
            while !this.done.load(Ordering::SeqCst) {
                if !this.creating.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                this.in_flight.fetch_add(1, Ordering::SeqCst);
                let user = &users[i % users.len()];
                let client = &clients[i % clients.len()];
                let result = if i % 10 == 3 {
                    client.train(user, "chaos portraits").await
                } else {
                    client.generate(user, random_prompt()).await
                };
                this.in_flight.fetch_sub(1, Ordering::SeqCst);
                match result {
                    Ok(_) => {
                        this.created.fetch_add(1, Ordering::SeqCst);
                        i += 1;
                    }
                    Err(_) => {
                        this.refused.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                tokio::time::sleep(pace).await;
            }
        });
        (creations, task)
    }

    /// Stops creating and waits for creations under way to finish: a fault that follows
    /// could otherwise leave a job created on Replicate without its id stored.
    pub async fn pause(&self) {
        self.creating.store(false, Ordering::SeqCst);
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn resume(&self) {
        self.creating.store(true, Ordering::SeqCst);
    }

    /// Stops for good once the creation under way is done.
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
}
