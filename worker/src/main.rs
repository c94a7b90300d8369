use worker::config::{Cli, Command};
use worker::startup::Worker;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = shared::config::parse();
    shared::telemetry::init(cli.config.telemetry.log_format);
    match cli.command.unwrap_or(Command::Run) {
        Command::Migrate => {
            let applied = shared::db::migrate(&cli.config.database).await?;
            tracing::info!(?applied, "database is up to date");
        }
        Command::Run => {
            let worker = Worker::build(&cli.config).await?;
            worker.run_until_stopped(shared::shutdown::signal()).await;
        }
    }
    Ok(())
}
