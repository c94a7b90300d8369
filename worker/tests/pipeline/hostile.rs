//! Webhook bodies written to hurt: nothing in a correctly signed body may stall a worker.

use std::time::Duration;

use serde_json::json;
use shared::events::Event;

use crate::helpers::{TestEnv, prediction};
use crate::images;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_with_multibyte_characters_before_the_bar_does_not_stall_the_worker() {
    let server = images::start().await;
    let env = TestEnv::new(&server.host).await;
    let mut observer = env.observe_events().await;
    env.insert_user("u1", 0).await;
    env.insert_generation("g1", "u1", "r1", "café", 4).await;
    let worker = env.spawn_worker().await;

    // Models echo the prompt into their logs; a multi-byte character right before `%|`
    // once panicked the progress parser and left the delivery unacked forever.
    for (i, logs) in [
        "Prompt: café 50%|█████     | 25/50",
        "é%|",
        "日本%|",
        "🦊 75%|",
    ]
    .into_iter()
    .enumerate()
    {
        let mut body = prediction("r1", "processing", json!(null));
        body["logs"] = json!(logs);
        env.send(&format!("p{i}"), &body).await;
    }
    let events = observer.collect(Duration::from_secs(2)).await;
    // Webhooks are processed concurrently: in any order.
    let mut progress: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            Event::JobProgress { job, .. } => Some(job.progress),
            _ => None,
        })
        .collect();
    progress.sort_by(f64::total_cmp);
    assert_eq!(progress, [0.5, 0.75], "the bars that can be read are read");

    // The worker still takes work: the job completes, nothing is dead-lettered.
    env.send("done", &prediction("r1", "failed", json!(null)))
        .await;
    env.wait_for_statuses(&[("g1", "FAILED")]).await;
    env.wait_until_idle().await;
    assert!(env.dead_letters().await.is_empty());
    worker.stop().await;
    env.cleanup().await;
}
