//! Progress of a running job (read from its `logs` by [`shared::tqdm::progress`]),
//! published live only when it moved.

use std::collections::HashMap;
use std::sync::Mutex;

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
