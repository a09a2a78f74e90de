//! Command-line settings of a benchmark run.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure};
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "sagashop-bench",
    about = "Measures the Sagashop saga: throughput, saga latency and resource use at fixed \
             offered rates, next to a pure-broker chain and a database commit bound measured in \
             the same run",
    long_about = None,
    after_help = "Steps: for each rate in --rates, open-loop POST /orders for --duration \
        seconds, wait until every order is terminal and every outbox is drained, measure; then \
        the pure-broker chain at the same message rate. Then the optional soak.\n\n\
        Environment:\n  \
        DATABASE_URL    use this PostgreSQL server (server-level URL) instead of a private cluster\n  \
        KAFKA_BROKERS   use this Kafka broker instead of a private tansu\n\n\
        Everything a run creates is unique to it (topic prefix `bench-<run id>.`, consumer \
        groups, databases), so it works against any Kafka broker and PostgreSQL server.\n\n\
        The services (the release binaries, as processes) get only this environment, then \
        --service-env: DATABASE_URL (a fresh database each), KAFKA_BROKERS, KAFKA_TOPIC_PREFIX, \
        KAFKA_GROUP_ID=<prefix><service>-service, KAFKA_FETCH_WAIT_MAX_MS, HTTP_HOST=127.0.0.1, \
        HTTP_PORT (a free port), RUST_LOG=warn, SAGA_DEADLINE_MS=86400000 (order), \
        SHIPPING_COUNTRIES=DE,FR,GB,US (shipping). Their logs go to the output directory.\n\n\
        Output: a Markdown table on stdout; results.json, report.md and SVG charts in --out."
)]
pub struct Config {
    /// Offered rates in orders per second, one step each, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "20,60,100,200,300")]
    pub rates: Vec<f64>,

    /// Seconds of load per rate step.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,

    /// Rate of the soak in orders per second [default: the last of --rates].
    #[arg(long)]
    pub soak_rate: Option<f64>,

    /// Seconds of soak after the steps, reported as latency over time (0: no soak).
    #[arg(long, default_value_t = 0)]
    pub soak_duration: u64,

    /// The orders placed: `happy` (all confirm) or `mixed` (60% confirm, 10% each
    /// payment_declined, shipping_unavailable, out_of_stock and cancelled_by_customer).
    #[arg(long, value_enum, default_value_t = Mix::Happy)]
    pub mix: Mix,

    /// `KAFKA_FETCH_WAIT_MAX_MS` of the services and the chain's clients (tansu waits this long
    /// on every fetch; it is the per-hop latency floor there).
    #[arg(long, default_value_t = 10)]
    pub fetch_wait_ms: u32,

    /// Consume hops of the pure-broker chain (the saga reaches its terminal status after 4).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub hops: u32,

    /// Seconds to wait after a step for every order to be terminal and every outbox drained;
    /// after that the step is reported as not finished.
    #[arg(long, default_value_t = 120)]
    pub quiet_timeout: u64,

    /// Orders placed (at 10/s) and waited for before the first step, not measured (0: none).
    #[arg(long, default_value_t = 20)]
    pub warmup_orders: u32,

    /// Customers with a rich account; orders go round-robin over them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub customers: u32,

    /// Products with large stock; orders go round-robin over them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub products: u32,

    /// Start the private PostgreSQL cluster with the old non-durable settings (fsync=off,
    /// synchronous_commit=off, full_page_writes=off) instead of durable ones. No effect with
    /// DATABASE_URL.
    #[arg(long)]
    pub fast_postgres: bool,

    /// Extra environment for every service, KEY=VALUE (repeatable; wins over what the bench
    /// sets), e.g. `--service-env DATABASE_MAX_CONNECTIONS=20`.
    #[arg(long = "service-env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub service_env: Vec<(String, String)>,

    /// Skip the pure-broker chain reference.
    #[arg(long)]
    pub no_chain: bool,

    /// Skip the database commit bound reference.
    #[arg(long)]
    pub no_commit_bound: bool,

    /// Concurrent connections of the commit bound.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub commit_bound_connections: u32,

    /// Seconds of the commit bound.
    #[arg(long, default_value_t = 5)]
    pub commit_bound_seconds: u64,

    /// Keep the run's databases when the server is the one from DATABASE_URL (a private
    /// cluster is always thrown away).
    #[arg(long)]
    pub keep_databases: bool,

    /// Output directory [default: <target>/bench/<UTC timestamp>/].
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Directory holding the four service binaries [default: the bench binary's own].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

/// Which orders a step places.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    Happy,
    Mixed,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

impl Config {
    /// Checks what clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(!self.rates.is_empty(), "--rates is empty");
        for rate in self.rates.iter().chain(&self.soak_rate) {
            if !(rate.is_finite() && *rate > 0.0 && *rate <= 100_000.0) {
                bail!("rates must be between 0 and 100000 per second, got {rate}");
            }
        }
        ensure!(self.duration > 0, "--duration must be at least 1 second");
        ensure!(
            self.commit_bound_seconds > 0,
            "--commit-bound-seconds must be at least 1"
        );
        Ok(())
    }

    pub fn step_duration(&self) -> Duration {
        Duration::from_secs(self.duration)
    }

    pub fn quiet_timeout(&self) -> Duration {
        Duration::from_secs(self.quiet_timeout)
    }

    /// The soak's rate and duration, if there is one.
    pub fn soak(&self) -> Option<(f64, Duration)> {
        let rate = self.soak_rate.or(self.rates.last().copied())?;
        (self.soak_duration > 0).then(|| (rate, Duration::from_secs(self.soak_duration)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn defaults_and_soak() {
        let config = Config::parse_from(["sagashop-bench"]);
        assert_eq!(config.rates, [20.0, 60.0, 100.0, 200.0, 300.0]);
        assert_eq!(config.soak(), None);
        let config =
            Config::parse_from(["sagashop-bench", "--rates", "5,7", "--soak-duration", "60"]);
        assert_eq!(config.soak(), Some((7.0, Duration::from_secs(60))));
        config.validate().unwrap();
    }

    #[test]
    fn service_env_is_key_value() {
        let config = Config::parse_from([
            "sagashop-bench",
            "--service-env",
            "A=1",
            "--service-env",
            "B=x=2",
        ]);
        assert_eq!(
            config.service_env,
            [("A".into(), "1".into()), ("B".into(), "x=2".into())]
        );
        assert!(Config::try_parse_from(["sagashop-bench", "--service-env", "nokey"]).is_err());
    }

    #[test]
    fn bad_rates_are_refused() {
        let config = Config::parse_from(["sagashop-bench", "--rates", "0"]);
        assert!(config.validate().is_err());
    }
}
