//! replicate-sim: stands in for Replicate in demos, tests and benchmarks, and drives the
//! pipeline as the web app's users would (jobs created through the notifier's jobs API).

pub mod accounts;
pub mod api;
pub mod config;
pub mod demo;
pub mod faults;
pub mod images;
pub mod jobs_client;
pub mod lifecycle;
pub mod prediction;
pub mod send;
