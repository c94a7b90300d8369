//! The table a run under faults prints: what was created and sent, what was refused, the
//! faults injected, what the run measured, and the oracle's verdict.

use std::collections::HashMap;
use std::fmt::Display;

use serde_json::Value;

use super::Pipeline;
use super::creations::Creations;
use super::oracle::Verdict;

pub struct RunReport {
    rows: Vec<(String, String)>,
}

impl RunReport {
    /// Opens with the jobs created and the simulator's count of webhooks (`decided` is
    /// what [`super::oracle::settle`] returned).
    pub async fn new(
        pipeline: &Pipeline,
        decided: &HashMap<String, Value>,
        creations: &Creations,
    ) -> Self {
        let stats: Value =
            shared::testing::get_json(&pipeline.http, format!("http://{}/sim/stats", pipeline.sim))
                .await;
        let sent: u64 = decided
            .values()
            .map(|job| job["webhooks_sent"].as_u64().unwrap_or_default())
            .sum();
        let mut report = Self { rows: Vec::new() };
        report.row("jobs created through the jobs API", creations.created());
        report.row("jobs that ran on Replicate", decided.len());
        report.row(
            "job creations refused (answered with an error)",
            creations.refused(),
        );
        report.row(
            "job creations left without an answer (client hung up, notifier killed)",
            creations.unanswered(),
        );
        report.row("webhooks sent by the simulator", sent);
        report.row("webhooks accepted by ingest", &stats["accepted"]);
        report.row(
            "webhook posts refused or unanswered (Replicate retries terminal ones)",
            &stats["refused"],
        );
        report.row(
            "terminal webhooks given up (recovered by the reconciler)",
            &stats["given_up"],
        );
        report
    }

    pub fn row(&mut self, what: impl Into<String>, value: impl Display) {
        self.rows.push((what.into(), value.to_string()));
    }

    pub fn faults(&mut self, faults: &[String]) {
        self.row("faults injected", faults.len());
        for fault in faults {
            self.row(format!("  {fault}"), 1);
        }
    }

    /// A row per program with the failover times it logged (`what` names the row after
    /// the program), or `none` when it logged none.
    pub fn failovers<'a>(
        &mut self,
        failovers: impl Iterator<Item = (&'a String, Vec<u64>)>,
        what: impl Fn(&str) -> String,
        none: &str,
    ) {
        for (program, times) in failovers {
            let shown: Vec<String> = times.iter().map(|ms| format!("{ms} ms")).collect();
            let shown = if shown.is_empty() {
                none.to_owned()
            } else {
                shown.join(", ")
            };
            self.row(what(program), shown);
        }
    }

    /// The closing rows: browser reconnects and what the oracle checked and found.
    pub fn verdict(&mut self, reconnects: usize, verdict: &Verdict) {
        self.row("browser reconnects", reconnects);
        self.row("jobs checked", verdict.jobs_checked);
        self.row("browser events checked", verdict.events_checked);
        self.row("mismatches", verdict.mismatches.len());
    }

    pub fn print(&self, title: &str) {
        println!("\n{title}\n| what | count |\n|---|---|");
        for (what, value) in &self.rows {
            println!("| {what} | {value} |");
        }
    }
}
