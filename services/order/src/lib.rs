//! The order service: accepts orders over HTTP, owns their status, and drives the saga to
//! `CONFIRMED` or `CANCELLED` from the events of the other services.

mod admission;
pub mod catalog;
mod config;
pub mod deadline;
pub mod domain;
pub mod handler;
mod repository;
mod routes;
mod startup;

pub use config::Config;
pub use startup::{idempotency_key_retention, migrate, router, Application};

/// This service's name in event envelopes.
pub const SERVICE: &str = "order";
