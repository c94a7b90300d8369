//! Every program's JSON log lines, read after a run: what the services said about the
//! faults (failover times, refusals, answers).

use std::collections::BTreeMap;

use super::Pipeline;

/// Every program's log lines (JSON logs), read once after the run, by program name.
pub struct Logs(BTreeMap<String, Vec<serde_json::Value>>);

impl Logs {
    pub fn read(pipeline: &Pipeline, programs: &[String]) -> Self {
        let parsed = programs.iter().map(|program| {
            let lines = pipeline
                .log(program)
                .lines()
                .filter_map(|line| serde_json::from_str(line).ok())
                .collect();
            (program.clone(), lines)
        });
        Self(parsed.collect())
    }

    /// The lines of one program.
    pub fn of(&self, program: &str) -> &[serde_json::Value] {
        self.0.get(program).map_or(&[], Vec::as_slice)
    }

    /// How many lines with `message` all programs logged.
    pub fn count(&self, message: &str) -> usize {
        (self.0.values().flatten())
            .filter(|line| line["message"] == message)
            .count()
    }

    /// How many different values of `field` the lines with `message` carry (the jobs a
    /// message was about, say).
    pub fn distinct(&self, message: &str, field: &str) -> usize {
        (self.0.values().flatten())
            .filter(|line| line["message"] == message)
            .map(|line| line[field].to_string())
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    /// Every `failover_ms` each program logged on lines with `message`.
    pub fn failovers<'a>(
        &'a self,
        message: &'a str,
    ) -> impl Iterator<Item = (&'a String, Vec<u64>)> + 'a {
        self.0.iter().map(move |(program, lines)| {
            let times = lines
                .iter()
                .filter(|line| line["message"] == message)
                .filter_map(|line| line["failover_ms"].as_u64())
                .collect();
            (program, times)
        })
    }

    /// The ingests' log lines.
    pub fn ingests(&self) -> impl Iterator<Item = &serde_json::Value> {
        (self.0.iter())
            .filter(|(program, _)| program.starts_with("ingest"))
            .flat_map(|(_, lines)| lines)
    }

    /// How many lines with `message` the ingests logged.
    pub fn ingest_lines(&self, message: &str) -> usize {
        self.ingests()
            .filter(|line| line["message"] == message)
            .count()
    }

    /// How long the ingests took to answer the webhooks they accepted (their log lines'
    /// `elapsed`, a `Duration` in debug form), in milliseconds, sorted.
    pub fn ingest_answer_times(&self) -> Vec<f64> {
        let mut times: Vec<f64> = self
            .ingests()
            .filter(|line| line["message"] == "webhook accepted")
            .filter_map(|line| {
                let elapsed = line["elapsed"].as_str()?;
                let split = elapsed.find(|c: char| c.is_ascii_alphabetic() || c == 'µ')?;
                let (value, unit) = elapsed.split_at(split);
                let value: f64 = value.parse().ok()?;
                let scale = match unit {
                    "ns" => 1e-6,
                    "µs" => 1e-3,
                    "ms" => 1.0,
                    "s" => 1e3,
                    _ => return None,
                };
                Some(value * scale)
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times
    }
}
