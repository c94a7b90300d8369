use std::net::TcpListener;
use std::time::Duration;

use replicate_sim::config::{BenchCommand, Cli, Command};
use replicate_sim::lifecycle::Simulator;
use replicate_sim::{api, bench, demo, load, prediction, send};

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
        Command::Bench(BenchCommand::Broker {
            amqp_url,
            seconds,
            concurrency,
            out,
        }) => bench::save(&out, &bench::broker(&amqp_url, seconds, concurrency).await?)?,
        Command::Bench(BenchCommand::Ingest {
            url,
            seconds,
            concurrency,
            out,
            signing,
        }) => bench::save(
            &out,
            &bench::ingest(&url, signing.secrets.primary(), seconds, concurrency).await?,
        )?,
        Command::Bench(BenchCommand::Worker {
            amqp_url,
            database,
            worker_bin,
            jobs,
            out,
        }) => bench::save(
            &out,
            &bench::worker(&database, &amqp_url, &worker_bin, jobs).await?,
        )?,
        Command::Bench(BenchCommand::Fanout {
            notifier_url,
            nchan_url,
            pids,
            amqp_url,
            prefix,
            jwt_secret,
            sockets,
            users,
            rates,
            seconds,
            out,
        }) => {
            let target = match nchan_url {
                Some(url) => bench::FanoutTarget::Nchan { url },
                None => bench::FanoutTarget::Notifier {
                    url: notifier_url,
                    amqp_url,
                    prefix,
                    jwt_secret: jwt_secret.expose().to_owned(),
                },
            };
            bench::save(
                &out,
                &bench::fanout(&target, &pids, sockets, users, &rates, seconds).await?,
            )?
        }
        Command::Bench(BenchCommand::Report { out, notes }) => {
            println!("{}", std::fs::read_to_string(bench::report(&out, &notes)?)?);
        }
        Command::Load(args) => {
            let bench = args
                .bench_out
                .clone()
                .map(|dir| (dir, args.bench_name.clone()));
            let report = load::run(args).await?;
            println!("{report}");
            if let Some((dir, name)) = bench {
                let mut figures = report.to_json();
                figures["part"] = serde_json::json!(name);
                bench::save(&dir, &figures)?;
            }
            if report.missing > 0 {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
