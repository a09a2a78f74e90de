//! The `up`, `test`, `bench`, `schemas` and `alerts` subcommands.

use crate::services::{self, Running};
use anyhow::{bail, Result};
use devenv::process::{run_status, tail};
use devenv::{Broker, Postgres, ServiceDatabase, Stop};
use shared::schemas::{self, Mode};
use shared::topology::{Service, SERVICES};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, ExitStatus};

/// PostgreSQL and the broker; dropping it stops what it started (broker first).
struct Infra {
    broker: Broker,
    postgres: Postgres,
}

impl Infra {
    async fn start(stop: &Stop, pg_port: Option<u16>, broker_port: Option<u16>) -> Result<Self> {
        let postgres = Postgres::start(stop, pg_port).await?;
        drop(stop.guard(postgres.connect()).await?);
        let broker = Broker::start(stop, broker_port).await?;
        Ok(Self { broker, postgres })
    }
}

pub async fn up(stop: &Stop) -> Result<ExitCode> {
    let ports = SERVICES
        .iter()
        .map(services::port)
        .collect::<Result<Vec<_>>>()?;
    let infra = Infra::start(stop, Some(55432), Some(9092)).await?;
    // Each service gets its database and two roles, as in the compose stack: it migrates as
    // the owner and runs as a role that can only read and write rows (README.md, Security).
    let databases: Vec<ServiceDatabase> = SERVICES.iter().map(service_database).collect();
    for database in &databases {
        stop.guard(infra.postgres.create_service_database(database))
            .await?;
    }
    let bin_dir = services::build(stop).await?;
    let mut running = Running::spawn(&bin_dir, &ports, |service| {
        let database = service_database(service);
        let server = &infra.postgres.admin_url;
        vec![
            ("DATABASE_URL", database.url(server, false).into()),
            ("DATABASE_MIGRATION_URL", database.url(server, true).into()),
            ("KAFKA_BROKERS", infra.broker.address.clone()),
        ]
    })?;
    let result = supervise(stop, &mut running, &infra).await;
    running.shutdown().await;
    result
}

/// `service`'s database and roles under `cargo xtask up`; the passwords are the role names
/// (the private cluster trusts every local connection anyway).
fn service_database(service: &Service) -> ServiceDatabase {
    ServiceDatabase {
        database: service.database.to_owned(),
        owner: service.owner_role(),
        owner_password: service.owner_role(),
        runtime: service.runtime_role(),
        runtime_password: service.runtime_role(),
    }
}

/// Prints the banner once all are ready; returns on a stop signal or when a service exits.
async fn supervise(stop: &Stop, running: &mut Running, infra: &Infra) -> Result<ExitCode> {
    let ports = running.ports();
    let ready = services::wait_ready(ports.clone());
    tokio::pin!(ready);
    let mut is_ready = false;
    loop {
        tokio::select! {
            result = &mut ready, if !is_ready => {
                result?;
                is_ready = true;
                println!("\nSagashop is up:");
                for (name, port) in &ports {
                    println!("  {name:<10} http://127.0.0.1:{port}");
                }
                println!("  broker     {}", infra.broker.describe());
                println!("  database   {}", infra.postgres.describe());
                println!("Ctrl-C to stop\n");
            }
            _ = stop.wait() => return Ok(ExitCode::SUCCESS),
            (name, status) = running.first_exit() => bail!("{name} exited unexpectedly ({status})"),
        }
    }
}

pub async fn test(stop: &Stop, args: Vec<String>) -> Result<ExitCode> {
    let infra = Infra::start(stop, None, None).await?;
    let mut cmd = services::cargo();
    // The whole workspace unless the arguments pick packages (`-p`/`--package`).
    let picks_packages = args
        .iter()
        .take_while(|arg| *arg != "--")
        .any(|arg| arg.starts_with("-p") || arg.starts_with("--package"));
    let scope: &[&str] = if picks_packages {
        &[]
    } else {
        &["--workspace"]
    };
    cmd.arg("test").args(scope).arg("--locked").args(&args);
    let shown: Vec<&str> = ["test"]
        .into_iter()
        .chain(scope.iter().copied())
        .chain(["--locked"])
        .chain(args.iter().map(String::as_str))
        .collect();
    eprintln!("xtask: running cargo {}", shown.join(" "));
    cmd.env("DATABASE_URL", infra.postgres.admin_url.as_str());
    cmd.env("KAFKA_BROKERS", &infra.broker.address);
    let status = run_status(cmd, "cargo test", stop).await?;
    // Not after Ctrl-C (then cargo is stopped by a signal or sees the stop first).
    if status.code().is_some_and(|c| c != 0) && !stop.is_set() {
        eprintln!("xtask: cargo test failed ({status})");
        for log in [infra.broker.log(), infra.postgres.log()]
            .into_iter()
            .flatten()
        {
            eprintln!(
                "xtask: last 40 lines of {}:\n{}",
                log.display(),
                tail(&log, 40)
            );
        }
    }
    Ok(exit_code(status))
}

/// Builds the services and the benchmark in release, then runs `sagashop-bench ARGS...`
/// (it starts its own PostgreSQL and broker unless DATABASE_URL / KAFKA_BROKERS are set).
pub async fn bench(stop: &Stop, args: Vec<String>) -> Result<ExitCode> {
    let bin_dir = services::build_release(stop).await?;
    let exe = bin_dir.join(services::BENCH_PACKAGE);
    let mut cmd = Command::new(&exe);
    cmd.args(&args).current_dir(services::workspace_root());
    let status = run_status(cmd, services::BENCH_PACKAGE, stop).await?;
    Ok(exit_code(status))
}

/// Checks the event schemas; with `write`, first writes those of new versions.
pub fn schemas(write: bool, mode: Mode) -> Result<ExitCode> {
    let root = services::workspace_root();
    let problems = if write {
        match schemas::write_with(&root, mode) {
            Ok(written) => {
                for path in &written {
                    println!("xtask: wrote {}", path.display());
                }
                schemas::verify_with(&root, mode).err()
            }
            Err(problems) => Some(problems),
        }
    } else {
        schemas::verify_with(&root, mode).err()
    };
    let Some(problems) = problems else {
        let count = schemas::generated().len();
        println!("xtask: {count} event schemas published and compatible ({mode})");
        return Ok(ExitCode::SUCCESS);
    };
    for problem in &problems {
        eprintln!("xtask: {problem}");
    }
    eprintln!("xtask: {} schema problem(s)", problems.len());
    Ok(ExitCode::FAILURE)
}

/// The Prometheus files under docker/prometheus/, checked by `alerts`.
const PROMTOOL_CHECKS: &[&[&str]] = &[
    &["check", "rules", "alerts.yml"],
    &["check", "config", "prometheus.yml"],
    &["test", "rules", "alerts.test.yml"],
];

/// Checks the alert rules and the Prometheus configuration with `promtool` (offline).
pub fn alerts() -> Result<ExitCode> {
    let directory = services::workspace_root().join("docker/prometheus");
    for args in PROMTOOL_CHECKS {
        let status = Command::new("promtool")
            .args(*args)
            .current_dir(&directory)
            .status()
            .map_err(|error| {
                anyhow::anyhow!(
                    "running promtool: {error} (Debian/Ubuntu: apt-get install prometheus)"
                )
            })?;
        if !status.success() {
            eprintln!("xtask: promtool {} failed", args.join(" "));
            return Ok(exit_code(status));
        }
    }
    println!("xtask: the alert rules and the Prometheus configuration are valid");
    Ok(ExitCode::SUCCESS)
}

/// The exit code of a child: its own, or 128 + the signal that ended it.
fn exit_code(status: ExitStatus) -> ExitCode {
    let code = status.code().or(status.signal().map(|s| 128 + s));
    ExitCode::from(code.and_then(|c| u8::try_from(c).ok()).unwrap_or(1))
}
