//! What two or more of the pipeline's services need: configuration, telemetry, metrics,
//! webhook verification, Replicate's payload types and the RabbitMQ topology.

pub mod amqp;
pub mod config;
pub mod metrics;
pub mod replicate;
pub mod shutdown;
pub mod telemetry;
pub mod webhook;
#[cfg(feature = "db")]
pub mod db;
pub mod events;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "storage")]
pub mod storage;
