//! What every request shares: the push hub, the jobs API, the token checker, the database
//! pool (health), the media directory and the dependencies' health.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shared::auth::{Auth, OperatorToken};
use shared::db::Pool;

use crate::api::jobs::JobsApi;
use crate::ops::Operations;
use crate::push::hub::Hub;
use crate::web::dependencies::Dependencies;

pub struct AppState {
    pub auth: Auth,
    pub hub: Arc<Hub>,
    pub jobs: JobsApi,
    pub pool: Pool,
    /// The media directory of a `file://` `STORAGE_URL`; `None` for object stores.
    pub media_root: Option<PathBuf>,
    /// The most a creation can take (Replicate's answer, then storing its id): how long a
    /// shutdown waits for creations under way.
    pub creation_deadline: Duration,
    /// The database's and ingest's health, checked at most once a second whoever asks.
    pub dependencies: Dependencies,
    /// The operator console's work, and its credential (`None`: `/ops/` answers 404).
    pub ops: Arc<Operations>,
    pub operator_token: Option<OperatorToken>,
}
