//! RabbitMQ: the topology every service agrees on (`topology.rs`), publishing with the
//! broker's confirm (`publish.rs`), and a connection that comes back by itself after the
//! broker goes away (`link.rs`). Everything is re-exported here: `shared::amqp::Topology`.

pub mod link;
pub mod publish;
pub mod topology;

pub use link::*;
pub use publish::*;
pub use topology::*;
