//! What every request handler shares: the verifier, the body limits and the publisher.

use std::sync::Arc;

use shared::webhook::Verifier;

use crate::body::BodyBudget;
use crate::publish::Publisher;

/// What every request handler shares.
pub struct AppState {
    pub verifier: Verifier,
    pub max_body_bytes: usize,
    pub bodies: BodyBudget,
    pub publisher: Arc<Publisher>,
}
