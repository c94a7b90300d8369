use shared::amqp::dead_letters::{self, Selection};
use worker::config::{Cli, Command, DeadLetterAction};
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
        Command::DeadLetters { action } => {
            let (connection, channel, topology) = dead_letters::open(&cli.config.amqp).await?;
            match action {
                DeadLetterAction::List => {
                    let letters = dead_letters::list(&channel, &topology).await?;
                    println!(
                        "{} webhook(s) in {}",
                        letters.len(),
                        topology.dead_letter_queue()
                    );
                    for letter in letters {
                        println!(
                            "{}  job_id={}  status={}  attempts={}  reason: {}",
                            letter.webhook_id,
                            letter.job_id.as_deref().unwrap_or("-"),
                            letter.status.as_deref().unwrap_or("-"),
                            letter.attempts,
                            letter.reason
                        );
                    }
                }
                DeadLetterAction::Replay { all, ids } => {
                    let selection = if all {
                        Selection::All
                    } else {
                        Selection::Ids(ids)
                    };
                    let replayed = dead_letters::replay(&channel, &topology, &selection).await?;
                    println!(
                        "replayed {} webhook(s) to {}",
                        replayed.len(),
                        topology.webhooks_queue()
                    );
                    for letter in replayed {
                        println!(
                            "{}  job_id={}",
                            letter.webhook_id,
                            letter.job_id.as_deref().unwrap_or("-")
                        );
                    }
                }
            }
            let _ = connection.close(200, "done".into()).await;
        }
    }
    Ok(())
}
