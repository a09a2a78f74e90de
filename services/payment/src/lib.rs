//! The payment service: owns customer accounts, charges an order's total once stock is
//! reserved, and refunds it when the order is cancelled or no decision reaches it in time.

mod config;
pub mod domain;
mod handler;
mod hold_expiry;
mod routes;
mod startup;

pub use config::Config;
pub use startup::{migrate, router, Application};

/// This service's name in event envelopes.
pub const SERVICE: &str = "payment";
