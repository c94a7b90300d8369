//! Who watches a run under faults across several notifiers: users with credits, a jobs
//! API client per notifier, and a browser for every user on every notifier, greeted
//! before the faults start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use replicate_sim::accounts;
use replicate_sim::jobs_client::JobsClient;
use serde_json::Value;
use tokio::task::JoinHandle;

use super::creations::Creations;
use super::oracle::{self, Inbox, Verdict, watch_user};
use super::{JWT_SECRET, Pipeline};

/// Settings every run under faults gives its programs: Replicate's creation timeout, the
/// reconciler and the outbox sweep compressed to the run's few minutes, JSON logs (the
/// run reads them).
pub const FAULT_RUN_SETTINGS: &[(&str, &str)] = &[
    ("REPLICATE_CREATE_TIMEOUT_SECS", "3"),
    ("RECONCILE_AFTER_SECS", "8"),
    ("RECONCILE_INTERVAL_SECS", "2"),
    ("OUTBOX_SWEEP_SECS", "1"),
    ("LOG_FORMAT", "json"),
];

pub struct Audience {
    /// A jobs API client per notifier.
    pub clients: Vec<Arc<JobsClient>>,
    pub users: Vec<String>,
    /// Every browser, with its user.
    pub browsers: Vec<(String, Arc<Mutex<Inbox>>)>,
    watchers: Vec<JoinHandle<()>>,
}

impl Audience {
    /// `count` users named `<name>-<i>` with `credits` each, a browser for each on every
    /// notifier; returns once every browser is greeted (subscribed: it misses nothing after).
    pub async fn gather(pipeline: &Pipeline, name: &str, count: usize, credits: i32) -> Self {
        let clients: Vec<Arc<JobsClient>> = (pipeline.notifiers.iter())
            .map(|notifier| Arc::new(JobsClient::new(&format!("http://{notifier}"), JWT_SECRET)))
            .collect();
        let users: Vec<String> = (0..count).map(|i| format!("{name}-{i}")).collect();
        let mut browsers = Vec::new();
        let mut watchers = Vec::new();
        for user in &users {
            accounts::ensure_user(&pipeline.pool, user, credits)
                .await
                .unwrap();
            for notifier in &pipeline.notifiers {
                let inbox = Arc::new(Mutex::new(Inbox::default()));
                browsers.push((user.clone(), inbox.clone()));
                watchers.push(tokio::spawn(watch_user(
                    notifier.clone(),
                    clients[0].token(user, Duration::from_secs(3600)),
                    inbox,
                    None,
                )));
            }
        }
        oracle::wait_greeted(browsers.iter().map(|(_, inbox)| inbox)).await;
        Self {
            clients,
            users,
            browsers,
            watchers,
        }
    }

    /// The end of a run: creation stops (`creating` is [`Creations::start`]'s task), every
    /// job the simulator ran settles, then the oracle compares it all with what the
    /// simulator decided (returned with the verdict): jobs, credits, every browser.
    pub async fn judge(
        &self,
        pipeline: &Pipeline,
        creations: &Creations,
        creating: JoinHandle<()>,
        start_credits: i32,
    ) -> (HashMap<String, Value>, Verdict) {
        creations.finish(creating).await;
        let decided = oracle::settle(&pipeline.deployment(), Duration::from_secs(240)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let verdict = oracle::check(
            &pipeline.deployment(),
            &decided,
            start_credits,
            self.inboxes(),
        )
        .await;
        (decided, verdict)
    }

    /// Every browser with its user, as the oracle takes them.
    pub fn inboxes(&self) -> impl Iterator<Item = (&String, &Arc<Mutex<Inbox>>)> {
        self.browsers.iter().map(|(user, inbox)| (user, inbox))
    }

    /// How many times the browsers had to reconnect.
    pub fn reconnects(&self) -> usize {
        (self.browsers.iter())
            .map(|(_, inbox)| inbox.lock().unwrap().reconnects)
            .sum()
    }

    /// Closes every browser.
    pub fn leave(self) {
        for watcher in self.watchers {
            watcher.abort();
        }
    }
}
