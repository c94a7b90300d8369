//! Integration tests of the notifier against the real PostgreSQL and RabbitMQ (and, for the
//! gallery, a real headless Chromium).

mod health;
mod helpers;
mod media;
mod memory;
mod outages;
mod protocol;
mod slow;
mod sse;
