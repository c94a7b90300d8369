//! `replicate-sim serve` behaves like Replicate's API for this pipeline: jobs run through a
//! lifecycle with signed webhooks, outputs are real PNGs, cancel works, the secret endpoint
//! needs a token.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use replicate_sim::api;
use replicate_sim::faults::Faults;
use replicate_sim::lifecycle::Simulator;
use serde_json::{Value, json};
use shared::webhook::{SignedHeaders, Verifier, WebhookSecret, WebhookSecrets};

type Received = Arc<Mutex<Vec<Value>>>;

/// A webhook receiver that verifies every signature, standing in for ingest.
fn receiver(secret: WebhookSecret) -> (String, Received) {
    let received: Received = Arc::default();
    let verifier = web::Data::new(Verifier::new(
        WebhookSecrets::new(vec![secret]).unwrap(),
        Duration::from_secs(300),
    ));
    let store = web::Data::new(received.clone());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(verifier.clone())
            .app_data(store.clone())
            .route(
                "/hook",
                web::post().to(
                    |request: HttpRequest,
                     body: web::Bytes,
                     verifier: web::Data<Verifier>,
                     store: web::Data<Received>| async move {
                        let header = |name: &str| {
                            request
                                .headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned()
                        };
                        let (id, timestamp, signature) = (
                            header("webhook-id"),
                            header("webhook-timestamp"),
                            header("webhook-signature"),
                        );
                        let signed = SignedHeaders {
                            id: &id,
                            timestamp: &timestamp,
                            signature: &signature,
                        };
                        if verifier.verify(&signed, &body).is_err() {
                            return HttpResponse::Unauthorized().finish();
                        }
                        store
                            .lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
                        HttpResponse::Ok().finish()
                    },
                ),
            )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    (url, received)
}

fn simulator(secret: WebhookSecret) -> (String, reqwest::Client) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let simulator = Simulator::new(
        secret,
        Faults::default(),
        base.clone(),
        Duration::from_millis(20),
    );
    tokio::spawn(api::server(listener, simulator, Some("token-1".into())).unwrap());
    (base, shared::http::client_builder().build().unwrap())
}

async fn wait_for_status(http: &reqwest::Client, url: &str, status: &str) -> Value {
    for _ in 0..200 {
        let object: Value = http
            .get(url)
            .bearer_auth("token-1")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if object["status"] == status {
            return object;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never reached {status}");
}

/// Waits until the last webhook received says `status` (the API answers before its
/// webhook has arrived).
async fn last_webhook_is(received: &std::sync::Mutex<Vec<Value>>, status: &str) {
    shared::testing::eventually(Duration::from_secs(10), || async {
        received
            .lock()
            .unwrap()
            .last()
            .is_some_and(|webhook| webhook["status"] == status)
    })
    .await
    .unwrap_or_else(|_| panic!("no {status} webhook arrived"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prediction_runs_its_lifecycle_with_signed_webhooks_and_png_outputs() -> anyhow::Result<()>
{
    let secret = WebhookSecret::from_bytes(vec![9u8; 32]);
    let (hook, received) = receiver(secret.clone());
    let (base, http) = simulator(secret);
    let created: Value = http
        .post(format!("{base}/v1/predictions"))
        .bearer_auth("token-1")
        .json(&json!({"input": {"prompt": "a corgi", "num_outputs": 2}, "webhook": hook, "webhook_events_filter": ["start", "logs", "completed"]}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(created["status"], "starting");
    let id = created["id"].as_str().unwrap().to_owned();
    let done = wait_for_status(&http, &format!("{base}/v1/predictions/{id}"), "succeeded").await;
    last_webhook_is(&received, "succeeded").await;

    let webhooks = received.lock().unwrap().clone();
    let statuses: Vec<&str> = webhooks
        .iter()
        .map(|w| w["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.first(), Some(&"starting"));
    assert_eq!(statuses.last(), Some(&"succeeded"));
    assert!(statuses.contains(&"processing"));
    assert!(
        webhooks
            .iter()
            .any(|w| w["logs"].as_str().unwrap().contains("%|")),
        "tqdm progress in logs"
    );
    let outputs = done["output"].as_array().unwrap();
    assert_eq!(outputs.len(), 2);
    let image = http.get(outputs[0].as_str().unwrap()).send().await?;
    assert_eq!(image.headers()["content-type"], "image/png");
    assert_eq!(
        image.bytes().await?.to_vec(),
        replicate_sim::images::png(&id, 0)
    );
    assert_eq!(
        http.get(format!("{base}/delivery/{id}/out-2.png"))
            .send()
            .await?
            .status(),
        404
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_training_canceled_and_the_secret_needs_a_token() -> anyhow::Result<()> {
    let secret = WebhookSecret::from_bytes(vec![5u8; 32]);
    let (hook, received) = receiver(secret.clone());
    let (base, http) = simulator(secret.clone());
    let created: Value = http
        .post(format!("{base}/v1/trainings"))
        .bearer_auth("token-1")
        .json(&json!({"input": {"input_images": "https://x/y.zip"}, "webhook": hook}))
        .send()
        .await?
        .json()
        .await?;
    let id = created["id"].as_str().unwrap();
    let canceled: Value = http
        .post(format!("{base}/v1/trainings/{id}/cancel"))
        .bearer_auth("token-1")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(canceled["id"], id);
    wait_for_status(&http, &format!("{base}/v1/trainings/{id}"), "canceled").await;
    last_webhook_is(&received, "canceled").await;

    let refused = http
        .get(format!("{base}/v1/webhooks/default/secret"))
        .send()
        .await?;
    assert_eq!(refused.status(), 401);
    let wrong = http
        .get(format!("{base}/v1/webhooks/default/secret"))
        .bearer_auth("nope")
        .send()
        .await?;
    assert_eq!(wrong.status(), 401);
    let key: Value = http
        .get(format!("{base}/v1/webhooks/default/secret"))
        .bearer_auth("token-1")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(key["key"], secret.to_whsec());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_of_its_own_the_simulator_never_hands_out_its_secret() -> anyhow::Result<()>
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let simulator = Simulator::new(
        WebhookSecret::from_bytes(vec![6u8; 32]),
        Faults::default(),
        base.clone(),
        Duration::from_millis(20),
    );
    tokio::spawn(api::server(listener, simulator, None).unwrap());
    let http = shared::http::client_builder().build().unwrap();
    let answer = http
        .get(format!("{base}/v1/webhooks/default/secret"))
        .bearer_auth("anything")
        .send()
        .await?;
    assert_eq!(answer.status(), 403);
    assert!(!answer.text().await?.contains("whsec_"));
    Ok(())
}
