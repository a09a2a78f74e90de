//! The order service's HTTP API, driven through its router with the production layers on a
//! fresh PostgreSQL database per test (no Kafka: events stop in the outbox table), one module
//! per topic and the helpers they share. Needs `DATABASE_URL`: run `cargo xtask test`.

mod arrival_order;
mod cancel;
mod create;
mod deadline;
mod errors;
mod helpers;
mod idempotency;
mod listing;
mod validation;
