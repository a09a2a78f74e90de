//! Contracts and plumbing shared by the Sagashop services: the event envelope and the event
//! types, Kafka clients, the transactional outbox and its relay, the idempotent inbox consumer,
//! telemetry and the HTTP layers. Domain rules live in the services, never here.

pub mod config;
pub mod consumer_lag;
pub mod db;
pub mod dead_letters;
pub mod envelope;
pub mod events;
pub mod http;
pub mod kafka;
pub mod log_reader;
pub mod log_shipping;
pub mod metrics;
pub mod outbox;
pub mod periodic;
pub mod replica;
pub mod retention;
pub mod schemas;
pub mod service;
pub mod state;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod topics;
pub mod topology;
pub mod traces;

mod consumer;
mod inbox;
mod progress;
#[cfg(test)]
mod test_env;

pub use consumer::{EventHandler, HandlerError};
pub use envelope::{Envelope, EventPayload};
