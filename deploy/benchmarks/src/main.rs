use pipeline_bench::config::{Cli, Command};
use pipeline_bench::{broker, fanout, ingest, load, measure, report, worker};

fn main() -> anyhow::Result<()> {
    let cli: Cli = shared::config::parse();
    shared::telemetry::init(cli.telemetry.log_format);
    // The fan-out client runs on one thread: its 10,000 sockets wake it 50,000 times a
    // second, and on a thread pool those wake-ups hand work between threads — CPU taken
    // from the two cores the notifier and the broker under test share with it.
    let mut runtime = match cli.command {
        Command::Fanout { .. } => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all().build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Broker {
            amqp_url,
            seconds,
            concurrency,
            out,
            part,
        } => {
            let mut measured = broker::broker(&amqp_url, seconds, concurrency).await?;
            measured["part"] = part.into();
            measure::save(&out, &measured)?
        }
        Command::Ingest {
            url,
            seconds,
            concurrency,
            out,
            signing,
        } => measure::save(
            &out,
            &ingest::ingest(&url, signing.secrets.primary(), seconds, concurrency).await?,
        )?,
        Command::Worker {
            amqp_url,
            database,
            worker_bin,
            jobs,
            out,
        } => measure::save(
            &out,
            &worker::worker(&database, &amqp_url, &worker_bin, jobs).await?,
        )?,
        Command::Fanout {
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
        } => {
            let target = match nchan_url {
                Some(url) => fanout::FanoutTarget::Nchan { url },
                None => fanout::FanoutTarget::Notifier {
                    url: notifier_url,
                    amqp_url,
                    prefix,
                    jwt_secret: jwt_secret.expose().to_owned(),
                },
            };
            measure::save(
                &out,
                &fanout::fanout(&target, &pids, sockets, users, &rates, seconds).await?,
            )?
        }
        Command::Report { out, notes } => {
            println!(
                "{}",
                std::fs::read_to_string(report::report(&out, &notes)?)?
            );
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
                measure::save(&dir, &figures)?;
            }
            if report.missing > 0 {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
