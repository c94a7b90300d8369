//! System tests: the whole pipeline as the processes it runs as, with Replicate simulated.
//!
//! | test | what it proves |
//! |---|---|
//! | `e2e` | jobs from the jobs API to the browser, every image stored, every refund once |
//! | `creation` | a client hanging up and a notifier killed mid-creation lose nothing |
//! | `chaos` (`deploy/chaos`) | workers, broker, database and notifier killed under load: 0 mismatches |
//! | `cluster` (`deploy/cluster`) | a 3-node RabbitMQ cluster's leader killed under load: 0 mismatches |
//! | `containers` (`deploy/containers`) | the same pipeline as containers behind the front door |
//! | `gallery` | the gallery page in Chromium |
//! | `secret` | `ingest secret fetch` against Replicate's API |
//!
//! The harness (processes, the oracle, the creation load, reports) is in `tests/common/`.
