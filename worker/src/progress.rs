//! Progress of a running job, read from the latest tqdm-style line in its `logs`
//! (` 42%|████      | 21/50 [00:03<00:04, 6.1it/s]`), published live only when it moved.

use std::collections::HashMap;
use std::sync::Mutex;

/// The progress (0.0 to 1.0) shown by the last tqdm bar in `logs`, if any.
///
/// tqdm redraws with `\r`, so the latest state is the last bar anywhere in the text. The
/// exact `n/total` counter is preferred; the percentage is the fallback.
pub fn parse(logs: &str) -> Option<f64> {
    let bar = logs.rfind("%|")?;
    // The digits right before `%|`; whatever precedes them may be any text (models echo
    // the prompt), so the cut is made on a character boundary.
    let percent_start = logs[..bar]
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .len();
    let percent: f64 = logs[percent_start..bar].parse().ok()?;
    let after_bar = &logs[bar + 2..];
    let counter = after_bar
        .split_once('|')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|counter| counter.split_once('/'))
        .and_then(|(done, total)| Some((done.parse::<f64>().ok()?, total.parse::<f64>().ok()?)))
        .filter(|(done, total)| *total > 0.0 && done <= total);
    let progress = match counter {
        Some((done, total)) => done / total,
        None => percent / 100.0,
    };
    (0.0..=1.0).contains(&progress).then_some(progress)
}

/// The last progress published per job in this process, so that an unchanged value is not
/// sent again. Bounded: it forgets everything past `capacity` jobs (worst case, one
/// repeated progress message).
pub struct ProgressTracker {
    last: Mutex<HashMap<String, f64>>,
    capacity: usize,
}

impl ProgressTracker {
    pub fn new(capacity: usize) -> Self {
        Self {
            last: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// Records `progress` for `job_id` and tells whether it differs from the last one.
    pub fn moved(&self, job_id: &str, progress: f64) -> bool {
        let mut last = self.last.lock().expect("not poisoned");
        if last
            .get(job_id)
            .is_some_and(|previous| (previous - progress).abs() < 1e-9)
        {
            return false;
        }
        if last.len() >= self.capacity {
            last.clear();
        }
        last.insert(job_id.to_owned(), progress);
        true
    }

    /// Forgets a job that ended.
    pub fn forget(&self, job_id: &str) {
        self.last.lock().expect("not poisoned").remove(job_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a real diffusers run: tqdm writes each redraw after a carriage return.
    const REAL_TQDM: &str = "Using seed: 42069\nPrompt: a studio photo of a rainbow colored corgi\ntxt2img mode\n  0%|          | 0/50 [00:00<?, ?it/s]\r  2%|▏         | 1/50 [00:00<00:07,  6.61it/s]\r  4%|▍         | 2/50 [00:00<00:06,  7.43it/s]\r 42%|████▏     | 21/50 [00:03<00:04,  6.93it/s]";

    #[test]
    fn reads_the_latest_bar() {
        assert_eq!(parse(REAL_TQDM), Some(0.42));
        assert_eq!(parse(" 42%|████      | 21/50 [00:03<00:04]"), Some(0.42));
        assert_eq!(
            parse("100%|██████████| 50/50 [00:07<00:00,  6.82it/s]\n"),
            Some(1.0)
        );
    }

    #[test]
    fn prefers_the_exact_counter_and_falls_back_to_percent() {
        assert_eq!(parse(" 33%|███▎      | 1/3 [00:01<00:02]"), Some(1.0 / 3.0));
        assert_eq!(parse(" 70%|███████   "), Some(0.7));
    }

    #[test]
    fn no_bar_no_progress() {
        assert_eq!(parse("Using seed: 42069\nLoading pipeline..."), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("100% done | 5/0"), None);
    }

    #[test]
    fn any_text_before_the_bar_is_safe() {
        // Multi-byte characters right before `%|` (prompts echoed in the logs) once
        // panicked: a byte index inside a character.
        assert_eq!(parse("Prompt: café 50%|█████"), Some(0.5));
        assert_eq!(parse("é%|"), None);
        assert_eq!(parse("日本%| 1/2"), None);
        assert_eq!(parse("🦊42%|████▏ | 21/50"), Some(0.42));
        assert_eq!(parse("%|"), None);
        assert_eq!(parse("é%|é|é/é"), None);
    }

    #[test]
    fn tracker_reports_only_changes() {
        let tracker = ProgressTracker::new(100);
        assert!(tracker.moved("p1", 0.1));
        assert!(!tracker.moved("p1", 0.1));
        assert!(tracker.moved("p1", 0.2));
        assert!(tracker.moved("p2", 0.2));
        tracker.forget("p1");
        assert!(tracker.moved("p1", 0.2));
    }
}
