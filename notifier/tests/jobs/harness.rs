//! A notifier (port 0) whose jobs API talks to a simulator (port 0) standing in for
//! Replicate, on the real PostgreSQL and RabbitMQ, and what the tests ask of it.

use std::net::TcpListener;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use notifier::config::{JobsConfig, NotifierConfig};
use replicate_sim::accounts;
use replicate_sim::faults::Faults;
use replicate_sim::lifecycle::Simulator;
use serde_json::{Value, json};
use shared::auth::Auth;
use shared::db::schema::{credit_transactions, generations, job_events, users};
use shared::testing::Isolated;
use shared::webhook::WebhookSecret;

#[path = "../common/running.rs"]
mod running;
pub use running::Running;

pub const JWT_SECRET: &str = "jobs-api-test-secret-of-32-bytes!";
pub const SIM_TOKEN: &str = "sim-token-1";
pub const OPERATOR_TOKEN: &str = "operator-token-for-the-tests-32-bytes-at-least";

/// A notifier (port 0) whose jobs API talks to a simulator (port 0).
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub auth: Auth,
    pub simulator: String,
    pub services: Isolated,
    /// The notifier, serving until shut down.
    pub running: Running,
}

/// How the test wants Replicate to be.
pub enum Replicate {
    /// The simulator, with the right token.
    Simulator,
    /// The simulator running each job to its end in a moment.
    Quick,
    /// The simulator answering every creation this late (the job runs meanwhile).
    Slow(Duration),
    /// The simulator, but the notifier holds a token it refuses.
    WrongToken,
    /// Nothing listens.
    Down,
    /// No `REPLICATE_API_TOKEN`: creation is not configured.
    NotConfigured,
}

pub fn simulator(create_delay: Duration, step: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let simulator = Simulator::new(
        WebhookSecret::from_bytes(vec![7u8; 32]),
        Faults {
            create_delay_ms: create_delay.as_millis() as u64,
            ..Faults::default()
        },
        base.clone(),
        step,
    );
    tokio::spawn(replicate_sim::api::server(listener, simulator, Some(SIM_TOKEN.into())).unwrap());
    base
}

pub fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Api {
    pub async fn start(replicate: Replicate) -> Self {
        // Slow enough that jobs stay running during a test, unless it wants them done.
        let step = match replicate {
            Replicate::Quick => Duration::from_millis(10),
            _ => Duration::from_secs(30),
        };
        Self::start_stepping(replicate, step).await
    }

    /// As [`Api::start`], with the simulator's jobs taking `step` per progress step (a
    /// `sim:slow` prompt takes ten times as many steps).
    pub async fn start_stepping(replicate: Replicate, step: Duration) -> Self {
        Self::start_configured(replicate, step, |_| {}).await
    }

    /// As [`Api::start_stepping`], with the configuration changed by `configure` last.
    pub async fn start_configured(
        replicate: Replicate,
        step: Duration,
        configure: impl FnOnce(&mut NotifierConfig),
    ) -> Self {
        let services = Isolated::new("jobs").await;
        let create_delay = match replicate {
            Replicate::Slow(delay) => delay,
            _ => Duration::ZERO,
        };
        let simulator = simulator(create_delay, step);
        let (api_url, token) = match replicate {
            Replicate::Simulator | Replicate::Quick | Replicate::Slow(_) => {
                (format!("{simulator}/v1"), Some(SIM_TOKEN))
            }
            Replicate::WrongToken => (format!("{simulator}/v1"), Some("not-the-token")),
            Replicate::Down => (
                format!("http://127.0.0.1:{}/v1", closed_port()),
                Some(SIM_TOKEN),
            ),
            Replicate::NotConfigured => (format!("{simulator}/v1"), None),
        };
        let mut config = NotifierConfig::for_test(
            JWT_SECRET,
            services.database.clone(),
            services.amqp.clone(),
            services.storage(),
        );
        config.jobs = JobsConfig::for_test(&api_url, token);
        config.jobs.training_destination = Some("acme/portraits".into());
        config.ingest_url = format!("http://127.0.0.1:{}", closed_port());
        config.ops.operator_token = Some(OPERATOR_TOKEN.parse().unwrap());
        configure(&mut config);
        let running = Running::start(&config).await;
        let base = format!("http://{}", running.address);
        Self {
            base,
            http: shared::http::client_builder().build().unwrap(),
            auth: Auth::new(JWT_SECRET),
            simulator,
            services,
            running,
        }
    }

    /// Asks the notifier to stop (SIGTERM's path) and waits until it has.
    pub async fn shut_down(&mut self) {
        self.running.shut_down().await;
    }

    /// A call as `user` (a fresh token), or with no token at all.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let token = user.map(|user| self.auth.mint(user, Duration::from_secs(60)));
        self.ops(method, path, token.as_deref(), body).await
    }

    /// A call with `token` as the bearer (`None`: no `Authorization` header): the operator
    /// token, a user's, or anything else.
    pub async fn ops(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, user: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(user), Some(body))
            .await
    }

    pub async fn get(&self, path: &str, user: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(user), None)
            .await
    }

    /// A user of the web app with `credits`.
    pub async fn user(&self, id: &str, credits: i32) {
        accounts::ensure_user(&self.services.pool, id, credits)
            .await
            .unwrap();
    }

    pub async fn credits(&self, user: &str) -> i32 {
        let mut conn = shared::db::connection(&self.services.pool).await.unwrap();
        users::table
            .find(user)
            .select(users::credits)
            .first(&mut conn)
            .await
            .unwrap()
    }

    /// `(kind, amount, job_id)` of a user's credit movements, oldest first.
    pub async fn movements(&self, user: &str) -> Vec<(String, i32, String)> {
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
    pub async fn on_replicate(&self, kind: &str, id: &str) -> Value {
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

    pub async fn stop(mut self) {
        self.shut_down().await;
        self.services.cleanup().await;
    }
}

pub async fn assert_failed_and_refunded_once(api: &Api, answer: &Value, reason: &str) {
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
pub async fn creation_fails_and_refunds(replicate: Replicate, reason: &str) {
    let api = Api::start(replicate).await;
    api.user("u1", 10).await;
    let (status, answer) = api
        .post("/api/generations", "u1", json!({"prompt": "a corgi"}))
        .await;
    assert_eq!(status, 502, "{answer}");
    assert_failed_and_refunded_once(&api, &answer, reason).await;
    api.stop().await;
}

/// Sequential and index scans of a table so far, as PostgreSQL counts them.
pub async fn scans(api: &Api, table: &str) -> (i64, i64) {
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
