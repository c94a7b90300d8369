//! Configuration shared by the services: read from the environment (and `.env`), typed and
//! validated once at start-up by clap, with the names and defaults of the contract.
//!
//! Each binary flattens the groups it needs into its own `clap::Parser`, so `--help` lists
//! every variable with its default, and a bad value stops the program with one line.
//!
//! Here: parsing and its one-line errors. `secret.rs`: secrets that are never printed;
//! `urls.rs`: broker and database URLs with their passwords redacted; `groups.rs`: the
//! setting groups (database, broker, storage, webhooks, Replicate's API, telemetry).

use clap::Parser;

pub mod groups;
pub mod secret;
pub mod urls;

pub use groups::*;
pub use secret::*;
pub use urls::*;

/// Parses the command line and environment of a binary, after loading `.env`.
///
/// Bad configuration prints one line (`error: …`) and exits with status 2; `--help` and
/// `--version` print and exit 0.
pub fn parse<T: Parser>() -> T {
    parse_from(std::env::args_os())
}

/// [`parse`] from the given arguments (the first is the program name).
pub fn parse_from<T: Parser, I, A>(args: I) -> T
where
    I: IntoIterator<Item = A>,
    A: Into<std::ffi::OsString> + Clone,
{
    if let Err(err) = dotenvy::dotenv()
        && !err.not_found()
    {
        eprintln!("error: cannot read .env: {err}");
        std::process::exit(2);
    }
    match T::try_parse_from(args) {
        Ok(parsed) => parsed,
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            eprintln!("{}", describe(&err, &T::command()));
            std::process::exit(2);
        }
    }
}

/// The one-line message for a configuration error. A rejected value is never echoed (it
/// may be a secret, or a URL with a password): the message names the setting and why.
pub fn describe(err: &clap::Error, command: &clap::Command) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match err.kind() {
        ErrorKind::ValueValidation | ErrorKind::InvalidValue => {
            let setting = match err.get(ContextKind::InvalidArg) {
                Some(ContextValue::String(arg)) => {
                    // `--database-url <…>` → `DATABASE_URL (--database-url)`.
                    let long = arg.split_whitespace().next().unwrap_or(arg);
                    let env = command
                        .get_arguments()
                        .find(|a| a.get_long().is_some_and(|l| format!("--{l}") == long))
                        .and_then(|a| a.get_env())
                        .map(|env| env.to_string_lossy().into_owned());
                    match env {
                        Some(env) => format!("{env} ({long})"),
                        None => long.to_owned(),
                    }
                }
                _ => "a setting".to_owned(),
            };
            let reason = std::error::Error::source(err)
                .map(|source| source.to_string())
                .or_else(|| match err.get(ContextKind::ValidValue) {
                    Some(ContextValue::Strings(valid)) => {
                        Some(format!("expected one of {}", valid.join(", ")))
                    }
                    _ => None,
                })
                .unwrap_or_else(|| "not accepted".to_owned());
            format!("error: invalid value for {setting}: {reason}")
        }
        _ => one_line(&err.to_string()),
    }
}

/// Folds clap's multi-line error into one line, dropping the usage hints after it.
fn one_line(message: &str) -> String {
    message
        .lines()
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn amqp_url_lists_cluster_nodes() {
        let nodes: AmqpNodes =
            "amqp://guest:s3cret@r1:5672/%2f, amqp://guest:s3cret@r2:5672/%2f amqp://r3:5672"
                .parse()
                .unwrap();
        assert_eq!(nodes.nodes().len(), 3);
        assert_eq!(nodes.as_str(), "amqp://guest:s3cret@r1:5672/%2f");
        assert_eq!(
            nodes.to_string(),
            "amqp://guest:<redacted>@r1:5672/%2f, amqp://guest:<redacted>@r2:5672/%2f, amqp://r3:5672"
        );
        let bad = "amqp://r1:5672 http://r2".parse::<AmqpNodes>().unwrap_err();
        assert!(bad.starts_with("node 2: not an AMQP URL"), "{bad}");
        assert!(" , ".parse::<AmqpNodes>().is_err());
    }

    #[test]
    fn amqp_url_password_is_redacted() {
        let url: AmqpUrl = "amqp://guest:s3cret@rabbit:5672/%2f".parse().unwrap();
        assert_eq!(url.to_string(), "amqp://guest:<redacted>@rabbit:5672/%2f");
        assert!(!format!("{url:?}").contains("s3cret"));
        let bare: AmqpUrl = "amqp://rabbit:5672/%2f".parse().unwrap();
        assert_eq!(bare.to_string(), "amqp://rabbit:5672/%2f");
    }

    #[test]
    fn passwords_in_query_parameters_are_redacted() {
        let url: DatabaseUrl = "postgres://app@db:5432/pipeline?sslmode=require&password=hunter2"
            .parse()
            .unwrap();
        assert_eq!(
            url.to_string(),
            "postgres://app@db:5432/pipeline?sslmode=require&password=<redacted>"
        );
        assert!(!format!("{url:?}").contains("hunter2"));
    }

    /// Every setting group that carries a secret, as a binary flattens them.
    #[derive(Debug, Parser)]
    struct Secrets {
        #[command(flatten)]
        webhook: WebhookConfig,
        #[command(flatten)]
        database: DatabaseConfig,
        #[command(flatten)]
        amqp: AmqpConfig,
    }

    #[test]
    fn rejected_settings_are_named_but_never_echoed() {
        let good = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let cases = [
            (
                vec![
                    "--webhook-secret",
                    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw not-base64!!",
                ],
                "REPLICATE_WEBHOOK_SECRET",
                "MfKQ9r8G",
            ),
            (
                vec![
                    "--webhook-secret",
                    good,
                    "--database-url",
                    "mysql://app:hunter2@db/x",
                ],
                "DATABASE_URL",
                "hunter2",
            ),
            (
                vec![
                    "--webhook-secret",
                    good,
                    "--amqp-url",
                    "amqp://app:hunter2@rabbit:port/%2f",
                ],
                "AMQP_URL",
                "hunter2",
            ),
        ];
        for (args, setting, secret) in cases {
            let err = Secrets::try_parse_from(std::iter::once("test").chain(args)).unwrap_err();
            let message = describe(&err, &<Secrets as clap::CommandFactory>::command());
            assert!(message.contains(setting), "{message}");
            assert!(!message.contains(secret), "echoed: {message}");
            assert!(!message.contains('\n'), "one line: {message}");
        }
    }

    #[test]
    fn database_url_parts() {
        let url: DatabaseUrl =
            "postgres://postgres:pw@127.0.0.1:5432/replicate_pipeline?sslmode=disable"
                .parse()
                .unwrap();
        assert_eq!(url.database_name(), "replicate_pipeline");
        assert_eq!(
            url.with_database("postgres").as_str(),
            "postgres://postgres:pw@127.0.0.1:5432/postgres?sslmode=disable"
        );
        assert_eq!(
            url.to_string(),
            "postgres://postgres:<redacted>@127.0.0.1:5432/replicate_pipeline?sslmode=disable"
        );
        let no_password: DatabaseUrl = "postgres://postgres@127.0.0.1:5432/db".parse().unwrap();
        assert_eq!(
            no_password.to_string(),
            "postgres://postgres@127.0.0.1:5432/db"
        );
        // Several hosts (libpq's form): the first that accepts writes is used.
        let pair: DatabaseUrl =
            "postgres://app:pw@10.0.0.1:5432,10.0.0.2:5432/pipeline?target_session_attrs=read-write"
                .parse()
                .unwrap();
        assert_eq!(pair.database_name(), "pipeline");
        assert_eq!(
            pair.with_database("postgres").as_str(),
            "postgres://app:pw@10.0.0.1:5432,10.0.0.2:5432/postgres?target_session_attrs=read-write"
        );
        assert_eq!(
            pair.to_string(),
            "postgres://app:<redacted>@10.0.0.1:5432,10.0.0.2:5432/pipeline?target_session_attrs=read-write"
        );
        assert!("postgres://host:5432".parse::<DatabaseUrl>().is_err());
        assert!("mysql://host/db".parse::<DatabaseUrl>().is_err());
    }

    #[test]
    fn amqp_url_is_validated() {
        assert!("http://nope".parse::<AmqpUrl>().is_err());
    }

    #[test]
    fn clap_errors_become_one_line() {
        let folded = one_line(
            "error: the following required arguments were not provided:\n  --webhook-secret <WHSEC>\n\nUsage: ingest --webhook-secret <WHSEC>\n\nFor more information, try '--help'.\n",
        );
        assert_eq!(
            folded,
            "error: the following required arguments were not provided: --webhook-secret <WHSEC>"
        );
    }
}
