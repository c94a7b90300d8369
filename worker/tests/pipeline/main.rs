//! Integration tests of the worker against the real PostgreSQL and RabbitMQ, each test
//! with its own database and queue-name prefix.

mod batches;
mod binding;
mod crash;
mod dead_letters;
mod downloads;
mod events;
mod helpers;
mod hostile;
mod images;
mod outages;
mod reconcile;
mod refunds;
mod retries;
mod status;
mod thumbnails;
