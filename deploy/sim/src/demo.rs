//! `replicate-sim demo`: the web app of a small AI photo product, submitting a job every few
//! seconds for a demo user, so the gallery has something to show.

use std::time::Duration;

use notifier::auth::Auth;

use crate::config::DemoArgs;
use crate::webapp::{WebApp, WebAppError, random_kind};

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let pool = shared::db::prepare(&args.app.database).await?;
    let app = WebApp::new(
        pool,
        &args.app.api_url,
        &args.app.api_token,
        &args.app.webhook_url,
    );
    app.ensure_user(&args.user, args.credits).await?;
    let token =
        Auth::new(args.jwt_secret.expose()).mint(&args.user, Duration::from_secs(7 * 24 * 3600));
    println!(
        "\n  Gallery of user {:?}: {}/?token={token}\n",
        args.user,
        args.gallery_url.trim_end_matches('/')
    );

    let every = Duration::from_secs_f64(args.every_secs.max(0.1));
    let stop = shared::shutdown::signal();
    tokio::pin!(stop);
    loop {
        let kind = random_kind();
        match app.submit(&args.user, kind).await {
            Ok(job) => {
                tracing::info!(kind = %job.kind, job_id = %job.job_id, id = %job.id, cost = job.cost, "job submitted")
            }
            Err(WebAppError::InsufficientCredits(user)) => {
                app.top_up(&user, args.credits).await?;
                tracing::info!(%user, credits = args.credits, "demo user topped up");
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
