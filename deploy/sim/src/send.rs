//! `replicate-sim send`: the first manual test an operator runs, done right.

use serde_json::{Value, json};
use shared::webhook::WebhookSecret;

use crate::lifecycle::{post_webhook, signed_headers};

/// The body of a webhook for `job_id` with `status` and `output`, shaped as Replicate's.
pub fn body(job_id: &str, status: &str, output: Value) -> Vec<u8> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let terminal = shared::replicate::Status::from(status).is_terminal();
    serde_json::to_vec(&json!({
        "id": job_id,
        "model": "stability-ai/sdxl",
        "version": crate::prediction::DEFAULT_VERSION,
        "input": {"prompt": "a studio photo of a rainbow colored corgi"},
        "logs": "",
        "output": output,
        "error": if status == "failed" { json!("failed (sent by replicate-sim send)") } else { Value::Null },
        "status": status,
        "source": "api",
        "data_removed": false,
        "created_at": now,
        "started_at": now,
        "completed_at": if terminal { json!(now) } else { Value::Null },
    }))
    .expect("serialises")
}

/// The curl command that posts the same signed webhook.
pub fn curl_command(secret: &WebhookSecret, to: &str, webhook_id: &str, body: &[u8]) -> String {
    let quote = |text: &str| format!("'{}'", text.replace('\'', r"'\''"));
    let mut command = format!(
        "curl -sS -X POST {} \\\n  -H 'content-type: application/json'",
        quote(to)
    );
    for (name, value) in signed_headers(secret, webhook_id, body) {
        command.push_str(&format!(" \\\n  -H {}", quote(&format!("{name}: {value}"))));
    }
    command.push_str(&format!(
        " \\\n  --data-raw {}",
        quote(&String::from_utf8_lossy(body))
    ));
    command
}

/// Sends the webhook; returns the HTTP status and the response body.
pub async fn send(
    secret: &WebhookSecret,
    to: &str,
    webhook_id: &str,
    body: &[u8],
) -> Result<(u16, String), String> {
    let http = shared::http::client_builder()
        .build()
        .map_err(|err| err.to_string())?;
    let (status, text) = post_webhook(&http, secret, to, webhook_id, body)
        .await
        .map_err(|err| format!("cannot reach {to}: {err}"))?;
    Ok((status.as_u16(), text))
}
