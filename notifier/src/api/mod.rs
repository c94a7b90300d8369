//! The jobs API: creating jobs on Replicate safely (`jobs.rs`: validation, the debit and
//! row, Replicate's answer, binding or refund) and listing them (`list.rs`). Nothing here
//! knows HTTP: the web side (`web/api_routes.rs`) maps requests and [`error::JobsError`].

pub mod cancel;
pub mod error;
pub mod in_flight;
pub mod jobs;
pub mod ledger;
pub mod list;
pub mod photos;
pub mod publish;
pub mod replicate;
pub mod validate;
