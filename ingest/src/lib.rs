//! ingest: verifies Replicate webhooks and enqueues them to RabbitMQ. Nothing else.

pub mod body;
pub mod config;
pub mod publish;
pub mod routes;
pub mod secret;
pub mod startup;
