//! `ingest secret fetch`: asks Replicate for the account's webhook signing secret, the value
//! to put in `REPLICATE_WEBHOOK_SECRET`.

use clap::{Parser, Subcommand};
use shared::config::SecretString;
use shared::webhook::WebhookSecret;

/// `ingest secret …`
#[derive(Debug, Clone, Parser)]
#[command(name = "ingest secret", version)]
pub struct SecretCli {
    #[command(subcommand)]
    pub command: SecretCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SecretCommand {
    /// Print the signing secret of the account behind REPLICATE_API_TOKEN.
    Fetch {
        /// Replicate's API (the same setting as the notifier's jobs API).
        #[arg(
            long,
            env = "REPLICATE_API_URL",
            default_value = "https://api.replicate.com/v1"
        )]
        api_url: String,
        #[arg(long, env = "REPLICATE_API_TOKEN", hide_env_values = true)]
        api_token: SecretString,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{url} answered {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url} answered without a usable key: {reason}")]
    BadAnswer { url: String, reason: String },
}

/// `GET {api_url}/webhooks/default/secret` with the API token; returns the `whsec_…` key.
pub async fn fetch(api_url: &str, api_token: &str) -> Result<String, FetchError> {
    let url = format!("{}/webhooks/default/secret", api_url.trim_end_matches('/'));
    let client =
        shared::http::client_builder()
            .build()
            .map_err(|source| FetchError::Unreachable {
                url: url.clone(),
                source,
            })?;
    let response = client
        .get(&url)
        .bearer_auth(api_token)
        .send()
        .await
        .map_err(|source| FetchError::Unreachable {
            url: url.clone(),
            source,
        })?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(FetchError::Refused {
            url,
            status: status.as_u16(),
            body,
        });
    }
    let answer: serde_json::Value =
        serde_json::from_str(&body).map_err(|err| FetchError::BadAnswer {
            url: url.clone(),
            reason: err.to_string(),
        })?;
    let key = answer["key"]
        .as_str()
        .ok_or_else(|| FetchError::BadAnswer {
            url: url.clone(),
            reason: "no \"key\" field".into(),
        })?;
    key.parse::<WebhookSecret>()
        .map_err(|err| FetchError::BadAnswer {
            url: url.clone(),
            reason: err.to_string(),
        })?;
    Ok(key.to_owned())
}
