//! RabbitMQ: the topology every service agrees on (`topology.rs`), publishing with the
//! broker's confirm (`publish.rs`), and a connection that comes back by itself after the
//! broker goes away (`link.rs`), a publish-only connection that writes from the publishing thread for ingest's hot path (`direct_publish.rs`), and the dead letters for operators (`dead_letters.rs`). Everything is re-exported here: `shared::amqp::Topology`.

pub mod dead_letters;
pub mod direct_publish;
pub mod link;
pub mod publish;
pub mod topology;

pub use dead_letters::{
    HEADER_ATTEMPT, HEADER_DEAD_REASON, HEADER_FIRST_SEEN, HEADER_LAST_ERROR, HEADER_REPLAYS,
};
pub use direct_publish::DirectPublisher;
pub use link::*;
pub use publish::*;
pub use topology::*;
