use ingest::config::IngestConfig;
use ingest::startup::Application;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: IngestConfig = shared::config::parse();
    shared::telemetry::init(config.telemetry.log_format);
    let app = Application::build(&config)
        .map_err(|err| anyhow::anyhow!("cannot listen on {}: {err}", config.addr))?;
    app.run_until_stopped().await?;
    Ok(())
}
