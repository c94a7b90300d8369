//! `report`: `report.md` and `report.json` from what was measured, every figure beside its
//! reference, with the charts (`charts.rs`) and the written notes.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::charts::*;
use crate::measure::*;

/// One row of the report's first table.
pub struct Row {
    figure: String,
    value: String,
    reference: String,
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

/// `report`: the first table (figure, reference, ratio, target, met) and the details.
pub fn report(dir: &Path, notes: &Path) -> anyhow::Result<PathBuf> {
    let broker = read(dir, "broker");
    let broker_after = read(dir, "broker-after");
    let ingest = read(dir, "ingest");
    let mut rows = Vec::new();
    if let (Some(broker), Some(ingest)) = (&broker, &ingest) {
        let before = broker["per_second"].as_f64().unwrap_or_default();
        // Measured before and after ingest's run when both are there: the host's speed
        // drifts by tens of percent within a minute here, and the mean brackets the run.
        let (limit, reference) = match broker_after.as_ref().and_then(|b| b["per_second"].as_f64())
        {
            Some(after) => (
                (before + after) / 2.0,
                format!(
                    "broker limit {:.0}/s (before {before:.0}, after {after:.0})",
                    (before + after) / 2.0
                ),
            ),
            None => (before, format!("broker limit {before:.0}/s")),
        };
        let saturation = ingest["saturation_per_second"].as_f64().unwrap_or_default();
        let ratio = saturation / limit.max(1.0);
        rows.push(Row {
            figure: "ingest: confirmed webhooks/s at saturation".into(),
            value: format!("{saturation:.0}/s"),
            reference,
            ratio: Some(ratio),
            target: "≥ 0.8 × broker".into(),
            met: Some(ratio >= 0.8),
        });
        let p99 = ingest["p99_ms"].as_f64().unwrap_or_default();
        rows.push(Row {
            figure: format!(
                "ingest: p50 / p99 at half rate ({:.0}/s)",
                ingest["half_rate_per_second"].as_f64().unwrap_or_default()
            ),
            value: format!(
                "{:.1} / {p99:.1} ms",
                ingest["p50_ms"].as_f64().unwrap_or_default()
            ),
            reference: match (
                broker["half_rate_p50_ms"].as_f64(),
                broker["half_rate_p99_ms"].as_f64(),
            ) {
                (Some(p50), Some(p99)) => {
                    format!("broker alone at half its limit: {p50:.1} / {p99:.1} ms")
                }
                _ => "—".into(),
            },
            ratio: None,
            target: "p99 ≤ 10 ms".into(),
            met: Some(p99 <= 10.0),
        });
    }
    if let (Some(worker), Some(pgbench)) = (read(dir, "worker"), read(dir, "pgbench")) {
        let rate = worker["per_second"].as_f64().unwrap_or_default();
        let tps = pgbench["tps"].as_f64().unwrap_or_default();
        let ratio = rate / tps.max(1.0);
        rows.push(Row {
            figure: format!(
                "worker: webhooks/s drained by 2 workers in batches ({} jobs: processing, then failed with a refund; {} handlings recorded for the console; mean batch {:.1}, {} processed alone; CPU: workers {:.2}, broker {:.2} cores)",
                worker["jobs"],
                worker["recorded"],
                worker["mean_batch"].as_f64().unwrap_or_default(),
                worker["alone"].as_f64().unwrap_or_default() as u64,
                worker["cpu_cores"]["workers"].as_f64().unwrap_or_default(),
                worker["cpu_cores"]["broker"].as_f64().unwrap_or_default()
            ),
            value: format!("{rate:.0}/s"),
            reference: format!("pgbench -N, 8 clients: {tps:.0} tps"),
            ratio: Some(ratio),
            target: "≥ 0.8 × pgbench".into(),
            met: Some(ratio >= 0.8 && worker["complete"] == true),
        });
    }
    for (name, target_ms) in [("e2e-500", 20.0), ("e2e-1000", 50.0)] {
        let Some(run) = read(dir, name) else { continue };
        let p99 = run["p99_ms"].as_f64().unwrap_or_default();
        let lost = run["missing"].as_u64().unwrap_or_default()
            + run["out_of_order"].as_u64().unwrap_or_default();
        rows.push(Row {
            figure: format!(
                "end to end: webhook → WebSocket p50 / p99 at {:.0} webhooks/s ({} jobs)",
                run["webhooks_per_second"].as_f64().unwrap_or_default(),
                run["jobs"]
            ),
            value: format!(
                "{:.1} / {p99:.1} ms, {lost} lost, {} creations refused and refunded; {}",
                run["p50_ms"].as_f64().unwrap_or_default(),
                run["refused"].as_u64().unwrap_or_default(),
                crate::load::machine_text(&run["cpu_cores"])
            ),
            reference: "—".into(),
            ratio: None,
            target: format!("p99 ≤ {target_ms} ms, zero lost"),
            met: Some(p99 <= target_ms && lost == 0),
        });
    }
    if let Some(memory) = read(dir, "memory") {
        let peaks = memory["peak_rss_kib"]
            .as_object()
            .map(|services| {
                services
                    .iter()
                    .map(|(service, kib)| {
                        format!(
                            "{service} {:.0} MB",
                            kib.as_f64().unwrap_or_default() / 1024.0
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        rows.push(Row {
            figure: "peak RSS of each service in the end-to-end runs".into(),
            value: peaks,
            reference: "—".into(),
            ratio: None,
            target: "reported".into(),
            met: None,
        });
    }
    if let Some(fanout) = read(dir, "fanout") {
        let nchan = read(dir, "fanout-nchan");
        let per_socket = fanout["bytes_per_socket"].as_f64().unwrap_or_default();
        let nchan_per_socket = nchan.as_ref().and_then(|n| n["bytes_per_socket"].as_f64());
        rows.push(Row {
            figure: format!(
                "notifier: memory per connection ({} sockets over {} users)",
                fanout["sockets"], fanout["users"]
            ),
            value: format!("{:.1} KB", per_socket / 1000.0),
            reference: nchan_per_socket.map_or("nchan: not measured".into(), |n| {
                format!("nchan {:.1} KB", n / 1000.0)
            }),
            ratio: nchan_per_socket.map(|n| per_socket / n.max(1.0)),
            target: "≤ 5 KB, and below nchan".into(),
            met: Some(per_socket <= 5000.0 && nchan_per_socket.is_none_or(|n| per_socket < n)),
        });
        let nchan_runs = nchan
            .as_ref()
            .and_then(|n| n["runs"].as_array().cloned())
            .unwrap_or_default();
        for run in fanout["runs"].as_array().cloned().unwrap_or_default() {
            let rate = run["rate"].as_u64().unwrap_or_default();
            let p99 = run["p99_ms"].as_f64().unwrap_or_default();
            let target = if rate <= 1000 { 10.0 } else { 50.0 };
            let complete = run["delivered"] == run["deliveries_expected"];
            rows.push(Row {
                figure: format!("notifier: delivery p50 / p99 at {rate} events/s"),
                value: format!(
                    "{:.1} / {p99:.1} ms ({} of {} delivered; {})",
                    run["p50_ms"].as_f64().unwrap_or_default(),
                    run["delivered"],
                    run["deliveries_expected"],
                    cpu_text(&run["cpu_cores"], "notifier", true)
                ),
                reference: nchan_runs.iter().find(|n| n["rate"] == run["rate"]).map_or(
                    "nchan: not measured".into(),
                    |n| {
                        format!(
                            "nchan {:.1} / {:.1} ms ({} of {}; {})",
                            n["p50_ms"].as_f64().unwrap_or_default(),
                            n["p99_ms"].as_f64().unwrap_or_default(),
                            n["delivered"],
                            n["deliveries_expected"],
                            cpu_text(&n["cpu_cores"], "nginx", false)
                        )
                    },
                ),
                ratio: None,
                target: format!("p99 ≤ {target} ms"),
                met: Some(p99 <= target && complete),
            });
        }
    }
    let mut markdown = String::from(
        "# Benchmark report\n\nEvery figure beside a reference measured in the same run on this machine (2 cores, everything on it: ratios, not absolute times).\n\n| figure | value | reference | ratio | target | met |\n|---|---|---|---|---|---|\n",
    );
    for row in &rows {
        markdown.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            row.figure,
            row.value,
            row.reference,
            row.ratio.map_or("—".into(), |r| format!("{r:.2}")),
            row.target,
            match row.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            }
        ));
    }
    if let Some(broker) = &broker {
        markdown.push_str(&format!(
            "\n## Broker limit\n\n{} persistent publishes of {} bytes, each as ingest publishes a webhook (a work queue declared as ingest's, the same properties and headers, mandatory), {} publishers sharing one channel with pipelined confirms: {:.0}/s.\n",
            broker["confirmed"], broker["payload_bytes"], broker["concurrency"],
            broker["per_second"].as_f64().unwrap_or_default()
        ));
    }
    if let Some(ingest) = &ingest {
        markdown.push_str(&format!(
            "\n## Ingest\n\n{} kept-alive connections, every webhook signed before the clock starts. Saturation: {:.0} confirmed webhooks/s. Paced at half that rate: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (from when each request was due). The load generator used {:.0}% of one core.\n",
            ingest["concurrency"],
            ingest["saturation_per_second"].as_f64().unwrap_or_default(),
            ingest["p50_ms"].as_f64().unwrap_or_default(),
            ingest["p99_ms"].as_f64().unwrap_or_default(),
            ingest["max_ms"].as_f64().unwrap_or_default(),
            ingest["generator_cpu"].as_f64().unwrap_or_default() * 100.0,
        ));
    }
    markdown.push_str("\nnchan is Debian's `libnginx-mod-nchan` in nginx (sockets at `/sub/<user>`, events POSTed to `/pub/<user>`), with the same sockets, users and rates.\n");
    let summary: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({"figure": row.figure, "value": row.value, "reference": row.reference,
                          "ratio": row.ratio, "target": row.target, "met": row.met})
        })
        .collect();
    let mut details = json!({"table": summary});
    if let Some(broker) = broker {
        details["broker"] = broker;
    }
    if let Some(broker_after) = broker_after {
        details["broker_after"] = broker_after;
    }
    if let Some(mut ingest) = ingest {
        ingest.as_object_mut().map(|o| o.remove("latencies_ms"));
        details["ingest"] = ingest;
    }
    let mut charts = Vec::new();
    if let Some(chart) = latency_chart(dir)? {
        charts.push(chart);
    }
    if let Some(chart) = throughput_chart(dir)? {
        charts.push(chart);
    }
    if let Some(chart) = memory_chart(dir)? {
        charts.push(chart);
    }
    if !charts.is_empty() {
        markdown.push_str("\n## Charts\n\n");
        for chart in &charts {
            markdown.push_str(&format!("![{chart}]({chart})\n\n"));
        }
    }
    if let Ok(text) = std::fs::read_to_string(notes) {
        markdown.push_str("\n---\n\n");
        markdown.push_str(&text);
    }
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_vec_pretty(&details)?,
    )?;
    let path = dir.join("report.md");
    std::fs::write(&path, markdown)?;
    Ok(path)
}

/// "CPU: notifier 0.68, broker 0.50, client 0.75 cores" from a run's `cpu_cores`.
pub fn cpu_text(cores: &Value, server: &str, with_broker: bool) -> String {
    let share = |name: &str| cores[name].as_f64().unwrap_or_default();
    let mut parts = vec![format!("{server} {:.2}", share("server"))];
    if with_broker {
        parts.push(format!("broker {:.2}", share("broker")));
    }
    parts.push(format!("client {:.2}", share("client")));
    format!("CPU: {} cores", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_compares_with_the_reference() {
        let dir =
            std::env::temp_dir().join(format!("bench-{}", replicate_sim::prediction::new_id()));
        save(&dir, &json!({"part": "broker", "per_second": 1000.0, "confirmed": 10000, "payload_bytes": 2700, "concurrency": 64})).unwrap();
        save(&dir, &json!({"part": "ingest", "saturation_per_second": 700.0, "half_rate_per_second": 350.0,
                           "p50_ms": 2.0, "p99_ms": 12.0, "max_ms": 20.0, "concurrency": 64, "generator_cpu": 0.5,
                           "latencies_ms": [1.0, 2.0]})).unwrap();
        save(
            &dir,
            &json!({"part": "worker", "jobs": 10, "per_second": 600.0, "complete": true}),
        )
        .unwrap();
        save(&dir, &json!({"part": "pgbench", "tps": 1000.0})).unwrap();
        save(&dir, &json!({"part": "e2e-500", "jobs": 100, "webhooks_per_second": 498.0,
                           "p50_ms": 9.0, "p99_ms": 18.0, "missing": 0, "out_of_order": 0, "refused": 0,
                           "cpu_cores": {"machine": 1.63, "postgres": 0.43, "broker": 0.42, "workers": 0.3,
                                         "notifier": 0.17, "ingest": 0.08, "generator": 0.16}})).unwrap();
        let markdown =
            std::fs::read_to_string(report(&dir, Path::new("no-notes-here.md")).unwrap()).unwrap();
        assert!(
            markdown.contains("9.0 / 18.0 ms, 0 lost, 0 creations refused and refunded; CPU: machine 1.63 cores busy (postgres 0.43, broker 0.42, workers 0.30, notifier 0.17, ingest 0.08, generator 0.16) | — | — | p99 ≤ 20 ms, zero lost | yes |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| 0.60 | ≥ 0.8 × pgbench | **no** |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| 0.70 | ≥ 0.8 × broker | **no** |"),
            "{markdown}"
        );
        assert!(markdown.contains("p99 ≤ 10 ms | **no** |"), "{markdown}");
        let json: Value =
            serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
        assert_eq!(json["table"][0]["met"], false);
        assert!(json["ingest"].get("latencies_ms").is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ingest_is_compared_with_the_broker_before_and_after_it() {
        let dir =
            std::env::temp_dir().join(format!("bench-{}", replicate_sim::prediction::new_id()));
        save(&dir, &json!({"part": "broker", "per_second": 1000.0, "confirmed": 10000, "payload_bytes": 2700, "concurrency": 64})).unwrap();
        save(&dir, &json!({"part": "broker-after", "per_second": 600.0})).unwrap();
        save(&dir, &json!({"part": "ingest", "saturation_per_second": 700.0, "half_rate_per_second": 350.0,
                           "p50_ms": 2.0, "p99_ms": 8.0, "max_ms": 20.0, "concurrency": 64, "generator_cpu": 0.5,
                           "latencies_ms": [1.0, 2.0]})).unwrap();
        let markdown =
            std::fs::read_to_string(report(&dir, Path::new("no-notes-here.md")).unwrap()).unwrap();
        assert!(
            markdown.contains(
                "broker limit 800/s (before 1000, after 600) | 0.88 | ≥ 0.8 × broker | yes |"
            ),
            "{markdown}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
