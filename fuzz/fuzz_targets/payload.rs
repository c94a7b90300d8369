//! Replicate's payload types with any body: parsing never panics, and what `JobRef`
//! accepts is a JSON object with string `id` and `status`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::replicate::{JobRef, Prediction};

fuzz_target!(|body: &[u8]| {
    if let Ok(job) = JobRef::parse(body) {
        let value: serde_json::Value = serde_json::from_slice(body).expect("accepted as JSON");
        assert!(value["id"].is_string() && value["status"].is_string());
        assert_eq!(value["id"].as_str(), Some(job.id.as_ref()));
    }
    let _ = serde_json::from_slice::<Prediction>(body);
});
