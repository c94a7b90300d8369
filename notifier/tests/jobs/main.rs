//! The notifier's jobs API against the real PostgreSQL and RabbitMQ, with the simulator as
//! Replicate: every status code, the debit and the refund in the database, Replicate slow,
//! down or refusing during creation (refunded once), a client hanging up, a notifier
//! stopping, and a user who cannot upscale another user's image.

mod cancelling;
mod creation;
mod harness;
mod limits;
mod listing;
mod photos;
mod refusals;
mod trained;
