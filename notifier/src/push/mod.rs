//! Pushing job changes to browsers: who is connected here (`sessions.rs`) and the broker
//! queue that follows them (`dispatch.rs`), one connection's ordered feed with replay from
//! the event log (`feed.rs`), the delivery loop (`deliver.rs`) over its two transports
//! (`ws.rs`, `sse.rs`), and the [`hub::Hub`] the web side holds. Nothing here knows HTTP.

pub mod deliver;
pub mod dispatch;
pub mod feed;
pub mod frame;
pub mod hub;
pub mod sessions;
pub mod sse;
pub mod ws;
