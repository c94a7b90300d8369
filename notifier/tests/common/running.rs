//! A notifier serving in the test's process on port 0 — the same `Notifier::build` and
//! `run_until_stopped` as production — ready once its broker link is up. Shared by the
//! notifier's two test binaries (`live`, `jobs`).

// Each of the two test binaries uses part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use notifier::config::NotifierConfig;
use notifier::startup::Notifier;
use notifier::web::state::AppState;
use tokio::sync::oneshot;

pub struct Running {
    /// `127.0.0.1:<port>`
    pub address: String,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn start(config: &NotifierConfig) -> Self {
        let notifier = Notifier::build(config).await.expect("notifier starts");
        let address = format!("127.0.0.1:{}", notifier.port());
        let state = notifier.state();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(notifier.run_until_stopped(async {
            let _ = stopped.await;
        }));
        shared::testing::eventually(Duration::from_secs(10), || {
            let state = state.clone();
            async move { state.hub.broker_connected() }
        })
        .await
        .expect("the notifier connects to RabbitMQ");
        Self {
            address,
            state,
            stop: Some(stop),
            task,
        }
    }

    /// Asks the notifier to stop (SIGTERM's path) and waits until it has.
    pub async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .expect("stops in time")
            .unwrap();
    }

    pub async fn stop(mut self) {
        self.shut_down().await;
    }
}
