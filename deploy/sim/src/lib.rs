//! replicate-sim: stands in for Replicate (and for the web app that creates jobs) in demos,
//! tests and benchmarks.

pub mod api;
pub mod config;
pub mod demo;
pub mod faults;
pub mod images;
pub mod lifecycle;
pub mod load;
pub mod prediction;
pub mod send;
pub mod webapp;
