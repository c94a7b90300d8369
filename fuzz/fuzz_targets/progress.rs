//! The progress parser with any logs (models echo prompts in any script): never a panic,
//! and a progress is always within 0..=1.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|logs: &str| {
    if let Some(progress) = shared::tqdm::progress(logs) {
        assert!((0.0..=1.0).contains(&progress), "{progress}");
    }
});
