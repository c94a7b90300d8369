//! ingest: verifies Replicate webhooks and enqueues them to RabbitMQ. Nothing else.
//!
//! A webhook's path through the modules, in order:
//!
//! | step | module | what it does |
//! |---|---|---|
//! | receive | [`routes::webhook`] | `POST /api/webhooks/replicate`: headers, the job's tag from the query string, the answer |
//! | read | [`body`] | the body within its size limit and the memory budget of all bodies in flight |
//! | verify | `shared::webhook` | the Standard Webhooks signature, constant-time, against every configured secret |
//! | publish | [`publish`] | to `replicate.webhooks` with the broker's confirm (`shared::amqp::publish_webhook`), once more on a rebuilt link |
//!
//! Beside the path: [`routes::health`] (`/api/health`, `/metrics`), [`secret`] (`ingest
//! secret fetch`), [`config`], [`state`] and [`startup`] build and run the server.

pub mod routes;

pub mod body;

pub mod publish;

pub mod secret;

pub mod config;

pub mod state;

pub mod startup;
