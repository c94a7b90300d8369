//! What two or more of the pipeline's services need, by what it is about:
//!
//! | module | what it holds | used by |
//! |---|---|---|
//! | [`webhook`] | Standard Webhooks: secrets, signing, constant-time verification | ingest, the simulator |
//! | [`replicate`] | Replicate's payloads, statuses, and the job tag on webhook URLs | all |
//! | [`amqp`] | the topology, confirmed publishing (webhooks, events), the reconnecting link | ingest, worker, notifier |
//! | `db` | schema, models, embedded migrations, the pool, the watch that reports a failover | worker, notifier |
//! | `jobs` | the ledger: status machine, one transaction per change, refunds once, the event log, binding | worker, notifier |
//! | [`events`] | the browser events (`jobs.events`) and their routing keys | worker, notifier |
//! | [`config`] | settings groups, secrets and URLs that are never printed | all |
//! | `auth`, `storage`, `http` | browser tokens, media storage, the HTTP client | where needed |
//! | [`telemetry`], [`metrics`], [`shutdown`], [`tqdm`] | logs, `/metrics`, signals, progress from logs | all |
//! | `testing` | what integration tests share (isolated names, proxies, waiting on conditions) | tests |

pub mod amqp;
#[cfg(feature = "auth")]
pub mod auth;
pub mod config;
#[cfg(feature = "db")]
pub mod db;
pub mod events;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "db")]
pub mod jobs;
pub mod metrics;
pub mod replicate;
pub mod shutdown;
#[cfg(feature = "storage")]
pub mod storage;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tqdm;
pub mod webhook;
