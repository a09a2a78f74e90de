//! The Kafka broker: the one from KAFKA_BROKERS, or a private tansu killed on drop.

use crate::process::{find_on_path, pick_port, run, tail, wait_for_port, Stop, TempDir};
use crate::say;
use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The broker xtask uses: the one from KAFKA_BROKERS, or a private [`Tansu`].
pub struct Broker {
    /// Bootstrap servers, e.g. `127.0.0.1:9092`.
    pub address: String,
    tansu: Option<Tansu>,
}

impl Broker {
    /// The broker from KAFKA_BROKERS if set, else a new private tansu.
    pub async fn start(stop: &Stop, preferred_port: Option<u16>) -> Result<Self> {
        if let Ok(address) = std::env::var("KAFKA_BROKERS") {
            say!("using the Kafka broker from KAFKA_BROKERS ({address})");
            return Ok(Self {
                address,
                tansu: None,
            });
        }
        let tansu = Tansu::start(stop, preferred_port).await?;
        Ok(Self {
            address: tansu.address(),
            tansu: Some(tansu),
        })
    }

    /// Where the broker is, for the banner.
    pub fn describe(&self) -> String {
        match &self.tansu {
            Some(t) => format!("{} (tansu, log: {})", self.address, t.log().display()),
            None => format!("{} (from KAFKA_BROKERS)", self.address),
        }
    }

    pub fn log(&self) -> Option<PathBuf> {
        self.tansu.as_ref().map(Tansu::log)
    }
}

/// A private tansu broker on 127.0.0.1 with the sqlite storage engine, its data and log in a
/// temp dir. It runs in its own process group (a terminal's Ctrl-C does not reach it) and is
/// killed on drop. The sqlite engine keeps records and committed offsets across
/// [`Tansu::kill`] and [`Tansu::start_again`].
pub struct Tansu {
    exe: PathBuf,
    port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl Tansu {
    /// Starts tansu on `preferred_port` if it is free, else on a free port; installs it with
    /// `cargo install` first if it is not installed.
    pub async fn start(stop: &Stop, preferred_port: Option<u16>) -> Result<Self> {
        let exe = match find_tansu() {
            Some(exe) => exe,
            None => install_tansu(stop).await?,
        };
        let dir = TempDir::new("tansu")?;
        let port = pick_port(preferred_port)?;
        say!(
            "starting tansu on 127.0.0.1:{port} (data and log in {})",
            dir.path().display()
        );
        let mut tansu = Tansu {
            exe,
            port,
            child: None,
            dir,
        };
        tansu.spawn(stop, false).await?;
        // The first start creates the schema; the header index goes in before any traffic.
        tansu.wait_for_schema(stop).await?;
        tansu.stop_cleanly().await?;
        tansu.spawn(stop, true).await?;
        Ok(tansu)
    }

    /// Waits until the first start has created the schema, for [`header_index::apply`].
    async fn wait_for_schema(&self, stop: &Stop) -> Result<()> {
        let database = self.database();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        stop.guard(async {
            while !header_index::schema_exists(&database)? {
                if tokio::time::Instant::now() > deadline {
                    bail!(
                        "tansu created no schema in {} within 10 s",
                        database.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        })
        .await
    }

    /// SIGTERM, then SIGKILL after 5 s; reaps the process.
    async fn stop_cleanly(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        crate::process::terminate(child.id());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while child.try_wait()?.is_none() {
            if tokio::time::Instant::now() > deadline {
                child.kill().context("killing tansu")?;
                child.wait().context("waiting for tansu")?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The broker's sqlite database.
    pub fn database(&self) -> PathBuf {
        self.dir.path().join(DATABASE_FILE)
    }

    /// Bootstrap servers, e.g. `127.0.0.1:9092`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's log (stdout and stderr, appended to across restarts).
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    /// Its data directory (the sqlite database is [`Tansu::database`] in it).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Kills the broker with SIGKILL (no clean shutdown) and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("killing tansu")?;
            child.wait().context("waiting for tansu")?;
        }
        Ok(())
    }

    /// Starts the broker again on the same port with the same data (after [`Tansu::kill`]).
    pub async fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("tansu is still running");
        }
        self.spawn(&Stop::never(), true).await
    }

    async fn spawn(&mut self, stop: &Stop, again: bool) -> Result<()> {
        let database = self.database();
        if database.exists() {
            header_index::apply(&database)?;
        }
        let port = self.port;
        let log_path = self.log();
        let log = if again {
            std::fs::OpenOptions::new().append(true).open(&log_path)
        } else {
            std::fs::File::create(&log_path)
        };
        let log = log.with_context(|| format!("creating {}", log_path.display()))?;
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(&self.exe);
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ]);
        cmd.args(["--storage-engine", &format!("sqlite://{DATABASE_FILE}")]);
        let rust_log = std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into());
        cmd.env("RUST_LOG", rust_log)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        // Own process group: a terminal Ctrl-C must not kill it before the services stop.
        cmd.stdout(log.try_clone()?).stderr(log).process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        self.child = Some(child);
        let child = self.child.as_mut().expect("just set");
        let ready = wait_for_port(port, Duration::from_secs(30), || {
            match child.try_wait()? {
                Some(status) => bail!("tansu exited early ({status})"),
                None => Ok(()),
            }
        });
        if let Err(e) = stop.guard(ready).await {
            bail!(
                "tansu did not start: {e:#}\nlast lines of {}:\n{}",
                log_path.display(),
                tail(&log_path, 40)
            );
        }
        Ok(())
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(None) = child.try_wait() {
                say!("stopping tansu");
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// The sqlite file, relative to the broker's working directory.
const DATABASE_FILE: &str = "tansu.db";

/// A workaround for a defect of tansu 0.6's sqlite engine, applied to every broker devenv
/// starts: its `header` table has no index, so fetching a record's headers scans every header
/// ever stored and fetches slow down as the log grows (measured with two headers per event: a
/// steady 50 orders/s went from saga p50 0.6 s to 80 s within 2 minutes; with this index it
/// ran flat, and the broker's CPU fell from ~95% to ~32% of a core; shared/BROKER.md). Nothing
/// in the services depends on it; Apache Kafka needs nothing of the kind.
pub mod header_index {
    use anyhow::{Context, Result};
    use rusqlite::{Connection, OpenFlags};
    use std::path::Path;

    /// The index tansu's `header_fetch.sql` needs: it looks headers up by (topition, offset_id).
    pub const DDL: &str =
        "create index if not exists header_topition_offset on header (topition, offset_id)";

    /// Whether tansu has created its `header` table in `database` yet.
    pub fn schema_exists(database: &Path) -> Result<bool> {
        if !database.exists() {
            return Ok(false);
        }
        let connection = Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", database.display()))?;
        let tables: i64 = connection
            .query_row(
                "select count(*) from sqlite_master where type = 'table' and name = 'header'",
                [],
                |row| row.get(0),
            )
            .context("reading the broker's schema")?;
        Ok(tables == 1)
    }

    /// Creates the index (idempotently) in `database`, which must hold tansu's schema and
    /// must not be open in a running broker.
    pub fn apply(database: &Path) -> Result<()> {
        let connection = Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .with_context(|| format!("opening {}", database.display()))?;
        connection
            .execute(DDL, [])
            .with_context(|| format!("indexing the header table of {}", database.display()))?;
        Ok(())
    }

    /// Whether `database` has the index.
    pub fn is_applied(database: &Path) -> Result<bool> {
        let connection = Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", database.display()))?;
        let indexes: i64 = connection.query_row(
            "select count(*) from sqlite_master where type = 'index' and name = 'header_topition_offset' and tbl_name = 'header'",
            [],
            |row| row.get(0),
        )?;
        Ok(indexes == 1)
    }
}

fn find_tansu() -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    find_on_path("tansu").or_else(|| Some(cargo_home?.join("bin/tansu")).filter(|p| p.is_file()))
}

async fn install_tansu(stop: &Stop) -> Result<PathBuf> {
    say!(
        "tansu, the Kafka-protocol broker used when KAFKA_BROKERS is unset, is not installed; \
         installing it with `cargo install tansu --locked --features libsql` \
         (15-20 minutes the first time, cached afterwards)..."
    );
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["install", "tansu", "--locked", "--features", "libsql"]);
    run(cmd, "cargo install tansu", None, stop).await?;
    find_tansu()
        .context("`cargo install tansu` succeeded but tansu is not in $CARGO_HOME/bin or PATH")
}
