//! worker: consumes webhooks, classifies and persists jobs, stores outputs, refunds, and
//! publishes result events — exactly once in effect, whatever arrives twice or late.

pub mod broker;
pub mod classify;
pub mod config;
pub mod consume;
pub mod dead_letters;
pub mod download;
pub mod outbox;
pub mod process;
pub mod progress;
pub mod reconcile;
pub mod startup;
pub mod store;
