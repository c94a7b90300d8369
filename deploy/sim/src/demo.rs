//! `replicate-sim demo`: the web app of a small AI photo product, as far as a demo needs
//! it: a user with credits, and the gallery link with that user's token. Jobs are created
//! in the gallery; with `--every-secs` the demo also creates one now and then.

use std::time::Duration;

use crate::accounts;
use crate::config::DemoArgs;
use crate::jobs_client::{JobsClient, random_prompt};

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let pool = shared::db::prepare(&args.app.database).await?;
    accounts::ensure_user(&pool, &args.user, args.credits).await?;
    let client = JobsClient::new(&args.app.notifier_url, args.app.jwt_secret.expose());
    let token = client.token(&args.user, Duration::from_secs(7 * 24 * 3600));
    println!(
        "\n  Gallery of user {:?}: {}/?token={token}\n",
        args.user,
        args.app.notifier_url.trim_end_matches('/')
    );
    if args.every_secs <= 0.0 {
        shared::shutdown::signal().await;
        return Ok(());
    }

    let every = Duration::from_secs_f64(args.every_secs.max(0.1));
    let stop = shared::shutdown::signal();
    tokio::pin!(stop);
    loop {
        match client.generate(&args.user, random_prompt()).await {
            Ok(job) => {
                tracing::info!(kind = %job.kind, job_id = %job.job_id, id = %job.id, cost = job.cost, "job submitted")
            }
            Err(err) if err.status() == Some(402) => {
                accounts::top_up(&pool, &args.user, args.credits).await?;
                tracing::info!(user = %args.user, credits = args.credits, "demo user topped up");
            }
            Err(err) => tracing::warn!(error = %err, "job not submitted"),
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    Ok(())
}
