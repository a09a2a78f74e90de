//! `sagashop-bench`: measures the Sagashop saga at fixed offered rates, next to a pure-broker
//! chain and a database commit bound measured in the same run. `cargo xtask bench` builds it
//! and the services in release and runs it; `--help` lists the settings.

mod chain;
mod commit_bound;
mod config;
mod report;
mod run;
mod sampler;
mod stack;
mod stats;
mod svg;
mod workload;

use std::process::ExitCode;

use clap::Parser;
use devenv::Stop;

#[tokio::main]
async fn main() -> ExitCode {
    let config = config::Config::parse();
    if let Err(error) = config.validate() {
        eprintln!("sagashop-bench: error: {error:#}");
        return ExitCode::from(2);
    }
    devenv::set_label("bench");
    let stop = match Stop::on_signals() {
        Ok(stop) => stop,
        Err(error) => {
            eprintln!("bench: error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    match run::run(config, &stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) if stop.is_set() => {
            eprintln!("bench: interrupted");
            ExitCode::from(130)
        }
        Err(error) => {
            eprintln!("bench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
