//! Replicate's payload types with any body: parsing never panics, and what `JobRef`
//! accepts (and ingest enqueues) is UTF-8 JSON text whose `id` and `status` are what it
//! read. Fields it does not read are not decoded (a lone `\uD800` escape in one is left to
//! whoever reads that field).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::replicate::{JobRef, Prediction};

fuzz_target!(|body: &[u8]| {
    if let Ok(job) = JobRef::parse(body) {
        let text = std::str::from_utf8(body).expect("accepted bodies are UTF-8");
        serde_json::from_str::<serde::de::IgnoredAny>(text).expect("accepted bodies are JSON");
        #[derive(serde::Deserialize)]
        struct Read<'a> {
            #[serde(borrow)]
            id: std::borrow::Cow<'a, str>,
        }
        let read: Read = serde_json::from_str(text).expect("read twice, the same");
        assert_eq!(read.id, job.id);
    }
    let _ = serde_json::from_slice::<Prediction>(body);
});
