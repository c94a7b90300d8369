//! notifier: pushes each job change to its user's browsers over WebSocket (and SSE), with
//! replay after reconnect; serves the gallery page and stored media.

pub mod auth;
pub mod config;
pub mod http;
pub mod media;
pub mod replay;
pub mod sessions;
pub mod startup;
pub mod ws;
