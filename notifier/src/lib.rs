//! notifier: the browser's origin. Pushes each job change to its user's browsers over
//! WebSocket (and SSE), with replay after reconnect; serves the gallery page, its jobs API
//! (list, generate, upscale, train) and stored media.
//!
//! Four rooms, arrows one way (`web` → `push`, `api`, `ops`; `ops` → `api`, `push`; none of
//! those knows HTTP):
//!
//! | room | modules | what it does |
//! |---|---|---|
//! | [`push`] | `sessions`, `dispatch`, `feed`, `deliver`, `ws`, `sse`, `hub` | an event from `jobs.events` to every connection of its user, in `seq` order, with replay from the event log |
//! | [`api`] | `jobs`, `validate`, `ledger`, `replicate`, `in_flight`, `publish`, `list`, `error` | creating jobs on Replicate (debit, row, Replicate's answer, binding or refund) and listing them |
//! | [`ops`] | `webhooks`, `timeline`, `dead_letters`, `stuck`, `now` | the operator console's work: the webhook record, a job's timeline, dead letters replayed, stuck jobs asked about or failed and refunded, the figures of the moment (and their export to Prometheus) |
//! | [`web`] | `router`, `streams`, `api_routes`, `health`, `media`, `state`, `respond`, `auth`, `gallery/` | the one port: routes, handshakes, JSON answers, the gallery's page and stored media |
//!
//! An event's path: `push::dispatch` reads it from this instance's queue →
//! `push::sessions::Sessions::deliver` hands it to each connection's queue →
//! `push::feed::Feed::accept` orders it against the log → `push::deliver` sends it over
//! `push::ws` or `push::sse`. [`config`] and [`startup`] build and run the notifier.

pub mod push;

pub mod api;

pub mod ops;

pub mod web;

pub mod config;

pub mod startup;
