use ingest::config::IngestConfig;
use ingest::secret::{SecretCli, SecretCommand};
use ingest::startup::Application;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `ingest secret …` is a tool of its own: it needs no webhook secret or broker.
    if std::env::args().nth(1).as_deref() == Some("secret") {
        let cli: SecretCli = shared::config::parse_from(std::env::args().skip(1));
        let SecretCommand::Fetch { api_url, api_token } = cli.command;
        let key = ingest::secret::fetch(&api_url, api_token.expose()).await?;
        println!("{key}");
        eprintln!(
            "put it in REPLICATE_WEBHOOK_SECRET (keep the old value too, space-separated, while rotating)"
        );
        return Ok(());
    }
    let config: IngestConfig = shared::config::parse();
    shared::telemetry::init(config.telemetry.log_format);
    let app = Application::build(&config)
        .map_err(|err| anyhow::anyhow!("cannot listen on {}: {err}", config.addr))?;
    app.run_until_stopped().await?;
    Ok(())
}
