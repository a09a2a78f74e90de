//! `cargo xtask`: run the whole Sagashop system locally, or run the workspace tests.

mod commands;
mod services;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use devenv::Stop;
use std::process::ExitCode;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

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
}

#[tokio::main]
async fn main() -> ExitCode {
    let Some(command) = Cli::parse().command else {
        let _ = Cli::command().print_help();
        return ExitCode::SUCCESS;
    };
    devenv::set_label("xtask");
    let stop = match stop_on_signals() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        Command::Up => commands::up(&stop).await,
        Command::Test { .. } => commands::test(&stop, test_args()).await,
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

/// Set once Ctrl-C (SIGINT) or SIGTERM arrives; everything long-running races against it.
fn stop_on_signals() -> anyhow::Result<Stop> {
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        eprintln!("xtask: stopping...");
        let _ = tx.send(true);
    });
    Ok(Stop::from_watch(rx))
}

/// Everything after `test`, verbatim (clap would swallow the `--` of `test -- --nocapture`).
fn test_args() -> Vec<String> {
    std::env::args()
        .skip_while(|a| a != "test")
        .skip(1)
        .collect()
}
