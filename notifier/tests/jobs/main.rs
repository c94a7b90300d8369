//! The notifier's jobs API against the real PostgreSQL and RabbitMQ, with the simulator as
//! Replicate: every status code, the debit and the refund in the database, Replicate slow,
//! down or refusing during creation (refunded once), a client hanging up, a notifier
//! stopping, a user who cannot upscale another user's image, and the operator API.

mod cancelling;
mod creation;
mod harness;
mod limits;
mod listing;
mod operator;
mod photos;
mod refusals;
mod trained;
