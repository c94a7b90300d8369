//! `fanout`: WebSockets over users on a running notifier (or nginx with nchan), and live
//! events at each rate: delivery latency, memory per socket, CPU.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};

use crate::measure::*;

/// What the fan-out is measured on.
pub enum FanoutTarget {
    /// The notifier: sockets at `/ws?token=`, events published to `jobs.events`.
    Notifier {
        url: String,
        amqp_url: String,
        prefix: String,
        jwt_secret: String,
    },
    /// nginx with nchan, the reference: sockets at `/sub/<user>`, events POSTed to
    /// `/pub/<user>`.
    Nchan { url: String },
}

/// Publishes one event to one user's sockets.
pub enum Publisher {
    Amqp {
        channel: lapin::Channel,
        exchange: String,
    },
    Http {
        http: reqwest::Client,
        url: String,
        in_flight: Arc<tokio::sync::Semaphore>,
    },
}

impl Publisher {
    async fn publish(&self, user: &str, body: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Self::Amqp { channel, exchange } => {
                channel
                    .basic_publish(
                        exchange.as_str().into(),
                        shared::events::routing_key(user).as_str().into(),
                        Default::default(),
                        &body,
                        BasicProperties::default(),
                    )
                    .await?;
            }
            Self::Http {
                http,
                url,
                in_flight,
            } => {
                let permit = in_flight.clone().acquire_owned().await?;
                let request = http.post(format!("{url}/pub/{user}")).body(body);
                tokio::spawn(async move {
                    let _ = request.send().await;
                    drop(permit);
                });
            }
        }
        Ok(())
    }
}

/// `fanout`: `sockets` WebSockets over `users` users on `target`, then live events at each
/// rate: delivery latency (the publish time travels in the event) and the memory per
/// connection of the processes `pids` (summed).
pub async fn fanout(
    target: &FanoutTarget,
    pids: &[u32],
    sockets: usize,
    users: usize,
    rates: &[u64],
    seconds: u64,
) -> anyhow::Result<Value> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let users = users.max(1);
    let rss = || pids.iter().map(|pid| rss_kib(*pid)).sum::<u64>();
    let before_kib = rss();
    let mut growth = Vec::new();
    let recording = Arc::new(AtomicBool::new(false));
    // One inbox of latencies per socket: 50,000 pushes a second into one shared vector
    // made the client's threads queue on its lock.
    let mut inboxes: Vec<Arc<std::sync::Mutex<Vec<f64>>>> = Vec::with_capacity(sockets);
    let connecting = ProgressBar::new(sockets as u64).with_style(
        ProgressStyle::with_template("fanout: connecting          {bar:30} {pos}/{len} sockets")
            .expect("valid template"),
    );
    let urls: Vec<String> = match target {
        FanoutTarget::Notifier {
            url, jwt_secret, ..
        } => {
            let auth = shared::auth::Auth::new(jwt_secret);
            let base = url.replacen("http", "ws", 1);
            (0..users)
                .map(|u| {
                    let token = auth.mint(&format!("fan-{u}"), Duration::from_secs(3600));
                    format!("{base}/ws?token={token}")
                })
                .collect()
        }
        FanoutTarget::Nchan { url } => {
            let base = url.replacen("http", "ws", 1);
            (0..users).map(|u| format!("{base}/sub/fan-{u}")).collect()
        }
    };
    let greets = matches!(target, FanoutTarget::Notifier { .. });
    for i in 0..sockets {
        let url = urls[i % users].clone();
        let (mut socket, _) =
            tokio_tungstenite::connect_async_with_config(url, Some(client_socket_config()), false)
                .await
                .with_context(|| format!("socket {i}"))?;
        if greets {
            // The hello: the socket is registered and bound.
            let _ = socket.next().await;
        }
        let inbox = Arc::new(std::sync::Mutex::new(Vec::new()));
        inboxes.push(inbox.clone());
        let recording = recording.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                if !recording.load(Ordering::Relaxed) {
                    continue;
                }
                // The send time travels as the job id `t<micros>`; read it without parsing
                // the whole event, so that the client spends its CPU on receiving.
                if let Some(sent) = sent_micros(&text) {
                    let ms = micros_now().saturating_sub(sent) as f64 / 1000.0;
                    inbox.lock().expect("not poisoned").push(ms);
                }
            }
        });
        connecting.inc(1);
        // Memory per connection as the count grows: ten points on the way.
        if (i + 1) % (sockets / 10).max(1) == 0 {
            let kib = rss();
            growth.push(json!({
                "sockets": i + 1,
                "bytes_per_socket": (kib.saturating_sub(before_kib) * 1024) as f64 / (i + 1) as f64,
            }));
        }
    }
    connecting.finish();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_kib = rss();

    let publisher = match target {
        FanoutTarget::Notifier {
            amqp_url, prefix, ..
        } => {
            let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
            Publisher::Amqp {
                channel: connection.create_channel().await?,
                exchange: shared::amqp::Topology::new(prefix).events_exchange(),
            }
        }
        FanoutTarget::Nchan { url } => Publisher::Http {
            http: shared::http::client_builder()
                .pool_max_idle_per_host(64)
                .build()?,
            url: url.clone(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(64)),
        },
    };
    let mut runs = Vec::new();
    for &rate in rates {
        for inbox in &inboxes {
            inbox.lock().expect("not poisoned").clear();
        }
        recording.store(true, Ordering::Relaxed);
        let cpu = CpuShares::start(vec![
            (
                "server",
                Who::Pids(pids.iter().map(u32::to_string).collect()),
            ),
            ("broker", BROKER),
            ("client", Who::Pids(vec!["self".into()])),
        ]);
        let done = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        tick(
            bar(seconds, &format!("fanout: {rate} events/s")),
            done.clone(),
            published.clone(),
        );
        // Each millisecond, the events due by then, published together as a worker
        // publishes the events of one batch (each its own message, as the contract says).
        let mut pace = tokio::time::interval(Duration::from_millis(1));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let started = Instant::now();
        let duration = Duration::from_secs(seconds);
        let mut n = 0u64;
        while started.elapsed() < duration {
            pace.tick().await;
            let due = (started.elapsed().min(duration).as_secs_f64() * rate as f64) as u64;
            let burst = (n..due)
                .map(|k| {
                    let user = format!("fan-{}", k as usize % users);
                    let event = shared::events::Event::JobProgress {
                        user_id: user.clone(),
                        job: shared::events::JobProgress {
                            kind: shared::events::JobKind::Generation,
                            id: format!("t{}", micros_now()),
                            job_id: "bench".into(),
                            progress: 0.5,
                        },
                    };
                    Ok((user, serde_json::to_vec(&event)?))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let publisher = &publisher;
            futures_util::future::try_join_all(
                burst
                    .into_iter()
                    .map(|(user, body)| async move { publisher.publish(&user, body).await }),
            )
            .await?;
            published.fetch_add(due - n, Ordering::Relaxed);
            n = due;
        }
        let cpu = cpu.finish();
        tokio::time::sleep(Duration::from_secs(2)).await;
        recording.store(false, Ordering::Relaxed);
        done.store(true, Ordering::Relaxed);
        let mut got: Vec<f64> = inboxes
            .iter()
            .flat_map(|inbox| std::mem::take(&mut *inbox.lock().expect("not poisoned")))
            .collect();
        got.sort_by(f64::total_cmp);
        let expected = n as usize * (sockets / users);
        runs.push(json!({
            "rate": rate,
            "events": n,
            "deliveries_expected": expected,
            "delivered": got.len(),
            "p50_ms": percentile(&got, 0.5),
            "p99_ms": percentile(&got, 0.99),
            "max_ms": got.last().copied().unwrap_or_default(),
            "cpu_cores": cpu,
        }));
    }
    Ok(json!({
        "part": match target {
            FanoutTarget::Notifier { .. } => "fanout",
            FanoutTarget::Nchan { .. } => "fanout-nchan",
        },
        "sockets": sockets,
        "users": users,
        "rss_before_kib": before_kib,
        "rss_after_kib": after_kib,
        "bytes_per_socket": (after_kib.saturating_sub(before_kib) * 1024) as f64 / sockets.max(1) as f64,
        "growth": growth,
        "runs": runs,
    }))
}

/// The publish time in a fan-out event: its job id is `t<microseconds>`.
pub fn sent_micros(event: &str) -> Option<u128> {
    let start = event.find("\"id\":\"t")? + 7;
    let digits = &event[start..];
    let end = digits.find('"')?;
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_publish_time_of_a_fanout_event() {
        let event = shared::events::Event::JobProgress {
            user_id: "fan-1".into(),
            job: shared::events::JobProgress {
                kind: shared::events::JobKind::Generation,
                id: "t1795973878123456".into(),
                job_id: "bench".into(),
                progress: 0.5,
            },
        };
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(sent_micros(&json), Some(1_795_973_878_123_456));
        assert_eq!(sent_micros(r#"{"type":"hello","seq":3}"#), None);
    }
}
