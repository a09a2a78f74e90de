//! The shipping service: schedules a shipment once an order is paid, if its destination
//! country is served, and cancels it when the order is cancelled.

mod config;
pub mod domain;
pub mod handler;
pub mod hold_expiry;
mod routes;
mod startup;

pub use config::Config;
pub use startup::{migrate, router, Application};

/// This service's name in event envelopes.
pub const SERVICE: &str = "shipping";
