//! One benchmark run from start to end: infrastructure and databases, the commit bound, the
//! services, seeding, the warm-up, each rate step followed by its chain, the soak, the report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use devenv::process::stdout_of;
use devenv::Stop;
use shared::topology::{self, SERVICES};
use uuid::Uuid;

use crate::chain;
use crate::commit_bound;
use crate::config::Config;
use crate::report::{IdleReport, Report, Settings, StepInput, StepReport};
use crate::sampler::{Sampler, Target};
use crate::stack::{drop_databases, redact_url, Databases, Infra, ServiceEnv, Services};
use crate::workload::{self, order_count, Api, Probe, Seed};

/// Rate of the warm-up orders.
const WARMUP_RATE: f64 = 10.0;
/// How long the system is measured at rest, after the warm-up.
const IDLE: Duration = Duration::from_secs(5);

pub async fn run(config: Config, stop: &Stop) -> Result<()> {
    let started_at = Utc::now();
    let run_id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let exe_dir = std::env::current_exe()
        .context("locating the bench binary")?
        .parent()
        .map(Path::to_path_buf)
        .context("the bench binary has no directory")?;
    let out = config
        .out
        .clone()
        .unwrap_or_else(|| default_out(&exe_dir, started_at));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let bin_dir = config.bin_dir.clone().unwrap_or(exe_dir);

    let infra = Infra::start(stop, config.fast_postgres).await?;
    let admin_url = infra.admin_url();
    let databases = stop.guard(Databases::create(&admin_url)).await?;
    let result = Bench {
        config: &config,
        stop,
        infra: &infra,
        databases: &databases,
        run_id,
        started_at,
        out: out.clone(),
        bin_dir,
    }
    .run()
    .await;
    if infra.postgres.cluster().is_none() && !config.keep_databases {
        if let Err(error) = drop_databases(&admin_url, &databases.names()).await {
            eprintln!("bench: dropping the run's databases failed: {error:#}");
        }
    }
    let report = result?;
    print!("{}\n{}", report.table(), report.summary());
    report.write(&out)?;
    println!("\nResults: {}", out.display());
    Ok(())
}

/// `<target>/bench/<UTC timestamp>`, the bench binary being `<target>/release/sagashop-bench`.
fn default_out(exe_dir: &Path, started_at: DateTime<Utc>) -> PathBuf {
    let target = exe_dir.parent().unwrap_or(exe_dir);
    target
        .join("bench")
        .join(started_at.format("%Y%m%dT%H%M%SZ").to_string())
}

struct Bench<'a> {
    config: &'a Config,
    stop: &'a Stop,
    infra: &'a Infra,
    databases: &'a Databases,
    run_id: String,
    started_at: DateTime<Utc>,
    out: PathBuf,
    bin_dir: PathBuf,
}

/// What the steps share.
struct Steps<'a> {
    config: &'a Config,
    stop: &'a Stop,
    api: Api,
    seed: Seed,
    probe: Probe,
    sampler: Sampler,
    services: &'a mut Services,
    commit_bound: Option<f64>,
    /// Orders placed so far in the run (numbers the next one).
    placed: u64,
}

impl Bench<'_> {
    async fn run(self) -> Result<Report> {
        let config = self.config;
        let prefix = format!("bench-{}.", self.run_id);
        eprintln!(
            "bench: run {} (topic prefix {prefix}); broker {}; PostgreSQL {}; output in {}",
            self.run_id,
            self.infra.broker.describe(),
            self.infra.postgres.describe(),
            self.out.display()
        );

        let (commit_bound, commit_bound_error) = match config.no_commit_bound {
            true => (None, None),
            false => {
                eprintln!(
                    "bench: measuring the commit bound ({} connections, {} s)",
                    config.commit_bound_connections, config.commit_bound_seconds
                );
                let measured = commit_bound::measure(
                    &self.infra.admin_url(),
                    config.commit_bound_connections,
                    Duration::from_secs(config.commit_bound_seconds),
                    self.stop,
                )
                .await;
                match measured {
                    Ok(bound) => (Some(bound), None),
                    Err(error) if self.stop.is_set() => return Err(error),
                    Err(error) => (None, Some(format!("{error:#}"))),
                }
            }
        };

        let env = ServiceEnv {
            databases: self.databases,
            brokers: &self.infra.broker.address,
            topic_prefix: &prefix,
            fetch_wait_ms: config.fetch_wait_ms,
            extra: &config.service_env,
        };
        let settings = self.settings(&prefix, &env);
        let kafka = chain::kafka_config(&env.for_service(&topology::ORDER))?;
        eprintln!(
            "bench: starting the services from {}",
            self.bin_dir.display()
        );
        let mut services = Services::spawn(&self.bin_dir, &self.out, |s| env.for_service(s))?;
        let result = async {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .connect_timeout(Duration::from_secs(5))
                .pool_max_idle_per_host(4096)
                .build()?;
            services
                .wait_ready(&http, Duration::from_secs(120), self.stop)
                .await?;
            let sampler = Sampler::start(self.targets(&services));
            let probe = Probe::connect(&self.infra.admin_url(), self.databases).await?;
            let api = Api::new(http, &services);
            let seed = self
                .stop
                .guard(Seed::create(
                    &api,
                    config.customers,
                    config.products,
                    config.mix,
                ))
                .await?;
            let mut cx = Steps {
                config,
                stop: self.stop,
                api,
                seed,
                probe,
                sampler,
                services: &mut services,
                commit_bound: commit_bound.as_ref().map(|b| b.commits_per_s),
                placed: 0,
            };
            let warmup = match config.warmup_orders {
                0 => None,
                n => {
                    let duration = Duration::from_secs_f64(f64::from(n) / WARMUP_RATE);
                    Some(cx.step("warm-up", WARMUP_RATE, duration, false).await?)
                }
            };
            let idle = cx.idle(IDLE).await?;
            let mut steps = Vec::new();
            for (i, &rate) in config.rates.iter().enumerate() {
                let label = format!("{}/s", crate::svg::label(rate));
                let mut step = cx.step(&label, rate, config.step_duration(), false).await?;
                if !config.no_chain {
                    let count = order_count(rate, config.step_duration());
                    eprintln!("bench: {label}: pure-broker chain, {} hops", config.hops);
                    let name = format!("s{}", i + 1);
                    let chain = chain::run(
                        &kafka,
                        &name,
                        config.hops,
                        rate,
                        count,
                        config.quiet_timeout(),
                        self.stop,
                    )
                    .await;
                    if self.stop.is_set() {
                        chain?;
                        anyhow::bail!("interrupted");
                    }
                    step.set_chain(chain);
                }
                eprintln!("bench: {}", one_line(&step));
                steps.push(step);
            }
            let soak = match config.soak() {
                Some((rate, duration)) => {
                    let label = format!("soak {}/s", crate::svg::label(rate));
                    let step = cx.step(&label, rate, duration, true).await?;
                    eprintln!("bench: {}", one_line(&step));
                    Some(step)
                }
                None => None,
            };
            cx.probe.close().await;
            anyhow::Ok((idle, warmup, steps, soak))
        }
        .await;
        eprintln!("bench: stopping the services");
        services.shutdown().await;
        let (idle, warmup, steps, soak) = result?;
        Ok(Report {
            settings,
            commit_bound,
            commit_bound_error,
            idle: Some(idle),
            warmup,
            steps,
            soak,
            finished_at: Utc::now(),
        })
    }

    fn targets(&self, services: &Services) -> Vec<(String, Target)> {
        let mut targets: Vec<(String, Target)> = SERVICES
            .iter()
            .map(|service| {
                let target = services
                    .get(service.name)
                    .pid()
                    .map_or(Target::Unknown, Target::Process);
                (service.name.to_owned(), target)
            })
            .collect();
        targets.push(("broker".into(), self.infra.broker_target()));
        targets.push(("postgres".into(), self.infra.postgres_target()));
        targets.push(("bench".into(), Target::Process(std::process::id())));
        targets
    }

    fn settings(&self, prefix: &str, env: &ServiceEnv<'_>) -> Settings {
        let config = self.config;
        let git_commit = stdout_of(Command::new("git").args(["rev-parse", "HEAD"]));
        let git_dirty = git_commit.as_ref().and_then(|_| {
            stdout_of(Command::new("git").args(["status", "--porcelain", "--untracked-files=no"]))
                .map(|s| !s.is_empty())
        });
        // Collected into maps, later entries win, as in the process's environment.
        let service_env: BTreeMap<String, BTreeMap<String, String>> = SERVICES
            .iter()
            .map(|s| {
                let vars = env
                    .for_service(s)
                    .into_iter()
                    .map(|(k, v)| {
                        let v = if k == "DATABASE_URL" {
                            redact_url(&v)
                        } else {
                            v
                        };
                        (k, v)
                    })
                    .collect();
                (s.name.to_owned(), vars)
            })
            .collect();
        Settings {
            run_id: self.run_id.clone(),
            started_at: self.started_at,
            rates: config.rates.clone(),
            duration_s: config.duration,
            soak_rate: config.soak().map(|(rate, _)| rate),
            soak_duration_s: config.soak_duration,
            mix: config.mix,
            fetch_wait_ms: config.fetch_wait_ms,
            hops: config.hops,
            quiet_timeout_s: config.quiet_timeout,
            warmup_orders: config.warmup_orders,
            customers: config.customers,
            products: config.products,
            topic_prefix: prefix.to_owned(),
            infra: self.infra.info.clone(),
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            git_commit,
            git_dirty,
            service_env,
        }
    }
}

impl Steps<'_> {
    /// The system at rest for `duration`.
    async fn idle(&mut self, duration: Duration) -> Result<IdleReport> {
        eprintln!(
            "bench: measuring the system at rest for {} s",
            duration.as_secs()
        );
        let before = self.probe.counters().await?;
        let mark = self.sampler.mark();
        self.stop
            .guard(async {
                tokio::time::sleep(duration).await;
                Ok(())
            })
            .await?;
        let usage = self.sampler.since(&mark);
        let after = self.probe.counters().await?;
        Ok(IdleReport::compute(
            duration.as_secs_f64(),
            before,
            after,
            usage,
        ))
    }

    /// Places orders at `rate` for `duration`, waits for quiet and measures.
    async fn step(
        &mut self,
        label: &str,
        rate: f64,
        duration: Duration,
        soak: bool,
    ) -> Result<StepReport> {
        let count = order_count(rate, duration);
        eprintln!(
            "bench: {label}: {count} orders at {} orders/s over {:.0} s",
            crate::svg::label(rate),
            duration.as_secs_f64()
        );
        self.stop.guard(self.seed.top_up(&self.api, count)).await?;
        let restocker = self
            .seed
            .needs_restocking_during(count)
            .then(|| self.seed.restocker(&self.api));
        let before = self.probe.counters().await?;
        let mark = self.sampler.mark();
        let from = self.probe.now().await?;
        let load = workload::run_load(
            &self.api,
            &self.seed,
            &self.probe,
            self.config.mix,
            rate,
            count,
            self.placed,
            label,
            self.stop,
        )
        .await;
        if let Some(restocker) = restocker {
            restocker.abort();
        }
        let load = load?;
        self.placed += count;
        let to = self.probe.now().await?;
        let quiet = workload::wait_quiet(
            &self.probe,
            from,
            to,
            self.config.quiet_timeout(),
            self.stop,
        )
        .await?;
        let usage = self.sampler.since(&mark);
        let after = self.probe.counters().await?;
        let window_s = workload::millis(Utc::now() - load.started_at) / 1000.0;
        self.services.check_alive()?;
        let rows = self.probe.orders(&load.accepted_ids()).await?;
        Ok(StepReport::compute(StepInput {
            label: label.to_owned(),
            soak,
            rate,
            duration_s: duration.as_secs_f64(),
            load: &load,
            quiet,
            rows: &rows,
            before,
            after,
            window_s,
            usage,
            commit_bound: self.commit_bound,
        }))
    }
}

fn one_line(step: &StepReport) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0} ms"));
    let chain = step.chain.as_ref().map(|c| &c.latency);
    format!(
        "{}: {}/{} sagas terminal{}, achieved {}/s, saga p50 {} p99 {}, chain p50 {} p99 {}, \
         {} HTTP errors",
        step.label,
        step.terminal,
        step.accepted,
        if step.quiet.finished {
            ""
        } else {
            " (UNFINISHED)"
        },
        step.achieved_rate
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}")),
        ms(step.saga.p50),
        ms(step.saga.p99),
        ms(chain.and_then(|c| c.p50)),
        ms(chain.and_then(|c| c.p99)),
        step.errors
    )
}
