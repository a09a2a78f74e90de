//! One case's system: a private PostgreSQL cluster and tansu broker, a database per service,
//! and the services as OS processes with their logs in a directory of the case.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use devenv::process::{pick_port, tail};
use devenv::{Cluster, Stop, Tansu};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

use super::Svc;

/// What a case changes about its system.
#[derive(Debug, Clone)]
pub struct Options {
    /// The order service's `SAGA_DEADLINE_MS`.
    pub saga_deadline_ms: u64,
    /// Extra environment for every service process.
    pub env: Vec<(String, String)>,
}

/// `KAFKA_SESSION_TIMEOUT_MS` of every service in the fault cases: Kafka's minimum, so a
/// SIGKILLed consumer can be restarted soon after its session expired (see
/// [`RESTART_AFTER_SIGKILL`]).
pub const SESSION_TIMEOUT: Duration = Duration::from_millis(6_000);

/// How long a SIGKILLed service stays down at least: longer than its consumer's session. On
/// tansu 0.6, a consumer restarted within the session timeout of its killed predecessor joins
/// a group whose leader is still the dead member; the group never forms again (measured:
/// stuck for over two minutes; RELIABILITY.md). Apache Kafka expires the dead member after the
/// session timeout and rebalances either way.
pub const RESTART_AFTER_SIGKILL: Duration = Duration::from_millis(7_000);

impl Default for Options {
    fn default() -> Self {
        Self {
            saga_deadline_ms: 60_000,
            env: vec![(
                "KAFKA_SESSION_TIMEOUT_MS".to_owned(),
                SESSION_TIMEOUT.as_millis().to_string(),
            )],
        }
    }
}

/// One service process (a primary, or a second instance of the same service on another HTTP
/// port with the same database and consumer group). Killed on drop.
pub struct ServiceProcess {
    pub svc: Svc,
    /// 0 for the primary, 1 for the second instance.
    pub instance: u8,
    pub port: u16,
    exe: PathBuf,
    env: Vec<(String, String)>,
    /// stdout and stderr of every start, appended.
    pub log: PathBuf,
    child: Option<tokio::process::Child>,
    pub starts: u32,
    /// Exits nobody asked for, seen by [`ServiceProcess::check_alive`].
    pub unexpected_exits: Vec<String>,
}

impl ServiceProcess {
    pub fn label(&self) -> String {
        match self.instance {
            0 => self.svc.binary().to_owned(),
            n => format!("{}#{}", self.svc.binary(), n + 1),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(tokio::process::Child::id)
    }

    /// Starts the process (appending to its log).
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("{} is already running", self.label());
        }
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        writeln!(
            log,
            "===== faults: start #{} of {} at {} =====",
            self.starts,
            self.label(),
            timestamp()
        )?;
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("HTTP_PORT", self.port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, then reaps it.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.note(&format!("SIGKILL at {}", timestamp()));
        if let Some(mut child) = self.child.take() {
            child.start_kill().context("SIGKILL")?;
            child.wait().await?;
        }
        Ok(())
    }

    /// SIGTERM (a clean shutdown: the consumer commits and leaves its group), waiting up to
    /// `timeout` for the exit; SIGKILL after that (and an error).
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.note(&format!("SIGTERM at {}", timestamp()));
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.label());
        };
        if let Some(pid) = child.id() {
            devenv::process::terminate(pid);
        }
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                bail!(
                    "{} did not stop within {timeout:?} of SIGTERM; killed",
                    self.label()
                )
            }
        }
    }

    /// Whether it runs; records an exit nobody asked for.
    pub fn check_alive(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                let what = format!("{} exited on its own ({status})", self.label());
                self.note(&what);
                self.unexpected_exits.push(what);
                self.child = None;
                false
            }
            Err(_) => false,
        }
    }

    pub fn is_started(&self) -> bool {
        self.child.is_some()
    }

    /// Sets (`Some`) or removes (`None`) an environment variable for its next start.
    pub fn set_env(&mut self, name: &str, value: Option<&str>) {
        self.env.retain(|(key, _)| key != name);
        if let Some(value) = value {
            self.env.push((name.to_owned(), value.to_owned()));
        }
    }

    /// Waits until `GET /health/ready` answers 200.
    pub async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/health/ready", self.url());
        loop {
            if !self.check_alive() {
                bail!(
                    "{} is not running; last lines of {}:\n{}",
                    self.label(),
                    self.log.display(),
                    tail(&self.log, 30)
                );
            }
            if let Ok(response) = http.get(&url).send().await {
                if response.status().as_u16() == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {timeout:?}; last lines of {}:\n{}",
                    self.label(),
                    self.log.display(),
                    tail(&self.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Appends a line to its log (what the harness did to it, for the post-mortem).
    fn note(&self, line: &str) {
        if let Ok(mut log) = std::fs::OpenOptions::new().append(true).open(&self.log) {
            let _ = writeln!(log, "===== faults: {line} =====");
        }
    }
}

/// A case's whole system. Dropping it kills the services, then stops the broker and PostgreSQL;
/// during a panic it prints the tail of every log first and keeps the log directory.
pub struct FaultSystem {
    pub case: String,
    pub seed: u64,
    /// Topic prefix, e.g. `faults-kill-3f2a9c.`
    pub prefix: String,
    pub options: Options,
    pub services: BTreeMap<Svc, ServiceProcess>,
    /// Second instances (not running until started).
    pub extras: BTreeMap<Svc, ServiceProcess>,
    pub database_urls: BTreeMap<Svc, String>,
    pub http: reqwest::Client,
    pub log_dir: PathBuf,
    pools: Mutex<BTreeMap<Svc, PgPool>>,
    // Dropped after the services (fields drop in declaration order).
    pub broker: Tansu,
    pub pg: Cluster,
}

impl FaultSystem {
    /// Starts PostgreSQL, tansu and the four services, and waits until all are ready.
    pub async fn start(case: &str, seed: u64, options: Options) -> anyhow::Result<Self> {
        let bin_dir = binaries_dir();
        let stop = Stop::never();
        devenv::set_label("faults");
        // Commits must survive `pg_ctl restart -m immediate` (a PostgreSQL crash): with
        // synchronous_commit=off the last ones live only in shared memory and are lost.
        let pg = Cluster::start_with(&stop, None, &[("synchronous_commit", "on")]).await?;
        let broker = Tansu::start(&stop, None).await?;
        let run = Uuid::new_v4().simple().to_string();
        let prefix = format!("faults-{case}-{}.", &run[..6]);
        let log_dir = std::env::temp_dir().join(format!(
            "sagashop-faults-{case}-{}-{}",
            std::process::id(),
            &run[..6]
        ));
        std::fs::create_dir_all(&log_dir)?;
        let admin_url = pg.admin_url.to_string();
        let mut database_urls = BTreeMap::new();
        for svc in Svc::all() {
            let url =
                shared::db::create_fresh_database(&admin_url, &format!("faults_{}", svc.name()))
                    .await?;
            database_urls.insert(svc, url);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        let mut services = BTreeMap::new();
        let mut extras = BTreeMap::new();
        for svc in Svc::all() {
            let mut env = vec![
                ("DATABASE_URL".to_owned(), database_urls[&svc].clone()),
                ("KAFKA_BROKERS".to_owned(), broker.address()),
                ("HTTP_HOST".to_owned(), "127.0.0.1".to_owned()),
                ("KAFKA_TOPIC_PREFIX".to_owned(), prefix.clone()),
                ("KAFKA_GROUP_ID".to_owned(), svc.group(&prefix)),
                ("RUST_LOG".to_owned(), "warn".to_owned()),
            ];
            if svc == Svc::ORDER {
                env.push((
                    "SAGA_DEADLINE_MS".to_owned(),
                    options.saga_deadline_ms.to_string(),
                ));
            }
            env.extend(options.env.iter().cloned());
            for instance in [0u8, 1] {
                let process = ServiceProcess {
                    svc,
                    instance,
                    port: pick_port(None)?,
                    exe: bin_dir.join(svc.binary()),
                    env: env.clone(),
                    log: log_dir.join(format!("{}-{}.log", svc.name(), instance + 1)),
                    child: None,
                    starts: 0,
                    unexpected_exits: Vec::new(),
                };
                match instance {
                    0 => services.insert(svc, process),
                    _ => extras.insert(svc, process),
                };
            }
        }
        let mut system = Self {
            case: case.to_owned(),
            seed,
            prefix,
            options,
            services,
            extras,
            database_urls,
            http,
            log_dir,
            pools: Mutex::new(BTreeMap::new()),
            broker,
            pg,
        };
        for process in system.services.values_mut() {
            process.start()?;
        }
        system.wait_ready(Duration::from_secs(90)).await?;
        Ok(system)
    }

    pub fn url(&self, svc: Svc) -> String {
        self.services[&svc].url()
    }

    /// The consumer group of a service.
    pub fn group(&self, svc: Svc) -> String {
        svc.group(&self.prefix)
    }

    pub fn topic(&self, base: &str) -> String {
        format!("{}{base}", self.prefix)
    }

    /// The topics (full names) a service consumes.
    pub fn consumed_topics(&self, svc: Svc) -> Vec<String> {
        svc.consumes().iter().map(|t| self.topic(t)).collect()
    }

    pub fn dead_letter_topic(&self, svc: Svc) -> String {
        svc.dead_letter_topic(&self.prefix)
    }

    /// Waits until every started process (primaries and second instances) is ready.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let http = self.http.clone();
        for process in self.services.values_mut().chain(self.extras.values_mut()) {
            if process.is_started() {
                process.wait_ready(&http, timeout).await?;
            }
        }
        Ok(())
    }

    /// A small pool on a service's database (reconnects by itself after a restart).
    pub fn pool(&self, svc: Svc) -> PgPool {
        let mut pools = self.pools.lock().expect("pools lock");
        pools
            .entry(svc)
            .or_insert_with(|| {
                PgPoolOptions::new()
                    .max_connections(3)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_lazy(&self.database_urls[&svc])
                    .expect("a database URL")
            })
            .clone()
    }

    /// Exits of service processes nobody asked for.
    pub fn unexpected_exits(&mut self) -> Vec<String> {
        let mut exits = Vec::new();
        for process in self.services.values_mut().chain(self.extras.values_mut()) {
            process.check_alive();
            exits.extend(process.unexpected_exits.iter().cloned());
        }
        exits
    }

    /// Prints the last `lines` of every log (services, broker, PostgreSQL).
    pub fn print_logs(&self, lines: usize) {
        let mut logs: Vec<PathBuf> = self
            .services
            .values()
            .chain(self.extras.values())
            .map(|p| p.log.clone())
            .filter(|p| p.exists())
            .collect();
        logs.push(self.broker.log());
        logs.push(self.pg.log());
        for log in logs {
            eprintln!(
                "----- [{}] last {lines} lines of {} -----\n{}",
                self.case,
                log.display(),
                tail_without_noise(&log, lines)
            );
        }
    }

    /// Copies the broker and PostgreSQL logs into the case's log directory (they live in
    /// temp dirs deleted with the broker and the cluster).
    fn save_infra_logs(&self) {
        let _ = std::fs::copy(self.broker.log(), self.log_dir.join("tansu.log"));
        let _ = std::fs::copy(self.pg.log(), self.log_dir.join("postgres.log"));
    }
}

impl Drop for FaultSystem {
    fn drop(&mut self) {
        for process in self.services.values_mut().chain(self.extras.values_mut()) {
            if let Some(child) = process.child.as_mut() {
                let _ = child.start_kill();
            }
        }
        if std::thread::panicking() {
            self.print_logs(40);
            self.save_infra_logs();
            eprintln!(
                "[{}] the logs of this case are kept in {}",
                self.case,
                self.log_dir.display()
            );
        } else if std::env::var_os("FAULTS_KEEP_LOGS").is_some() {
            self.save_infra_logs();
            eprintln!("[{}] logs kept in {}", self.case, self.log_dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
    }
}

/// The directory holding the service binaries: the test binary is
/// `target/<profile>/deps/faults-<hash>`, the binaries are in `target/<profile>/`. Panics if
/// one is missing or older than its sources.
pub fn binaries_dir() -> PathBuf {
    let dir = target_dir();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf();
    for svc in Svc::all() {
        let binary = dir.join(svc.binary());
        let Ok(built) = binary.metadata().and_then(|m| m.modified()) else {
            panic!(
                "{} is missing: run `cargo build --bins` first (`cargo test --workspace` builds \
                 it; `-p e2e` alone does not)",
                binary.display()
            );
        };
        let sources = [root.join("services").join(svc.name()), root.join("shared")];
        if let Some((path, _)) = sources
            .iter()
            .filter_map(|dir| newest_file(dir))
            .max_by_key(|(_, modified)| *modified)
            .filter(|(_, modified)| *modified > built)
        {
            panic!(
                "{} is older than {}: run `cargo build --bins` first",
                binary.display(),
                path.display()
            );
        }
    }
    dir
}

/// `target/<profile>/`: the test binary is `target/<profile>/deps/faults-<hash>`.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary is in target/<profile>/deps")
        .to_path_buf()
}

/// The most recently modified file under `dir` (skipping `target` directories).
fn newest_file(dir: &Path) -> Option<(PathBuf, SystemTime)> {
    let mut newest: Option<(PathBuf, SystemTime)> = None;
    let entries = std::fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        // Test-only code (`tests/` folders, `tests.rs` modules) is not in the binaries.
        let test_only = path
            .file_name()
            .is_some_and(|n| n == "target" || n == "tests" || n == "tests.rs");
        let candidate = if test_only {
            continue;
        } else if meta.is_dir() {
            newest_file(&path)
        } else {
            meta.modified().ok().map(|m| (path, m))
        };
        if let Some((path, modified)) = candidate {
            if newest.as_ref().is_none_or(|(_, m)| modified > *m) {
                newest = Some((path, modified));
            }
        }
    }
    newest
}

/// The last `n` lines of a log, without tansu's `TopicAlreadyExists` errors (every service
/// start creates every topic).
fn tail_without_noise(path: &Path, n: usize) -> String {
    let text = tail(path, 100_000);
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.contains("TopicAlreadyExists"))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Wall-clock time in UTC, as the services log it, for markers and the summary file.
pub fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
