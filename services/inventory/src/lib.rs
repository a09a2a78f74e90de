//! The inventory service: owns products and stock, reserves stock for orders, releases it when
//! an order is cancelled and marks it sold when an order is confirmed.

mod catalog;
mod config;
pub mod domain;
pub mod handler;
pub mod hold_expiry;
mod routes;
mod startup;

pub use config::Config;
pub use startup::{migrate, router, Application};

/// This service's name in event envelopes.
pub const SERVICE: &str = "inventory";
