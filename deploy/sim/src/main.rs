use std::net::TcpListener;
use std::time::Duration;

use replicate_sim::config::{Cli, Command};
use replicate_sim::lifecycle::Simulator;
use replicate_sim::{api, demo, prediction, send};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = shared::config::parse();
    shared::telemetry::init(cli.telemetry.log_format);
    match cli.command {
        Command::Serve(args) => {
            let listener = TcpListener::bind(args.addr)
                .map_err(|err| anyhow::anyhow!("cannot listen on SIM_ADDR {}: {err}", args.addr))?;
            let port = listener.local_addr()?.port();
            let base_url = args
                .public_url
                .unwrap_or_else(|| format!("http://127.0.0.1:{port}"));
            let simulator = Simulator::new(
                args.signing.secrets.primary().clone(),
                args.faults,
                base_url.clone(),
                Duration::from_millis(args.step_ms),
            );
            let server = api::server(listener, simulator, args.api_token)?;
            let handle = server.handle();
            tracing::info!(addr = %args.addr, %base_url, faults = ?args.faults, "replicate-sim serving");
            tokio::spawn(server);
            shared::shutdown::signal().await;
            handle.stop(true).await;
        }
        Command::Demo(args) => demo::run(args).await?,
        Command::Send(args) => {
            let output: serde_json::Value = serde_json::from_str(&args.output)
                .map_err(|err| anyhow::anyhow!("--output is not JSON: {err}"))?;
            let body = send::body(&args.job_id, &args.status, output);
            let webhook_id = format!("msg_{}", prediction::new_id());
            let secret = args.signing.secrets.primary();
            if args.curl {
                println!(
                    "{}",
                    send::curl_command(secret, &args.to, &webhook_id, &body)
                );
            } else {
                let (status, answer) = send::send(secret, &args.to, &webhook_id, &body)
                    .await
                    .map_err(anyhow::Error::msg)?;
                println!("HTTP {status}\n{answer}");
                if !(200..300).contains(&status) {
                    std::process::exit(1);
                }
            }
        }
    }
    Ok(())
}
