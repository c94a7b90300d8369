//! Running a job as Replicate does: `starting`, then `processing` with tqdm-style progress
//! in `logs`, then a terminal status; sending the subscribed webhooks, signed, `logs` and
//! `output` at most every 500 ms, the terminal one retried with exponential backoff for
//! about a minute.

use shared::replicate::Status;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::Utc;
use serde_json::{Value, json};
use shared::webhook::WebhookSecret;

use crate::faults::{Faults, chance};
use crate::prediction::{CreateRequest, Kind, SimJob};

/// A prompt containing this makes its job fail.
pub const ASK_FAILURE: &str = "sim:fail";
/// A prompt containing this makes its job be cancelled while running.
pub const ASK_CANCEL: &str = "sim:cancel";
/// A prompt containing this makes its job run ten times as many steps (long enough for a
/// person to cancel it).
pub const ASK_SLOW: &str = "sim:slow";

/// Replicate sends `logs`/`output` webhooks at most this often.
const THROTTLE: Duration = Duration::from_millis(500);
/// Backoff of the terminal webhook: 1 + 2 + 4 + 8 + 16 + 32 s ≈ one minute.
const TERMINAL_RETRIES: &[u64] = &[1, 2, 4, 8, 16, 32];

/// One webhook as sent: its id, the body, and whether it is the terminal one.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: String,
    pub body: Vec<u8>,
    pub terminal: bool,
}

/// Signs `body` as Replicate does and returns the three headers.
pub fn signed_headers(
    secret: &WebhookSecret,
    webhook_id: &str,
    body: &[u8],
) -> [(&'static str, String); 3] {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    [
        (shared::webhook::HEADER_ID, webhook_id.to_owned()),
        (shared::webhook::HEADER_TIMESTAMP, timestamp.to_string()),
        (
            shared::webhook::HEADER_SIGNATURE,
            secret.sign(webhook_id, timestamp, body),
        ),
    ]
}

/// Posts one signed webhook; returns the answer's status and body.
pub async fn post_webhook(
    http: &reqwest::Client,
    secret: &WebhookSecret,
    url: &str,
    webhook_id: &str,
    body: &[u8],
) -> Result<(reqwest::StatusCode, String), reqwest::Error> {
    let mut request = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in signed_headers(secret, webhook_id, body) {
        request = request.header(name, value);
    }
    let response = request.send().await?;
    let status = response.status();
    Ok((status, response.text().await.unwrap_or_default()))
}

pub struct Simulator {
    jobs: Mutex<HashMap<String, Arc<Mutex<SimJob>>>>,
    /// Webhooks answered 2xx.
    pub accepted: std::sync::atomic::AtomicU64,
    /// Webhook posts answered with an error or not answered (each retry counts).
    pub refused: std::sync::atomic::AtomicU64,
    /// Terminal webhooks given up on after every retry.
    pub given_up: std::sync::atomic::AtomicU64,
    secret: WebhookSecret,
    faults: Faults,
    http: reqwest::Client,
    /// Where this simulator is reachable (output URLs and `urls.get` point here).
    pub base_url: String,
    step: Duration,
}

impl Simulator {
    pub fn new(
        secret: WebhookSecret,
        faults: Faults,
        base_url: String,
        step: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            jobs: Mutex::new(HashMap::new()),
            accepted: std::sync::atomic::AtomicU64::new(0),
            refused: std::sync::atomic::AtomicU64::new(0),
            given_up: std::sync::atomic::AtomicU64::new(0),
            secret,
            faults,
            http: shared::http::client_builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("HTTP client"),
            base_url,
            step,
        })
    }

    pub fn secret(&self) -> &WebhookSecret {
        &self.secret
    }

    /// Creates a job and starts running it in the background; refuses, as Replicate does, a
    /// prediction on a version it does not have (only public ones and those its trainings
    /// made).
    pub fn create(self: &Arc<Self>, kind: Kind, request: CreateRequest) -> Result<Value, String> {
        if kind == Kind::Prediction
            && let Some(version) = &request.version
            && !self.has_version(version)
        {
            return Err(format!(
                "The specified version does not exist (or perhaps you don't have permission to use it?): {version}"
            ));
        }
        let job = SimJob::new(kind, request);
        let id = job.id.clone();
        let object = job.to_json(&self.base_url);
        let job = Arc::new(Mutex::new(job));
        self.jobs
            .lock()
            .expect("not poisoned")
            .insert(id, job.clone());
        tokio::spawn(self.clone().run(job));
        Ok(object)
    }

    /// A public model's version, or one a succeeded training of this simulator made.
    fn has_version(&self, version: &str) -> bool {
        if version == crate::prediction::DEFAULT_VERSION
            || crate::prediction::PUBLIC_VERSIONS.contains(&version)
        {
            return true;
        }
        self.all_jobs().iter().any(|job| {
            let job = job.lock().expect("not poisoned");
            job.kind == Kind::Training
                && job.status == Status::Succeeded
                && crate::prediction::trained_version(&job.id) == version
        })
    }

    /// How long the answer to a creation is held back (the job runs meanwhile).
    pub fn create_delay(&self) -> Duration {
        Duration::from_millis(self.faults.create_delay_ms)
    }

    /// Every job, taken out of the map's lock.
    fn all_jobs(&self) -> Vec<Arc<Mutex<SimJob>>> {
        self.jobs
            .lock()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect()
    }

    fn job(&self, id: &str) -> Option<Arc<Mutex<SimJob>>> {
        self.jobs.lock().expect("not poisoned").get(id).cloned()
    }

    pub fn get(&self, kind: Kind, id: &str) -> Option<Value> {
        let job = self.job(id)?;
        let job = job.lock().expect("not poisoned");
        (job.kind == kind).then(|| job.to_json(&self.base_url))
    }

    /// Asks a running job to stop; it ends `canceled` at its next step.
    pub fn cancel(&self, kind: Kind, id: &str) -> Option<Value> {
        let job = self.job(id)?;
        let mut job = job.lock().expect("not poisoned");
        if job.kind != kind {
            return None;
        }
        if !job.is_terminal() {
            job.cancel_requested = true;
        }
        Some(job.to_json(&self.base_url))
    }

    /// How many outputs job `id` serves, unless they are broken or the job is unknown.
    pub fn servable_outputs(&self, id: &str) -> Option<usize> {
        let job = self.job(id)?;
        let job = job.lock().expect("not poisoned");
        (job.status == Status::Succeeded && !job.outputs_broken).then(|| job.output_count())
    }

    /// When job `id`'s terminal webhook was first posted.
    pub fn terminal_sent_at(&self, id: &str) -> Option<Instant> {
        self.job(id)?.lock().expect("not poisoned").terminal_sent_at
    }

    /// Webhook counters: accepted, refused (each failed post), given up.
    pub fn stats(&self) -> Value {
        use std::sync::atomic::Ordering::Relaxed;
        json!({
            "accepted": self.accepted.load(Relaxed),
            "refused": self.refused.load(Relaxed),
            "given_up": self.given_up.load(Relaxed),
        })
    }

    /// What the simulator decided for every job, for end-to-end checks.
    pub fn report(&self) -> Vec<Value> {
        let jobs = self.all_jobs();
        jobs.iter()
            .map(|job| {
                let job = job.lock().expect("not poisoned");
                json!({
                    "id": job.id,
                    "kind": job.kind,
                    "upscale": job.is_upscale(),
                    "status": job.status,
                    "outputs": if job.kind == Kind::Prediction { job.output_count() } else { 0 },
                    "output": job.output,
                    "outputs_broken": job.outputs_broken,
                    "terminal_delivered": job.terminal_delivered,
                    "webhooks_sent": job.webhooks_sent,
                })
            })
            .collect()
    }

    async fn run(self: Arc<Self>, job: Arc<Mutex<SimJob>>) {
        // A prompt can ask for an ending (`sim:fail`, `sim:cancel`) or a long run
        // (`sim:slow`), so demos and tests can show a refund or a cancel on purpose.
        let asked = {
            let job = job.lock().expect("not poisoned");
            job.input["prompt"].as_str().unwrap_or_default().to_owned()
        };
        let steps = fastrand::u32(10..30) * if asked.contains(ASK_SLOW) { 10 } else { 1 };
        let planned_cancel = (asked.contains(ASK_CANCEL) || chance(self.faults.cancel_rate))
            .then(|| fastrand::u32(1..steps));
        let planned_failure = (planned_cancel.is_none()
            && (asked.contains(ASK_FAILURE) || chance(self.faults.fail_rate)))
        .then(|| fastrand::u32(1..steps));
        let mut sender = Sender::new(self.clone());

        {
            let mut job = job.lock().expect("not poisoned");
            job.started_at = Some(Utc::now());
        }
        sender.send(&job, "start", false).await;
        tokio::time::sleep(self.step).await;

        let mut last_update = Instant::now();
        let mut ending = Status::Succeeded;
        for step in 0..=steps {
            {
                let mut job = job.lock().expect("not poisoned");
                if job.cancel_requested || planned_cancel == Some(step) {
                    ending = Status::Canceled;
                    break;
                }
                if planned_failure == Some(step) {
                    ending = Status::Failed;
                    break;
                }
                job.status = Status::Processing;
                job.logs.push_str(&tqdm_line(step, steps));
            }
            if last_update.elapsed() >= THROTTLE || step == 0 {
                last_update = Instant::now();
                sender.send(&job, "logs", false).await;
            }
            tokio::time::sleep(self.step).await;
        }

        {
            let mut job = job.lock().expect("not poisoned");
            job.status = ending.clone();
            job.completed_at = Some(Utc::now());
            match ending {
                Status::Succeeded => {
                    job.outputs_broken =
                        job.kind == Kind::Prediction && chance(self.faults.missing_output_rate);
                    job.output = job.final_output(&self.base_url);
                }
                Status::Failed => job.error = json!("CUDA out of memory (simulated)"),
                _ => {}
            }
        }
        // Anything still held back goes out right after the terminal webhook.
        sender.send(&job, "completed", true).await;
    }
}

/// Sends a job's webhooks, applying the delivery faults.
struct Sender {
    simulator: Arc<Simulator>,
    held: Vec<Webhook>,
}

impl Sender {
    fn new(simulator: Arc<Simulator>) -> Self {
        Self {
            simulator,
            held: Vec::new(),
        }
    }

    async fn send(&mut self, job: &Arc<Mutex<SimJob>>, event: &str, terminal: bool) {
        let (url, webhook) = {
            let job = job.lock().expect("not poisoned");
            let subscribed = job.subscribed(event) || (event == "logs" && job.subscribed("output"));
            let Some(url) = job.webhook.clone().filter(|_| subscribed) else {
                return;
            };
            let body =
                serde_json::to_vec(&job.to_json(&self.simulator.base_url)).expect("serialises");
            (
                url,
                Webhook {
                    id: format!("msg_{}", crate::prediction::new_id()),
                    body,
                    terminal,
                },
            )
        };
        let faults = self.simulator.faults;
        if !terminal && chance(faults.reorder_rate) {
            self.held.push(webhook);
            return;
        }
        self.deliver(job, &url, webhook).await;
        // Whatever was held back goes out after this one: out of order.
        for held in std::mem::take(&mut self.held) {
            self.deliver(job, &url, held).await;
        }
    }

    async fn deliver(&self, job: &Arc<Mutex<SimJob>>, url: &str, webhook: Webhook) {
        let simulator = self.simulator.clone();
        let job = job.clone();
        let url = url.to_owned();
        let copies = if chance(simulator.faults.duplicate_rate) {
            2
        } else {
            1
        };
        let delay = match simulator.faults.max_delay_ms {
            0 => None,
            max => Some(Duration::from_millis(fastrand::u64(0..=max))),
        };
        let work = async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            for _ in 0..copies {
                deliver_once(&simulator, &job, &url, &webhook).await;
            }
        };
        if delay.is_some() {
            // Delayed webhooks overtake each other, as they do on the internet.
            tokio::spawn(work);
        } else {
            work.await;
        }
    }
}

async fn deliver_once(
    simulator: &Simulator,
    job: &Arc<Mutex<SimJob>>,
    url: &str,
    webhook: &Webhook,
) {
    let mut retries = TERMINAL_RETRIES.iter();
    loop {
        {
            let mut job = job.lock().expect("not poisoned");
            job.webhooks_sent += 1;
            if webhook.terminal && job.terminal_sent_at.is_none() {
                job.terminal_sent_at = Some(Instant::now());
            }
        }
        let result = match post_webhook(
            &simulator.http,
            &simulator.secret,
            url,
            &webhook.id,
            &webhook.body,
        )
        .await
        {
            Ok((status, _)) if status.is_success() => Ok(()),
            Ok((status, body)) => Err(format!("answered {status}: {body}")),
            Err(err) => Err(err.to_string()),
        };
        match result {
            Ok(()) => {
                simulator
                    .accepted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if webhook.terminal {
                    job.lock().expect("not poisoned").terminal_delivered = true;
                }
                return;
            }
            Err(reason) if webhook.terminal => {
                simulator
                    .refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match retries.next() {
                    Some(seconds) => {
                        let wait =
                            Duration::from_secs(*seconds).mul_f64(simulator.faults.retry_scale);
                        tracing::warn!(webhook_id = %webhook.id, %reason, retry_in = ?wait, "terminal webhook failed; retrying");
                        tokio::time::sleep(wait).await;
                    }
                    None => {
                        simulator
                            .given_up
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!(webhook_id = %webhook.id, %reason, "terminal webhook failed; giving up");
                        return;
                    }
                }
            }
            // Only the terminal webhook is retried.
            Err(reason) => {
                simulator
                    .refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(webhook_id = %webhook.id, %reason, "intermediate webhook failed");
                return;
            }
        }
    }
}

/// One tqdm redraw: ` 42%|████▏     | 21/50 [00:03<00:04,  6.93it/s]`.
pub fn tqdm_line(step: u32, steps: u32) -> String {
    let percent = step * 100 / steps.max(1);
    let filled = (percent / 10) as usize;
    let bar = format!("{}{}", "█".repeat(filled), " ".repeat(10 - filled));
    format!(
        "\r{percent:3}%|{bar}| {step}/{steps} [00:{:02}<00:{:02},  6.93it/s]",
        step / 7,
        (steps - step) / 7
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tqdm_lines_look_like_tqdm() {
        assert_eq!(
            tqdm_line(21, 50),
            "\r 42%|████      | 21/50 [00:03<00:04,  6.93it/s]"
        );
        assert_eq!(
            tqdm_line(50, 50),
            "\r100%|██████████| 50/50 [00:07<00:00,  6.93it/s]"
        );
    }

    #[test]
    fn signed_headers_verify() {
        let secret = WebhookSecret::from_bytes(vec![3u8; 32]);
        let headers = signed_headers(&secret, "msg_1", b"{}");
        let verifier = shared::webhook::Verifier::new(
            shared::webhook::WebhookSecrets::new(vec![secret]).unwrap(),
            Duration::from_secs(300),
        );
        let signed = shared::webhook::SignedHeaders {
            id: &headers[0].1,
            timestamp: &headers[1].1,
            signature: &headers[2].1,
        };
        assert_eq!(verifier.verify(&signed, b"{}"), Ok(()));
    }
}
