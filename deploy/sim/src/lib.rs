//! replicate-sim: stands in for Replicate in demos, tests and benchmarks, and acts as the web
//! app in the demo (jobs created through the notifier's jobs API).
//!
//! | module | what it does |
//! |---|---|
//! | [`api`] | Replicate's HTTP API: create, get and cancel predictions and trainings, the signing secret, the outputs |
//! | [`lifecycle`] | each job's run: statuses, logs with progress, outputs, signed webhooks (with retries) |
//! | [`prediction`] | the job objects as Replicate shows them |
//! | [`files`] | the files API: uploads a training reads its photos from |
//! | [`faults`] | duplicated, reordered, delayed and lost webhooks; failed, cancelled and broken jobs; late answers |
//! | [`images`] | real PNG outputs |
//! | [`send`] | `send`: one signed webhook by hand (or its curl command) |
//! | [`demo`], [`accounts`], [`jobs_client`] | `demo`: a user with credits and the gallery's link; the jobs API as the web app calls it |
//! | [`config`] | the command line |

pub mod accounts;
pub mod api;
pub mod config;
pub mod demo;
pub mod faults;
pub mod files;
pub mod images;
pub mod jobs_client;
pub mod lifecycle;
pub mod prediction;
pub mod send;
