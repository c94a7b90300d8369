//! The notifier's jobs API against the real PostgreSQL and RabbitMQ, with the simulator as
//! Replicate: every status code, the debit and the refund in the database, a Replicate
//! outage during creation (refunded once), and a user who cannot upscale another user's
//! image.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use notifier::config::{JobsConfig, NotifierConfig, SocketConfig};
use notifier::startup::Notifier;
use replicate_sim::accounts;
use replicate_sim::faults::Faults;
use replicate_sim::lifecycle::Simulator;
use serde_json::{Value, json};
use shared::auth::Auth;
use shared::config::{LogFormat, TelemetryConfig};
use shared::db::schema::{credit_transactions, generations, job_events, users};
use shared::testing::{Isolated, browser};
use shared::webhook::WebhookSecret;

const JWT_SECRET: &str = "jobs-api-test-secret-of-32-bytes!";
const SIM_TOKEN: &str = "sim-token-1";

/// A notifier (port 0) whose jobs API talks to a simulator (port 0).
struct Api {
    base: String,
    http: reqwest::Client,
    auth: Auth,
    simulator: String,
    services: Isolated,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The notifier's serving task: done once it has stopped.
    serving: tokio::task::JoinHandle<()>,
}

/// How the test wants Replicate to be.
enum Replicate {
    /// The simulator, with the right token.
    Simulator,
    /// The simulator answering every creation this late (the job runs meanwhile).
    Slow(Duration),
    /// The simulator, but the notifier holds a token it refuses.
    WrongToken,
    /// Nothing listens.
    Down,
    /// No `REPLICATE_API_TOKEN`: creation is not configured.
    NotConfigured,
}

fn simulator(create_delay: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let simulator = Simulator::new(
        WebhookSecret::from_bytes(vec![7u8; 32]),
        Faults {
            create_delay_ms: create_delay.as_millis() as u64,
            ..Faults::default()
        },
        base.clone(),
        // Slow enough that jobs stay running during a test.
        Duration::from_secs(30),
    );
    tokio::spawn(replicate_sim::api::server(listener, simulator, Some(SIM_TOKEN.into())).unwrap());
    base
}

fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Api {
    async fn start(replicate: Replicate) -> Self {
        let services = Isolated::new("jobs").await;
        let create_delay = match replicate {
            Replicate::Slow(delay) => delay,
            _ => Duration::ZERO,
        };
        let simulator = simulator(create_delay);
        let (api_url, token) = match replicate {
            Replicate::Simulator | Replicate::Slow(_) => {
                (format!("{simulator}/v1"), Some(SIM_TOKEN))
            }
            Replicate::WrongToken => (format!("{simulator}/v1"), Some("not-the-token")),
            Replicate::Down => (
                format!("http://127.0.0.1:{}/v1", closed_port()),
                Some(SIM_TOKEN),
            ),
            Replicate::NotConfigured => (format!("{simulator}/v1"), None),
        };
        let config = NotifierConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            jwt_secret: JWT_SECRET.parse().unwrap(),
            database: services.database.clone(),
            amqp: services.amqp.clone(),
            storage: services.storage(),
            sockets: SocketConfig {
                ping_secs: 20,
                idle_timeout_secs: 60,
                send_queue: 64,
                send_timeout_secs: 10,
                ..notifier::config::SocketConfig::default()
            },
            jobs: JobsConfig {
                replicate: shared::config::ReplicateApiConfig {
                    url: api_url,
                    token: token.into(),
                    create_timeout_secs: 30,
                },
                public_webhook_url: "http://127.0.0.1:9/api/webhooks/replicate".into(),
                generation_model: "black-forest-labs/flux-schnell".parse().unwrap(),
                upscale_model: "nightmareai/real-esrgan:f121d640".parse().unwrap(),
                training_model: "replicate/fast-flux-trainer:56cb4a64".parse().unwrap(),
                training_destination: Some("acme/portraits".into()),
                generation_cost: 4,
                upscale_cost: 2,
                training_cost: 40,
                max_creations_per_user: 8,
                max_creations_in_flight: 256,
            },
            ingest_url: format!("http://127.0.0.1:{}", closed_port()),
            telemetry: TelemetryConfig {
                log_format: LogFormat::Pretty,
            },
        };
        let notifier = Notifier::build(&config).await.unwrap();
        let base = format!("http://127.0.0.1:{}", notifier.port());
        let state = notifier.state();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(notifier.run_until_stopped(async {
            let _ = stopped.await;
        }));
        shared::testing::eventually(Duration::from_secs(10), || {
            let state = state.clone();
            async move { state.hub.broker_connected() }
        })
        .await
        .expect("the notifier connects to RabbitMQ");
        Self {
            base,
            http: shared::http::client_builder().build().unwrap(),
            auth: Auth::new(JWT_SECRET),
            simulator,
            services,
            stop: Some(stop),
            serving,
        }
    }

    /// Asks the notifier to stop (SIGTERM's path) and waits until it has.
    async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.serving).await.unwrap();
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(user) = user {
            request = request.bearer_auth(self.auth.mint(user, Duration::from_secs(60)));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, user: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(user), Some(body))
            .await
    }

    async fn get(&self, path: &str, user: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(user), None)
            .await
    }

    /// A user of the web app with `credits`.
    async fn user(&self, id: &str, credits: i32) {
        accounts::ensure_user(&self.services.pool, id, credits)
            .await
            .unwrap();
    }

    async fn credits(&self, user: &str) -> i32 {
        let mut conn = shared::db::connection(&self.services.pool).await.unwrap();
        users::table
            .find(user)
            .select(users::credits)
            .first(&mut conn)
            .await
            .unwrap()
    }

    /// `(kind, amount, job_id)` of a user's credit movements, oldest first.
    async fn movements(&self, user: &str) -> Vec<(String, i32, String)> {
        let mut conn = shared::db::connection(&self.services.pool).await.unwrap();
        credit_transactions::table
            .filter(credit_transactions::user_id.eq(user))
            .order(credit_transactions::id)
            .select((
                credit_transactions::kind,
                credit_transactions::amount,
                credit_transactions::job_id,
            ))
            .load(&mut conn)
            .await
            .unwrap()
    }

    /// The job as Replicate (the simulator) has it.
    async fn on_replicate(&self, kind: &str, id: &str) -> Value {
        self.http
            .get(format!("{}/v1/{kind}/{id}", self.simulator))
            .bearer_auth(SIM_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        self.shut_down().await;
        self.services.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_is_debited_once_created_on_replicate_and_pushed_live() -> anyhow::Result<()> {
    let api = Api::start(Replicate::Simulator).await;
    api.user("u1", 10).await;
    let token = api.auth.mint("u1", Duration::from_secs(60));
    let mut socket = browser::connect(
        api.base.trim_start_matches("http://"),
        &format!("token={token}"),
    )
    .await?;
    let hello = browser::next_json(&mut socket, Duration::from_secs(10))
        .await
        .context("no hello")?;
    assert_eq!(hello["type"], "hello");

    let (status, answer) = api
        .post("/api/generations", "u1", json!({"prompt": "  a corgi  "}))
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["credits"], 6);
    let job = &answer["job"];
    assert_eq!(job["kind"], "generation");
    assert_eq!(job["status"], "PENDING");
    assert_eq!(job["prompt"], "a corgi");
    assert_eq!(job["credits_used"], 4);
    let replicate_id = job["job_id"].as_str().expect("Replicate's id").to_owned();
    let id = job["id"].as_str().unwrap().to_owned();

    // On Replicate: the official model's route, our webhook URL and every event.
    let created = api.on_replicate("predictions", &replicate_id).await;
    assert_eq!(created["model"], "black-forest-labs/flux-schnell");
    assert_eq!(created["input"]["prompt"], "a corgi");
    // The webhook URL is tagged with the row, so its first webhook can bind the job.
    assert_eq!(
        created["webhook"],
        format!("http://127.0.0.1:9/api/webhooks/replicate?job={id}").as_str()
    );
    assert_eq!(
        created["webhook_events_filter"],
        json!(["start", "output", "logs", "completed"])
    );

    // In the database: the balance, one debit under Replicate's id, the row.
    assert_eq!(api.credits("u1").await, 6);
    assert_eq!(
        api.movements("u1").await,
        vec![("DEBIT".to_owned(), -4, replicate_id.clone())]
    );
    let mut conn = shared::db::connection(&api.services.pool).await?;
    let row: (String, Option<String>, i32) = generations::table
        .find(&id)
        .select((
            generations::status,
            generations::job_id,
            generations::credits_used,
        ))
        .first(&mut conn)
        .await?;
    assert_eq!(row, ("PENDING".to_owned(), Some(replicate_id.clone()), 4));

    // Live: the new job and the balance reach the user's browser.
    let pushed = browser::next_json(&mut socket, Duration::from_secs(10))
        .await
        .expect("the creation is pushed");
    assert_eq!(pushed["type"], "generation_status_changed");
    assert_eq!(pushed["seq"], 1);
    assert_eq!(pushed["credits"], 6);
    assert_eq!(pushed["refunded"], 0);
    assert_eq!(pushed["job"]["id"], id.as_str());
    assert_eq!(pushed["job"]["status"], "PENDING");

    // The list shows the state as of its seq.
    let (status, page) = api.get("/api/jobs", "u1").await;
    assert_eq!(status, 200);
    assert_eq!(page["seq"], 1);
    assert_eq!(page["credits"], 6);
    assert_eq!(page["next"], Value::Null);
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(page["jobs"][0]["job_id"], replicate_id.as_str());
    assert_eq!(page["jobs_api"]["enabled"], true);
    assert_eq!(page["jobs_api"]["costs"]["generation"], 4);
    api.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_change_nothing() -> anyhow::Result<()> {
    let api = Api::start(Replicate::Simulator).await;
    api.user("u1", 10).await;

    let no_token = api
        .call(
            reqwest::Method::POST,
            "/api/generations",
            None,
            Some(json!({"prompt": "x"})),
        )
        .await;
    assert_eq!(no_token.0, 401, "{}", no_token.1);
    let forged =
        Auth::new("another-secret-of-at-least-32-bytes").mint("u1", Duration::from_secs(60));
    let forged = api
        .http
        .get(format!("{}/api/jobs", api.base))
        .bearer_auth(forged)
        .send()
        .await?;
    assert_eq!(forged.status(), 401);

    for (body, why) in [
        (json!({"prompt": ""}), "empty"),
        (json!({"prompt": "   "}), "blank"),
        (json!({"prompt": "é".repeat(2001)}), "over 2,000 characters"),
        (json!({"text": "a corgi"}), "no prompt"),
    ] {
        let (status, answer) = api.post("/api/generations", "u1", body).await;
        assert_eq!(status, 400, "{why}: {answer}");
        assert!(answer["error"].as_str().is_some(), "{why}: {answer}");
    }
    let not_json = api
        .http
        .post(format!("{}/api/generations", api.base))
        .bearer_auth(api.auth.mint("u1", Duration::from_secs(60)))
        .body("prompt=a corgi")
        .send()
        .await?;
    assert_eq!(not_json.status(), 400);
    let (status, _) = api
        .post(
            "/api/generations",
            "u1",
            json!({"prompt": "é".repeat(2000)}),
        )
        .await;
    assert_eq!(status, 201, "2,000 characters are allowed");

    for (body, why) in [
        (
            json!({"name": "", "input_images": "https://example.com/a.zip"}),
            "no name",
        ),
        (
            json!({"name": "me", "input_images": "http://example.com/a.zip"}),
            "not https",
        ),
        (json!({"name": "me", "input_images": "a.zip"}), "not a URL"),
    ] {
        let (status, answer) = api.post("/api/models", "u1", body).await;
        assert_eq!(status, 400, "{why}: {answer}");
    }

    // 6 credits left: one more generation (4), then the balance (2) is below the cost.
    let (status, _) = api
        .post("/api/generations", "u1", json!({"prompt": "a corgi"}))
        .await;
    assert_eq!(status, 201);
    let before = api.movements("u1").await;
    let (status, answer) = api
        .post("/api/generations", "u1", json!({"prompt": "a corgi"}))
        .await;
    assert_eq!(status, 402, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("balance is 2"),
        "{answer}"
    );
    assert_eq!(api.credits("u1").await, 2);
    assert_eq!(api.movements("u1").await, before, "nothing changed");
    let (_, page) = api.get("/api/jobs", "u1").await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(page["seq"], 2, "no event for a refused request");

    // A user the app never created has no credits.
    let (status, _) = api
        .post("/api/generations", "ghost", json!({"prompt": "a corgi"}))
        .await;
    assert_eq!(status, 402);

    let (status, _) = api.get("/api/generations", "u1").await;
    assert_eq!(status, 405);
    let (status, _) = api.get("/api/nothing-here", "u1").await;
    assert_eq!(status, 404);
    for query in ["limit=0", "limit=101", "limit=x", "before=garbage"] {
        let (status, answer) = api.get(&format!("/api/jobs?{query}"), "u1").await;
        assert_eq!(status, 400, "{query}: {answer}");
    }
    api.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_ones_own_completed_image_can_be_upscaled() -> anyhow::Result<()> {
    let api = Api::start(Replicate::Simulator).await;
    api.user("u1", 100).await;
    api.user("u2", 100).await;
    let (_, created) = api
        .post("/api/generations", "u1", json!({"prompt": "a corgi"}))
        .await;
    let source = created["job"]["id"].as_str().unwrap().to_owned();
    let upscale = format!("/api/generations/{source}/upscale");

    let (status, answer) = api.post(&upscale, "u1", json!({})).await;
    assert_eq!(status, 409, "still PENDING: {answer}");

    // The worker completes it (as a webhook would).
    let mut conn = shared::db::connection(&api.services.pool).await?;
    diesel::update(generations::table.find(&source))
        .set((
            generations::status.eq("COMPLETED"),
            generations::image_urls.eq(vec![
                "http://localhost:8081/media/generations/x/0.png".to_owned(),
            ]),
        ))
        .execute(&mut conn)
        .await?;

    let (status, answer) = api.post(&upscale, "u2", json!({})).await;
    assert_eq!(status, 404, "another user's image: {answer}");
    assert_eq!(api.credits("u2").await, 100);
    let (status, _) = api
        .post("/api/generations/gen_nope/upscale", "u1", json!({}))
        .await;
    assert_eq!(status, 404);

    let (status, answer) = api.post(&upscale, "u1", json!({})).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["job"]["kind"], "upscale");
    assert_eq!(answer["job"]["prompt"], "[UPSCALED] a corgi");
    assert_eq!(answer["credits"], 100 - 4 - 2);
    let on_replicate = api
        .on_replicate("predictions", answer["job"]["job_id"].as_str().unwrap())
        .await;
    assert_eq!(
        on_replicate["input"]["image"],
        "http://localhost:8081/media/generations/x/0.png"
    );
    assert_eq!(
        on_replicate["version"], "f121d640",
        "a pinned version is sent as such"
    );

    // A training: the trainer's version route and the destination.
    let (status, answer) = api
        .post(
            "/api/models",
            "u2",
            json!({"name": "my portraits", "input_images": "https://example.com/me.zip"}),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["job"]["kind"], "training");
    assert_eq!(answer["job"]["name"], "my portraits");
    assert_eq!(answer["credits"], 60);
    let training = api
        .on_replicate("trainings", answer["job"]["job_id"].as_str().unwrap())
        .await;
    assert_eq!(
        training["input"]["input_images"],
        "https://example.com/me.zip"
    );
    api.stop().await;
    Ok(())
}

async fn assert_failed_and_refunded_once(api: &Api, answer: &Value, reason: &str) {
    assert!(
        answer["error"].as_str().unwrap().contains(reason),
        "{answer}"
    );
    // The person is told what happened in words; addresses stay in the log.
    let no_address = |text: &str| !text.contains("127.0.0.1") && !text.contains("http");
    assert!(no_address(answer["error"].as_str().unwrap()), "{answer}");
    assert!(
        no_address(answer["job"]["error"].as_str().unwrap()),
        "{answer}"
    );
    assert_eq!(answer["job"]["status"], "FAILED", "{answer}");
    assert_eq!(answer["job"]["job_id"], Value::Null);
    assert_eq!(answer["credits"], 10);
    assert_eq!(api.credits("u1").await, 10);
    let id = answer["job"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        api.movements("u1").await,
        vec![
            ("DEBIT".to_owned(), -4, id.clone()),
            ("REFUND".to_owned(), 4, id.clone())
        ]
    );
    // One event: the failure with its refund (a job Replicate never named has no event
    // before, since an event's job_id is Replicate's id).
    let mut conn = shared::db::connection(&api.services.pool).await.unwrap();
    let events: Vec<Value> = job_events::table
        .filter(job_events::user_id.eq("u1"))
        .order(job_events::seq)
        .select(job_events::payload)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0]["job"]["status"].clone(),
            events[0]["refunded"].clone(),
            events[0]["credits"].clone()
        ),
        (json!("FAILED"), json!(4), json!(10))
    );
    assert!(no_address(events[0]["job"]["error"].as_str().unwrap()));
    let stored: Option<String> = generations::table
        .find(&id)
        .select(generations::error_message)
        .first(&mut conn)
        .await
        .unwrap();
    assert!(no_address(&stored.unwrap()));
}

/// Replicate as `replicate` is, a generation asked for: `502` with `reason`, the job
/// failed and refunded once.
async fn creation_fails_and_refunds(replicate: Replicate, reason: &str) {
    let api = Api::start(replicate).await;
    api.user("u1", 10).await;
    let (status, answer) = api
        .post("/api/generations", "u1", json!({"prompt": "a corgi"}))
        .await;
    assert_eq!(status, 502, "{answer}");
    assert_failed_and_refunded_once(&api, &answer, reason).await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_unreachable_fails_the_job_and_refunds_it_once() -> anyhow::Result<()> {
    creation_fails_and_refunds(Replicate::Down, "could not be reached").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_refusing_the_job_fails_it_with_replicates_reason() -> anyhow::Result<()> {
    creation_fails_and_refunds(Replicate::WrongToken, "valid authentication token").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_replicate_token_creation_is_unavailable_and_listing_works() -> anyhow::Result<()>
{
    let api = Api::start(Replicate::NotConfigured).await;
    api.user("u1", 10).await;
    let (status, answer) = api
        .post("/api/generations", "u1", json!({"prompt": "a corgi"}))
        .await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("REPLICATE_API_TOKEN")
    );
    assert_eq!(api.credits("u1").await, 10);
    let (status, page) = api.get("/api/jobs", "u1").await;
    assert_eq!(status, 200);
    assert_eq!(page["jobs_api"]["enabled"], false);
    assert_eq!(page["credits"], 10);
    api.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_cover_every_job_once_newest_first() -> anyhow::Result<()> {
    let api = Arc::new(Api::start(Replicate::Simulator).await);
    api.user("u1", 1000).await;
    let mut created = Vec::new();
    for i in 0..5 {
        let (status, answer) = if i == 2 {
            api.post(
                "/api/models",
                "u1",
                json!({"name": "me", "input_images": "https://example.com/me.zip"}),
            )
            .await
        } else {
            api.post("/api/generations", "u1", json!({"prompt": format!("p{i}")}))
                .await
        };
        assert_eq!(status, 201, "{answer}");
        created.push(answer["job"]["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut path = "/api/jobs?limit=2".to_owned();
    loop {
        let (status, page) = api.get(&path, "u1").await;
        assert_eq!(status, 200, "{page}");
        let jobs = page["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 2);
        seen.extend(jobs.iter().map(|j| j["id"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(next) => {
                path = format!(
                    "/api/jobs?limit=2&before={}",
                    form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
                )
            }
            None => break,
        }
    }
    created.reverse();
    assert_eq!(seen, created, "every job once, newest first");
    let api = Arc::into_inner(api).unwrap();
    api.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_byte_is_the_clients_mistake() -> anyhow::Result<()> {
    let api = Api::start(Replicate::Simulator).await;
    api.user("u1", 10).await;
    let (status, answer) = api
        .post("/api/generations", "u1", json!({"prompt": "a \u{0}corgi"}))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("NUL"),
        "{answer}"
    );
    let (status, answer) = api
        .get("/api/jobs?before=1764400000000000_gen%00x", "u1")
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(api.credits("u1").await, 10, "nothing debited");
    assert!(api.movements("u1").await.is_empty());
    api.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_mid_creation_leaves_the_job_bound_to_replicate() -> anyhow::Result<()>
{
    let api = Api::start(Replicate::Slow(Duration::from_secs(2))).await;
    api.user("u1", 10).await;
    let impatient = shared::http::client_builder()
        .timeout(Duration::from_millis(500))
        .build()?;
    let hung_up = impatient
        .post(format!("{}/api/generations", api.base))
        .bearer_auth(api.auth.mint("u1", Duration::from_secs(60)))
        .json(&json!({"prompt": "a corgi"}))
        .send()
        .await;
    assert!(
        hung_up.is_err(),
        "the client gave up before Replicate answered"
    );

    // The creation goes on without it: Replicate's id is stored on the row and its debit.
    let mut conn = shared::db::connection(&api.services.pool).await?;
    let bound = shared::testing::eventually(Duration::from_secs(10), || async {
        generations::table
            .select(generations::job_id)
            .first::<Option<String>>(&mut shared::db::connection(&api.services.pool).await.unwrap())
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await;
    assert!(bound.is_ok(), "Replicate's id was never stored");
    let (id, job_id, status): (String, Option<String>, String) = generations::table
        .select((generations::id, generations::job_id, generations::status))
        .first(&mut conn)
        .await?;
    let job_id = job_id.unwrap();
    assert_eq!(status, "PENDING");
    assert_eq!(api.credits("u1").await, 6);
    assert_eq!(
        api.movements("u1").await,
        vec![("DEBIT".to_owned(), -4, job_id.clone())]
    );
    let on_replicate = api.on_replicate("predictions", &job_id).await;
    assert_eq!(
        on_replicate["webhook"],
        format!("http://127.0.0.1:9/api/webhooks/replicate?job={id}").as_str()
    );
    api.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_creations_hold_no_database_connection_and_are_bounded_per_user() -> anyhow::Result<()>
{
    const WAIT: Duration = Duration::from_secs(12);
    let api = Arc::new(Api::start(Replicate::Slow(WAIT)).await);
    let creators = ["a", "b", "c"];
    for user in creators {
        api.user(user, 100).await;
    }
    api.user("d", 100).await;
    // 24 creations (8 per user, the per-user bound) waiting on Replicate: more than the
    // pool has connections.
    let mut waiting = Vec::new();
    for user in creators {
        for _ in 0..8 {
            let api = api.clone();
            waiting.push(tokio::spawn(async move {
                api.post("/api/generations", user, json!({"prompt": "a corgi"}))
                    .await
            }));
        }
    }
    let http = shared::http::client_builder().build()?;
    let all_on_replicate = shared::testing::eventually(Duration::from_secs(10), || async {
        let jobs: Vec<Value> =
            shared::testing::get_json(&http, format!("{}/sim/jobs", api.simulator)).await;
        jobs.len() == 24
    })
    .await;
    assert!(
        all_on_replicate.is_ok(),
        "the 24 creations reached Replicate"
    );

    // Meanwhile another user's page and the health answer, before any creation has.
    let (status, page) = api.get("/api/jobs", "d").await;
    assert_eq!(status, 200, "{page}");
    let health = http.get(format!("{}/api/health", api.base)).send().await?;
    assert_eq!(health.status(), 200);
    assert!(
        waiting.iter().all(|creation| !creation.is_finished()),
        "the other calls were answered while every creation still waited on Replicate"
    );

    // A ninth creation of one user is refused, and costs nothing.
    let (status, answer) = api
        .post("/api/generations", "a", json!({"prompt": "one more"}))
        .await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(api.credits("a").await, 100 - 8 * 4);

    for creation in waiting {
        let (status, answer) = creation.await?;
        assert_eq!(status, 201, "{answer}");
    }
    let (status, _) = api
        .post(
            "/api/generations",
            "a",
            json!({"prompt": "now there is room"}),
        )
        .await;
    assert_eq!(status, 201);
    match Arc::try_unwrap(api) {
        Ok(api) => api.stop().await,
        Err(_) => panic!("the API is still shared"),
    }
    Ok(())
}

/// Sequential and index scans of a table so far, as PostgreSQL counts them.
async fn scans(api: &Api, table: &str) -> (i64, i64) {
    #[derive(diesel::QueryableByName)]
    struct Scans {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        seq_scan: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        idx_scan: i64,
    }
    let mut conn = shared::db::connection(&api.services.pool).await.unwrap();
    diesel::sql_query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut conn)
        .await
        .unwrap();
    let scans: Scans = diesel::sql_query(
        "SELECT seq_scan, COALESCE(idx_scan, 0) AS idx_scan FROM pg_stat_user_tables WHERE relname = $1",
    )
    .bind::<diesel::sql_types::Text, _>(table)
    .get_result(&mut conn)
    .await
    .unwrap();
    (scans.seq_scan, scans.idx_scan)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_reads_an_index_however_many_rows_other_users_have() -> anyhow::Result<()> {
    let api = Api::start(Replicate::Simulator).await;
    api.user("crowd", 0).await;
    api.user("u1", 10).await;
    let mut conn = shared::db::connection(&api.services.pool).await?;
    // A million jobs of someone else in each table, and a few of ours.
    for (table, extra) in [("generations", "prompt"), ("ai_models", "name")] {
        diesel::sql_query(format!(
            "INSERT INTO {table} (id, user_id, {extra}, status, created_at) \
             SELECT 'crowd-' || i, 'crowd', 'x', 'COMPLETED', now() - i * interval '1 second' \
             FROM generate_series(1, 1000000) AS i"
        ))
        .execute(&mut conn)
        .await?;
        diesel::sql_query(format!(
            "INSERT INTO {table} (id, user_id, {extra}, status) \
             SELECT 'mine-' || i, 'u1', 'x', 'COMPLETED' FROM generate_series(1, 5) AS i"
        ))
        .execute(&mut conn)
        .await?;
        diesel::sql_query(format!("ANALYZE {table}"))
            .execute(&mut conn)
            .await?;
    }
    // Statistics reach the shared counters when a session goes idle (at most once a second).
    let settled = || async {
        let before = (
            scans(&api, "generations").await,
            scans(&api, "ai_models").await,
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
        before
            == (
                scans(&api, "generations").await,
                scans(&api, "ai_models").await,
            )
    };
    assert!(
        shared::testing::eventually(Duration::from_secs(20), settled)
            .await
            .is_ok()
    );
    let before = (
        scans(&api, "generations").await,
        scans(&api, "ai_models").await,
    );

    let (status, page) = api.get("/api/jobs?limit=3", "u1").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["jobs"].as_array().unwrap().len(), 3);
    let next = page["next"].as_str().unwrap().to_owned();
    let (status, page) = api
        .get(&format!("/api/jobs?limit=3&before={next}"), "u1")
        .await;
    assert_eq!(status, 200, "{page}");

    let after = || async {
        (
            scans(&api, "generations").await,
            scans(&api, "ai_models").await,
        )
    };
    let counted = shared::testing::eventually(Duration::from_secs(10), || async {
        let now = after().await;
        now.0.1 > before.0.1 && now.1.1 > before.1.1
    })
    .await;
    assert!(
        counted.is_ok(),
        "the listing's index scans were never counted"
    );
    let now = after().await;
    assert_eq!(
        (now.0.0, now.1.0),
        (before.0.0, before.1.0),
        "GET /api/jobs scanned a whole table (sequential scans before {before:?}, after {now:?})"
    );
    api.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_stopping_finishes_the_creations_under_way() -> anyhow::Result<()> {
    let mut api = Api::start(Replicate::Slow(Duration::from_secs(2))).await;
    api.user("u1", 10).await;
    let waiting = {
        let request = api
            .http
            .post(format!("{}/api/generations", api.base))
            .bearer_auth(api.auth.mint("u1", Duration::from_secs(60)))
            .json(&json!({"prompt": "a corgi"}));
        tokio::spawn(request.send())
    };
    let http = shared::http::client_builder().build()?;
    let on_replicate = shared::testing::eventually(Duration::from_secs(10), || async {
        let jobs: Vec<Value> =
            shared::testing::get_json(&http, format!("{}/sim/jobs", api.simulator)).await;
        !jobs.is_empty()
    })
    .await;
    assert!(on_replicate.is_ok(), "the creation reached Replicate");

    // SIGTERM while Replicate has not answered yet: the notifier waits for the answer and
    // stores the id before it exits.
    api.shut_down().await;
    let mut conn = shared::db::connection(&api.services.pool).await?;
    let job_id: Option<String> = generations::table
        .select(generations::job_id)
        .first(&mut conn)
        .await?;
    let job_id = job_id.expect("Replicate's id stored before the notifier exited");
    assert_eq!(
        api.movements("u1").await,
        vec![("DEBIT".to_owned(), -4, job_id)]
    );
    let _ = waiting.await;
    api.services.cleanup().await;
    Ok(())
}
