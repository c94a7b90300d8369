//! pipeline-bench: the measurements behind `deploy/bench`, each written as JSON under
//! `target/bench/`, and the report that puts every figure beside its reference.
//!
//! | measurement | module | what it measures |
//! |---|---|---|
//! | `load` | [`load`] | jobs created through the notifier's jobs API, Replicate simulated in-process: webhook → browser latency, nothing lost |
//! | `broker` | [`broker`] | confirmed persistent publishes/s into a quorum queue: ingest's ceiling |
//! | `ingest` | [`ingest`] | signed webhooks/s a running ingest confirms, and its latency at half that rate |
//! | `worker` | [`worker`] | webhooks/s two workers drain from a preloaded queue |
//! | `fanout` | [`fanout`] | WebSockets per notifier, memory per socket, live events at each rate |
//! | `report` | [`report`], [`charts`] | `report.md`, `report.json` and the SVG charts |
//!
//! [`measure`] holds what they share (payload, pacing, CPU, memory, percentiles, saving).

pub mod load;

pub mod broker;

pub mod ingest;

pub mod worker;

pub mod fanout;

pub mod report;

pub mod charts;

pub mod measure;

pub mod config;
