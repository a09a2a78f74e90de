//! The fault-injection suite: each case runs the whole system as OS processes on its own
//! PostgreSQL cluster and tansu broker, places a seeded workload of orders over HTTP while a
//! fault happens, waits until the system is quiet and checks the invariants (see
//! `e2e::faults::check`). One module per case, named after its `case=`; the runner they share
//! is `e2e::faults::case`. Each case prints one summary line:
//!
//! ```text
//! faults: case=kill_services seed=... orders=200 accepted=200 ... faults=9 lost=0 double_charged=0 oversold=0 stuck=0 ... broken=none
//! ```
//!
//! Run: `cargo xtask test -p e2e --test faults -- --nocapture` (after `cargo build --bins`), or
//! as part of `cargo xtask test`; one case: `... --test faults kill_broker -- --nocapture`.
//! `FAULTS_SEED`, `FAULTS_ORDERS`, `FAULTS_SOAK=1` and `FAULTS_KEEP_LOGS=1` are described in
//! RELIABILITY.md.

mod analytics_restart;
mod duplicate_rewind;
mod idempotency;
mod join_leave;
mod kill_broker;
mod kill_services;
mod lock_wait_rebalance;
mod overload;
mod oversized;
mod poison;
mod quick_restart;
mod restart_postgres;
mod rolling_upgrade;
mod shutdown;
