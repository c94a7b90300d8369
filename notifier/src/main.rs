use std::time::Duration;

use notifier::config::{Cli, Command};
use notifier::startup::Notifier;
use shared::auth::Auth;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = shared::config::parse();
    shared::telemetry::init(cli.config.telemetry.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Token { user, ttl_secs } => {
            let auth = Auth::new(cli.config.jwt_secret.expose());
            println!("{}", auth.mint(&user, Duration::from_secs(ttl_secs)));
        }
        Command::Serve => {
            let notifier = Notifier::build(&cli.config).await?;
            notifier.run_until_stopped(shared::shutdown::signal()).await;
        }
    }
    Ok(())
}
