//! `cargo xtask`: run the whole Sagashop system locally, run the workspace tests, run the
//! benchmark, or check and publish the event schemas.

mod commands;
mod services;

use clap::{CommandFactory, Parser, Subcommand};
use devenv::Stop;
use shared::schemas::Mode;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Sagashop developer tasks",
    after_help = "Environment:\n  \
        DATABASE_URL    use this PostgreSQL server (server-level URL) instead of a private cluster\n  \
        KAFKA_BROKERS   use this Kafka broker instead of a private tansu\n  \
        TANSU_LOG       RUST_LOG for tansu (default: warn)\n  \
        RUST_LOG        log filter for the services (default: info)\n  \
        ORDER_HTTP_PORT, PAYMENT_HTTP_PORT, INVENTORY_HTTP_PORT, SHIPPING_HTTP_PORT  (8081-8084)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Start PostgreSQL, the Kafka broker and the four services in the foreground (Ctrl-C stops all)
    Up,
    /// Run `cargo test --workspace --locked [ARGS...]` against a throwaway PostgreSQL and broker
    #[command(disable_help_flag = true)]
    Test {
        /// Appended to `cargo test --workspace --locked`, e.g. `-- --nocapture`
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the services and the benchmark in release and run `sagashop-bench [ARGS...]`
    /// (`cargo xtask bench --help` lists its settings)
    #[command(disable_help_flag = true)]
    Bench {
        /// Passed to sagashop-bench, e.g. `--rates 20,100 --duration 10`
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check the event schemas in schemas/ against the Rust event types (`--write` publishes
    /// new versions)
    ///
    /// Every version is committed as schemas/<subject>/v<N>.json and never changes, every
    /// committed version still has its Rust type, versions run from v1 without gaps, and the
    /// newest version of each subject reads the earlier ones (`--mode`). Exits non-zero with
    /// the problems.
    Schemas {
        /// Also write the schema files of new versions (never overwrites one)
        #[arg(long)]
        write: bool,
        /// BACKWARD (against the previous version), BACKWARD_TRANSITIVE (against every earlier
        /// one) or NONE
        #[arg(long, default_value_t = Mode::default())]
        mode: Mode,
    },
    /// Check the Prometheus alert rules and configuration with promtool (`promtool check rules`,
    /// `promtool check config`, `promtool test rules`); Debian: `apt-get install prometheus`
    Alerts,
}

#[tokio::main]
async fn main() -> ExitCode {
    let Some(command) = Cli::parse().command else {
        let _ = Cli::command().print_help();
        return ExitCode::SUCCESS;
    };
    devenv::set_label("xtask");
    let stop = match Stop::on_signals() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        Command::Up => commands::up(&stop).await,
        Command::Test { .. } => commands::test(&stop, args_after("test")).await,
        Command::Bench { .. } => commands::bench(&stop, args_after("bench")).await,
        Command::Schemas { write, mode } => commands::schemas(write, mode),
        Command::Alerts => commands::alerts(),
    };
    match result {
        Ok(code) => code,
        Err(_) if stop.is_set() => {
            eprintln!("xtask: interrupted");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything after the subcommand, verbatim (clap would swallow the `--` of
/// `test -- --nocapture`).
fn args_after(subcommand: &str) -> Vec<String> {
    std::env::args()
        .skip_while(|a| a != subcommand)
        .skip(1)
        .collect()
}
