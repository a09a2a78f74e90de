//! Development infrastructure shared by `cargo xtask` and the fault-injection tests: a private,
//! throwaway PostgreSQL cluster and a private tansu broker (a Kafka-protocol broker), each
//! stopped on drop, plus the process helpers they need.
//!
//! - [`postgres::Cluster`]: `initdb` + `pg_ctl start` on a free port in a temp dir (as the
//!   `postgres` user via `runuser` when run as root), [`postgres::Cluster::restart_immediate`].
//! - [`broker::Tansu`]: `tansu broker` with the sqlite engine in a temp dir (installed with
//!   `cargo install` if missing), [`broker::Tansu::kill`] (SIGKILL) and
//!   [`broker::Tansu::start_again`] on the same port and data.
//! - [`postgres::Postgres`] and [`broker::Broker`]: the server from `DATABASE_URL` /
//!   `KAFKA_BROKERS` if set, else a private one (what `cargo xtask up` and `test` use).
//!
//! Progress messages go to stderr prefixed with the label set by [`set_label`] (`devenv` unless
//! set; xtask sets `xtask`).

use std::sync::OnceLock;

pub mod broker;
pub mod postgres;
pub mod process;

pub use broker::{Broker, Tansu};
pub use postgres::{Cluster, Postgres, ServiceDatabase};
pub use process::{Stop, TempDir};

static LABEL: OnceLock<String> = OnceLock::new();

/// Sets the prefix of every progress message (first call wins), e.g. `xtask`.
pub fn set_label(label: &str) {
    let _ = LABEL.set(label.to_owned());
}

pub(crate) fn label() -> &'static str {
    LABEL.get().map_or("devenv", String::as_str)
}

/// `eprintln!` with the label prefix.
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("{}: {}", $crate::label(), format_args!($($arg)*))
    };
}
pub(crate) use say;
