//! What two or more of the pipeline's services need: configuration, telemetry, metrics,
//! webhook verification, Replicate's payload types and the RabbitMQ topology.

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
