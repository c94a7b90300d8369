//! `ingest secret fetch` against `replicate-sim serve`.

use std::net::TcpListener;
use std::time::Duration;

use replicate_sim::api;
use replicate_sim::faults::Faults;
use replicate_sim::lifecycle::Simulator;
use shared::webhook::WebhookSecret;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_fetch_prints_the_accounts_signing_secret() {
    let secret = WebhookSecret::from_bytes(b"the-accounts-signing-secret-32b!".to_vec());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let api_url = format!("{base_url}/v1");
    let simulator = Simulator::new(
        secret.clone(),
        Faults::default(),
        base_url.clone(),
        Duration::from_millis(50),
    );
    tokio::spawn(api::server(listener, simulator, Some("r8_token".into())).unwrap());

    assert_eq!(
        ingest::secret::fetch(&api_url, "r8_token").await.unwrap(),
        secret.to_whsec()
    );
    let refused = ingest::secret::fetch(&api_url, "wrong").await.unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");

    // The binary, as an operator runs it.
    let binary = shared::testing::workspace_binary("ingest");
    let output = tokio::process::Command::new(binary)
        .args(["secret", "fetch"])
        .env_clear()
        .env("REPLICATE_API_URL", &api_url)
        .env("REPLICATE_API_TOKEN", "r8_token")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().trim(),
        secret.to_whsec()
    );
}
