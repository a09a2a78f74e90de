//! The system under test: PostgreSQL and the broker (the given ones or private ones), a fresh
//! database per service, and the release binaries of `shared::topology`'s services as OS
//! processes, each on a free port with its log in the run's output directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use devenv::postgres::DURABLE_SETTINGS;
use devenv::process::{pick_port, stop_gracefully, tail};
use devenv::{Broker, Postgres, Stop};
use serde::Serialize;
use shared::topology::{Service, SERVICES};

use crate::sampler::Target;

/// Countries the shipping service serves in a run (the orders go to FR; `AQ` is not served).
pub const SHIPPED_COUNTRIES: &str = "DE,FR,GB,US";

/// `SAGA_DEADLINE_MS` of the order service: a day, so no saga of a run ever times out.
const SAGA_DEADLINE_MS: u64 = 86_400_000;

/// The settings of the private cluster when it is not `--fast-postgres`.
const NON_DURABLE_SETTINGS: [(&str, &str); 3] = [
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
];

/// How the infrastructure was provided, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct InfraInfo {
    /// `private cluster` or `DATABASE_URL`.
    pub postgres: String,
    /// The settings given to the private cluster (empty for DATABASE_URL's server).
    pub postgres_settings: BTreeMap<String, String>,
    /// `SHOW server_version`.
    pub postgres_version: String,
    pub broker_address: String,
    /// `tansu (private)` or `KAFKA_BROKERS`.
    pub broker: String,
}

/// PostgreSQL and the broker; dropping it stops what it started (broker first).
pub struct Infra {
    pub broker: Broker,
    pub postgres: Postgres,
    pub info: InfraInfo,
}

impl Infra {
    pub async fn start(stop: &Stop, fast_postgres: bool) -> Result<Self> {
        let settings = match fast_postgres {
            true => NON_DURABLE_SETTINGS,
            false => DURABLE_SETTINGS,
        };
        let postgres = Postgres::start_with(stop, None, &settings).await?;
        let mut conn = stop.guard(postgres.connect()).await?;
        let postgres_version: String = sqlx::query_scalar("show server_version")
            .fetch_one(&mut conn)
            .await
            .context("asking PostgreSQL for its version")?;
        drop(conn);
        let broker = Broker::start(stop, None).await?;
        let private = postgres.cluster().is_some();
        let info = InfraInfo {
            postgres: match private {
                true => "private cluster".into(),
                false => "DATABASE_URL".into(),
            },
            postgres_settings: match private {
                true => settings
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                false => BTreeMap::new(),
            },
            postgres_version,
            broker_address: broker.address.clone(),
            broker: match broker.log() {
                Some(_) => "tansu (private)".into(),
                None => "KAFKA_BROKERS".into(),
            },
        };
        Ok(Self {
            broker,
            postgres,
            info,
        })
    }

    /// The private cluster's postmaster and its backends (not measurable for DATABASE_URL's).
    pub fn postgres_target(&self) -> Target {
        match self.postgres.cluster().and_then(|c| c.postmaster_pid()) {
            Some(pid) => Target::Tree(pid),
            None => Target::Unknown,
        }
    }

    /// The private tansu process: the one whose working directory is the broker's data
    /// directory (where its log is).
    pub fn broker_target(&self) -> Target {
        let Some(dir) = self
            .broker
            .log()
            .and_then(|log| log.parent().map(Path::to_path_buf))
        else {
            return Target::Unknown;
        };
        find_process_in(&dir).map_or(Target::Unknown, Target::Process)
    }

    pub fn admin_url(&self) -> String {
        self.postgres.admin_url.to_string()
    }
}

fn find_process_in(dir: &Path) -> Option<u32> {
    let dir = std::fs::canonicalize(dir).ok()?;
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cwd = std::fs::read_link(entry.path().join("cwd")).ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (cwd == dir && comm.trim() == "tansu").then_some(pid)
        })
}

/// A fresh, uniquely named database per service.
pub struct Databases {
    /// Service name -> URL.
    pub urls: BTreeMap<&'static str, String>,
}

impl Databases {
    pub async fn create(admin_url: &str) -> Result<Self> {
        let mut urls = BTreeMap::new();
        for service in SERVICES {
            let name = service.name;
            let url =
                shared::db::create_fresh_database(admin_url, &format!("bench_{name}")).await?;
            urls.insert(name, url);
        }
        Ok(Self { urls })
    }

    /// The database names.
    pub fn names(&self) -> Vec<String> {
        self.urls.values().map(|url| database_name(url)).collect()
    }
}

/// The path of a database URL, without query.
pub fn database_name(url: &str) -> String {
    let path = url.split('?').next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or_default().to_owned()
}

/// Drops databases (with their connections) on the server `admin_url` points at.
pub async fn drop_databases(admin_url: &str, names: &[String]) -> Result<()> {
    let admin = shared::db::connect(admin_url, 1).await?;
    for name in names {
        sqlx::query(&format!(r#"drop database if exists "{name}" with (force)"#))
            .execute(&admin)
            .await
            .with_context(|| format!("dropping database {name}"))?;
    }
    admin.close().await;
    Ok(())
}

/// What every service of a run gets in its (otherwise empty) environment.
pub struct ServiceEnv<'a> {
    pub databases: &'a Databases,
    pub brokers: &'a str,
    pub topic_prefix: &'a str,
    pub fetch_wait_ms: u32,
    /// `--service-env`, applied last.
    pub extra: &'a [(String, String)],
}

impl ServiceEnv<'_> {
    /// The environment of `service`, in the order it is applied (later entries win).
    pub fn for_service(&self, service: &Service) -> Vec<(String, String)> {
        let mut env = vec![
            ("DATABASE_URL", self.databases.urls[service.name].clone()),
            ("KAFKA_BROKERS", self.brokers.to_owned()),
            ("KAFKA_TOPIC_PREFIX", self.topic_prefix.to_owned()),
            (
                "KAFKA_GROUP_ID",
                format!("{}{}", self.topic_prefix, service.group_id),
            ),
            ("KAFKA_FETCH_WAIT_MAX_MS", self.fetch_wait_ms.to_string()),
            ("HTTP_HOST", "127.0.0.1".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ];
        match service.name {
            "order" => env.push(("SAGA_DEADLINE_MS", SAGA_DEADLINE_MS.to_string())),
            "shipping" => env.push(("SHIPPING_COUNTRIES", SHIPPED_COUNTRIES.to_owned())),
            _ => {}
        }
        let mut env: Vec<(String, String)> =
            env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        env.extend(self.extra.iter().cloned());
        env
    }
}

/// The URL with its password replaced, for the report.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// One service process; killed on drop.
pub struct ServiceProcess {
    pub service: &'static Service,
    pub port: u16,
    pub log: PathBuf,
    child: tokio::process::Child,
}

impl ServiceProcess {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.service.package,
                self.log.display(),
                tail(&self.log, 30)
            );
        }
        Ok(())
    }
}

/// The running services.
pub struct Services(Vec<ServiceProcess>);

impl Services {
    /// Starts `<bin_dir>/<package>` for each service with `env` as its whole environment (plus
    /// HTTP_PORT), output appended to `<log_dir>/<service>.log`.
    pub fn spawn(
        bin_dir: &Path,
        log_dir: &Path,
        env: impl Fn(&Service) -> Vec<(String, String)>,
    ) -> Result<Self> {
        let mut procs = Vec::new();
        for service in SERVICES {
            let (name, package) = (service.name, service.package);
            let exe = bin_dir.join(package);
            if !exe.is_file() {
                bail!(
                    "{} is missing: build it with `cargo build --release -p {package}` \
                     (`cargo xtask bench` does), or pass --bin-dir",
                    exe.display()
                );
            }
            let port = pick_port(None)?;
            let log = log_dir.join(format!("{name}.log"));
            let file = std::fs::File::create(&log)
                .with_context(|| format!("creating {}", log.display()))?;
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.env_clear()
                .envs(env(service))
                .env("HTTP_PORT", port.to_string())
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                // Own process group: a terminal's Ctrl-C reaches the bench, which stops them.
                .process_group(0)
                .kill_on_drop(true);
            let child = cmd
                .spawn()
                .with_context(|| format!("starting {}", exe.display()))?;
            procs.push(ServiceProcess {
                service,
                port,
                log,
                child,
            });
        }
        Ok(Self(procs))
    }

    pub fn get(&self, name: &str) -> &ServiceProcess {
        self.0
            .iter()
            .find(|p| p.service.name == name)
            .expect("a known service")
    }

    pub fn url(&self, name: &str) -> String {
        self.get(name).url()
    }

    /// Fails if a service has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.0.iter_mut().try_for_each(ServiceProcess::check_alive)
    }

    /// Waits until every service answers 200 on `GET /health/ready`.
    pub async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        timeout: Duration,
        stop: &Stop,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for i in 0..self.0.len() {
            let url = format!("{}/health/ready", self.0[i].url());
            loop {
                self.0[i].check_alive()?;
                let probe = http.get(&url).timeout(Duration::from_secs(2)).send();
                if stop
                    .guard(async { Ok(probe.await) })
                    .await?
                    .is_ok_and(|r| r.status() == 200)
                {
                    break;
                }
                if Instant::now() > deadline {
                    let p = &self.0[i];
                    bail!(
                        "{} not ready after {timeout:?}; last lines of {}:\n{}",
                        p.service.package,
                        p.log.display(),
                        tail(&p.log, 30)
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// SIGTERM to all, then SIGKILL to those still running after 5 s.
    pub async fn shutdown(mut self) {
        let children = self
            .0
            .iter_mut()
            .map(|p| (p.service.name, &mut p.child))
            .collect();
        for name in stop_gracefully(children, Duration::from_secs(5)).await {
            eprintln!("bench: {name}-service did not stop within 5 s of SIGTERM; killed it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_names_what_the_services_get() {
        use clap::CommandFactory;
        let help = crate::config::Config::command()
            .get_after_help()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(help.contains(&format!("SHIPPING_COUNTRIES={SHIPPED_COUNTRIES}")));
        assert!(help.contains(&format!("SAGA_DEADLINE_MS={SAGA_DEADLINE_MS}")));
    }

    #[test]
    fn database_names_and_redaction() {
        assert_eq!(
            database_name("postgres://u:p@h:5432/bench_order_abc?sslmode=disable"),
            "bench_order_abc"
        );
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn the_service_environment_ends_with_the_overrides() {
        let databases = Databases {
            urls: SERVICES
                .iter()
                .map(|s| (s.name, format!("postgres://h/{}", s.name)))
                .collect(),
        };
        let extra = [("RUST_LOG".to_owned(), "info".to_owned())];
        let env = ServiceEnv {
            databases: &databases,
            brokers: "b:9092",
            topic_prefix: "bench-x.",
            fetch_wait_ms: 10,
            extra: &extra,
        };
        let order = env.for_service(&shared::topology::ORDER);
        let get = |key: &str| {
            order
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("KAFKA_GROUP_ID"), Some("bench-x.order-service"));
        assert_eq!(get("DATABASE_URL"), Some("postgres://h/order"));
        assert_eq!(get("RUST_LOG"), Some("info"));
        assert!(get("SAGA_DEADLINE_MS").is_some());
        assert!(env
            .for_service(&shared::topology::SHIPPING)
            .iter()
            .any(|(k, v)| k == "SHIPPING_COUNTRIES" && !v.contains("AQ")));
    }
}
