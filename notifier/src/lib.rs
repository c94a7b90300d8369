//! notifier: the browser's origin. Pushes each job change to its user's browsers over
//! WebSocket (and SSE), with replay after reconnect; serves the gallery page, its jobs API
//! (list, generate, upscale, train) and stored media.

pub mod config;
pub mod deliver;
pub mod health;
pub mod http;
pub mod jobs;
pub mod media;
pub mod replay;
pub mod replicate;
pub mod sessions;
pub mod sse;
pub mod startup;
pub mod ws;
