//! The browser's side of the one port: the router (`router.rs`) and what it hands requests
//! to — the streams' handshakes (`streams.rs`), the jobs API's routes (`api_routes.rs`),
//! health and metrics, stored media, the gallery's page and assets (`gallery/`), and the
//! operator console (`ops_routes.rs`, `console/`). Leaf
//! modules (`state.rs`, `respond.rs`, `auth.rs`) hold what the handlers share, so nothing
//! imports its caller.

pub mod api_routes;
pub mod auth;
pub mod dependencies;
pub mod health;
pub mod media;
pub mod ops_routes;
pub mod respond;
pub mod router;
pub mod state;
pub mod streams;
pub mod upload;
