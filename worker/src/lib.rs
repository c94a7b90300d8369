//! worker: consumes webhooks, classifies and persists jobs, stores outputs, refunds, and
//! publishes result events — exactly once in effect, whatever arrives twice or late.
//!
//! A webhook's path through the modules, in order:
//!
//! | step | module | what it does |
//! |---|---|---|
//! | consume | [`broker`], [`consume`] | the broker link; a prefetch window of deliveries taken in batches, each acked, retried or dead-lettered once processed |
//! | batch | [`batch`] | what the consumer had ready, up to `WORKER_BATCH_SIZE`: one lookup, each decided in order, downloads outside, one transaction (`shared::jobs::batch`), events published together; a failing transaction split to isolate its cause |
//! | process | [`process`] | one webhook: parse, find the job (or bind it by its webhook URL's tag, `shared::jobs::bind`), decide, prepare, apply, publish — for what a batch leaves to be processed alone |
//! | classify | [`classify`] | which job a Replicate id belongs to, and its kind (generation, upscale, training) |
//! | download, store | [`download`], [`store`], [`thumbnail`] | a succeeded generation's outputs fetched (within the allowed hosts and the memory budget) and stored, each with a small JPEG rendition |
//! | apply, transition, refund | `shared::jobs` | one transaction: the status machine, the refund once, the user's next `seq`, the event in the log (the outbox) |
//! | publish | [`broker`], `shared::jobs::published_marks` | the event to `jobs.events`, then marked published in batches |
//! | record | [`record`] | one row per handling in `webhook_attempts` (the operator console's list), written in batches, pruned |
//! | sweep | [`sweep`] | events committed but never marked are published again |
//! | progress | [`progress`] | `job_progress` pushed when a running job's progress moved |
//!
//! Beside the path: [`reconcile`] asks Replicate about jobs whose webhooks went missing,
//! `shared::amqp::dead_letters` lists and replays parked webhooks, [`config`] and [`startup`] build and
//! run the worker, [`health`] answers `/api/health` and `/metrics`.

// In the order of the table above (rustfmt keeps each group's order).
pub mod broker;

pub mod consume;

pub mod process;

pub mod batch;

pub mod classify;

pub mod download;

pub mod store;

pub mod thumbnail;

pub mod record;

pub mod sweep;

pub mod progress;

pub mod reconcile;

pub mod config;

pub mod health;

pub mod startup;
