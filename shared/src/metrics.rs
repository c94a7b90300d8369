//! One Prometheus recorder per process, rendered by each service's `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds, from half a millisecond to ten seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide recorder, installed on first use. Histograms are exposed with
/// buckets so that several replicas can be aggregated.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .expect("latency buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours stays unused.
            let _ = metrics::set_global_recorder(recorder);
            // Histogram samples accumulate until upkeep folds them into buckets; without a
            // scrape that would grow without bound, so fold them regularly.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawn metrics upkeep thread");
            handle
        })
        .clone()
}

/// The sum of every sample of metric `name` in Prometheus text `text`, only those whose
/// labels include `label="value"` when given (e.g. a counter over all its label sets).
pub fn sum_in(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    let wanted = label.map(|(key, value)| format!("{key}=\"{value}\""));
    text.lines()
        .filter(|line| {
            line.strip_prefix(name).is_some_and(|rest| {
                (rest.starts_with('{') || rest.starts_with(' '))
                    && wanted.as_deref().is_none_or(|w| rest.contains(w))
            })
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_a_metric_over_its_label_sets_or_one_of_them() {
        let text = "# TYPE t counter\nt{outcome=\"accepted\"} 5\nt{outcome=\"unauthorized\"} 2\ntotal 9\nt_other 4\n";
        assert_eq!(super::sum_in(text, "t", None), 7.0);
        assert_eq!(super::sum_in(text, "t", Some(("outcome", "accepted"))), 5.0);
        assert_eq!(super::sum_in(text, "missing", None), 0.0);
    }
}
