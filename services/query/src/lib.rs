//! The query service (CQRS read side): consumes every event topic and keeps denormalized
//! views of orders and customers in its own database, so reads never touch the write
//! databases. It owns no topic and publishes nothing. The views can be rebuilt from the topics
//! alone ([`rebuild`]).

pub mod analytics;
mod config;
mod handler;
pub mod projection;
pub mod rebuild;
mod routes;
mod startup;
pub mod views;

pub use config::{Command, Config};
pub use startup::{migrate, router, Application};

/// This service's name (consumer group `query-service`, dead-letter topic, metrics).
pub const SERVICE: &str = "query";
