//! The payment service: owns customer accounts, charges an order's total once stock is
//! reserved, and refunds it when the order is cancelled or no decision reaches it in time.
//! Every balance is the fold of its account's append-only ledger (`ledger`, `accounts`), which
//! `sagashop-ledger verify` replays (`verify`).

pub mod accounts;
mod config;
pub mod domain;
pub mod handler;
pub mod hold_expiry;
pub mod ledger;
mod routes;
mod startup;
pub mod verify;

pub use config::Config;
pub use startup::{deposit_key_retention, migrate, router, Application};

/// This service's name in event envelopes.
pub const SERVICE: &str = "payment";
