//! What every benchmark shares: the webhook-sized payload, progress bars, CPU and memory
//! of processes, pacing, percentiles, and writing a measurement as JSON.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

/// size of a real image webhook (2.7 KB).
pub fn webhook_body(id: &str) -> Vec<u8> {
    let mut body = json!({
        "id": id, "status": "succeeded", "model": "black-forest-labs/flux-schnell",
        "version": "hidden", "input": {"prompt": "a studio photo of a rainbow colored corgi"},
        "output": [format!("https://replicate.delivery/xezq/{id}/out-0.webp")],
        "error": null, "logs": "", "data_removed": false, "source": "api",
        "created_at": "2026-11-29T10:00:00.000000Z", "completed_at": "2026-11-29T10:00:02.500000Z",
        "metrics": {"predict_time": 2.41, "total_time": 2.5},
        "urls": {"get": format!("https://api.replicate.com/v1/predictions/{id}")},
    });
    let size = serde_json::to_vec(&body).expect("JSON").len();
    body["logs"] = json!("x".repeat(2700usize.saturating_sub(size)));
    serde_json::to_vec(&body).expect("JSON")
}

pub fn bar(seconds: u64, what: &str) -> ProgressBar {
    ProgressBar::new(seconds).with_style(
        ProgressStyle::with_template(&format!("{what:<28} {{bar:30}} {{pos}}/{{len}} s {{msg}}"))
            .expect("valid template"),
    )
}

/// Ticks a progress bar once a second until `done`.
pub fn tick(bar: ProgressBar, done: Arc<AtomicBool>, count: Arc<AtomicU64>) {
    tokio::spawn(async move {
        let started = Instant::now();
        while !done.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            bar.set_position(started.elapsed().as_secs());
            let per_second = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
            bar.set_message(format!("{per_second:.0}/s"));
        }
        bar.finish();
    });
}

/// How many more `count` reached each second, until `done`.
pub fn sample_each_second(
    done: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut series = Vec::new();
        let mut last = 0;
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        ticks.tick().await;
        while !done.load(Ordering::Relaxed) {
            ticks.tick().await;
            let now = count.load(Ordering::Relaxed);
            series.push(now - last);
            last = now;
        }
        series
    })
}

/// CPU seconds this process has used (user + system).
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds("self")
}

/// CPU seconds process `pid` ("self" for this one) has used (user + system), from
/// `/proc/<pid>/stat`; 0 when it cannot be read.
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are the 14th and 15th fields: 12th and 13th after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Where the CPU went while a measurement ran: each group's share of one core, and the
/// whole machine's (`"machine"`: cores busy, of all of them).
pub struct CpuShares {
    groups: Vec<Group>,
    machine: MachineTicks,
    started: Instant,
}

/// Whose CPU a group counts: processes known by pid, or every process of one program.
pub enum Who {
    Pids(Vec<String>),
    /// Every process whose command name is this, at the start and at the end (PostgreSQL's
    /// backends come and go).
    Program(&'static str),
}

struct Group {
    name: &'static str,
    who: Who,
    /// CPU seconds each process had used at the start.
    before: std::collections::HashMap<String, f64>,
}

impl Who {
    fn pids(&self) -> Vec<String> {
        match self {
            Who::Pids(pids) => pids.clone(),
            Who::Program(name) => pids_named(name),
        }
    }
}

impl CpuShares {
    pub fn start(groups: Vec<(&'static str, Who)>) -> Self {
        Self {
            groups: groups
                .into_iter()
                .map(|(name, who)| Group {
                    name,
                    before: who
                        .pids()
                        .into_iter()
                        .map(|pid| {
                            let used = cpu_seconds(&pid);
                            (pid, used)
                        })
                        .collect(),
                    who,
                })
                .collect(),
            machine: MachineTicks::now(),
            started: Instant::now(),
        }
    }

    /// `{"server": 0.68, "client": 0.75, …, "machine": 1.71}`: cores used by each group
    /// since the start (a process that started meanwhile counts from its own start; one
    /// that ended meanwhile is left out).
    pub fn finish(&self) -> Value {
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let cores = |seconds: f64| json!((seconds / elapsed * 100.0).round() / 100.0);
        let mut shares: serde_json::Map<String, Value> = self
            .groups
            .iter()
            .map(|group| {
                let used: f64 = group
                    .who
                    .pids()
                    .iter()
                    .map(|pid| {
                        (cpu_seconds(pid) - group.before.get(pid).copied().unwrap_or(0.0)).max(0.0)
                    })
                    .sum();
                (group.name.to_owned(), cores(used))
            })
            .collect();
        let busy = self.machine.busy_cores_since();
        shares.insert("machine".into(), json!((busy * 100.0).round() / 100.0));
        Value::Object(shares)
    }
}

/// The machine's CPU counters (`/proc/stat`, first line): all ticks, and the idle ones
/// (idle and waiting for the disk).
struct MachineTicks {
    total: u64,
    idle: u64,
    cpus: usize,
}

impl MachineTicks {
    fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let cpus = stat
            .lines()
            .filter(|line| {
                line.starts_with("cpu") && line.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
            })
            .count();
        Self {
            total: ticks.iter().sum(),
            idle: ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0),
            cpus: cpus.max(1),
        }
    }

    /// Cores busy on average since `self` was read.
    fn busy_cores_since(&self) -> f64 {
        let now = Self::now();
        let total = now.total.saturating_sub(self.total).max(1) as f64;
        let idle = now.idle.saturating_sub(self.idle) as f64;
        (1.0 - idle / total) * self.cpus as f64
    }
}

/// The pids of every process whose command name is `name` on this machine.
fn pids_named(name: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().into_owned();
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim() == name).then_some(pid)
        })
        .collect()
}

/// RabbitMQ's Erlang VM on this machine (no process when it runs elsewhere).
pub const BROKER: Who = Who::Program("beam.smp");

/// `senders` send on staggered schedules, together `rate` per second, for `seconds`.
/// Returns each answered send's latency in ms from when it was due (sorted), and the rate
/// answered.
pub async fn paced<S, F>(
    label: &str,
    senders: Vec<S>,
    rate: f64,
    seconds: u64,
    send: F,
) -> anyhow::Result<(Vec<f64>, f64)>
where
    S: Send + 'static,
    F: for<'a> Fn(&'a mut S) -> futures_util::future::BoxFuture<'a, bool> + Clone + Send + 'static,
{
    let count = senders.len().max(1);
    let interval = Duration::from_secs_f64(count as f64 / rate.max(1.0));
    let done = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    tick(bar(seconds, label), done.clone(), answered.clone());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(index, mut sender)| {
            let (send, answered) = (send.clone(), answered.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut due = started + interval.mul_f64(index as f64 / count as f64);
                while due < deadline {
                    tokio::time::sleep_until(due.into()).await;
                    if send(&mut sender).await {
                        answered.fetch_add(1, Ordering::Relaxed);
                        latencies.push(due.elapsed().as_secs_f64() * 1000.0);
                    }
                    due += interval;
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    done.store(true, Ordering::Relaxed);
    latencies.sort_by(f64::total_cmp);
    let answered_rate = answered.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    Ok((latencies, answered_rate))
}

/// Resident memory of process `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_default()
}

pub fn micros_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Writes one measurement as `<dir>/<part>.json`.
pub fn save(dir: &Path, result: &Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let part = result["part"].as_str().unwrap_or("result");
    std::fs::write(
        dir.join(format!("{part}.json")),
        serde_json::to_vec(result)?,
    )?;
    Ok(())
}

pub fn read(dir: &Path, part: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(format!("{part}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn values(run: &Value, field: &str) -> Vec<f64> {
    run[field]
        .as_array()
        .map(|values| values.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// The load clients' sockets (the browsers of `load`, the sockets of `fanout`). tungstenite
/// zero-fills its whole read buffer before every read (128 KiB by default): with one small
/// event per read, that memset was half of the fan-out client's CPU, taken from the two
/// cores the server under test shares with it.
pub fn client_socket_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_webhook_sized_json() {
        let body = webhook_body("abc");
        assert!((2600..=2800).contains(&body.len()), "{}", body.len());
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["id"], "abc");
        assert!(shared::replicate::JobRef::parse(&body).is_ok());
    }
}
