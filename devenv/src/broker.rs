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
        Ok(tansu)
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

    /// Its data directory (the sqlite database is `tansu.db` in it).
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
        cmd.args(["--storage-engine", "sqlite://tansu.db"]);
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
