//! What travels from the broker to a connection: a [`Frame`] (one message for the client,
//! with its `seq`) inside a [`Push`].

use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One message for the client, with its `seq` when it has one.
#[derive(Debug, Clone)]
pub struct Frame {
    pub seq: Option<i64>,
    pub json: Utf8Bytes,
}

/// What a connection's feed receives from the broker side. One pointer wide: every
/// connection's queue holds a block of these, and there may be tens of thousands.
#[derive(Debug, Clone)]
pub enum Push {
    /// An event as published, shared by all of its user's connections.
    Event(Arc<Frame>),
    /// Events may have been missed (the broker connection was lost): check the log.
    Resync,
}
