//! Integration tests: the real ingest on port 0 against the RabbitMQ on this machine, each
//! test with its own queue-name prefix so that tests and a running pipeline never meet.

mod helpers;
mod hostile;
mod outage;
mod webhook;
