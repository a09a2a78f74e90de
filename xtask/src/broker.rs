//! The Kafka broker: the one from KAFKA_BROKERS, or a private tansu killed on drop.

use crate::process::{find_on_path, pick_port, run, tail, wait_for_port, Stop, TempDir};
use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Broker {
    /// Bootstrap servers, e.g. `127.0.0.1:9092`.
    pub address: String,
    tansu: Option<Tansu>,
}

struct Tansu {
    child: Child,
    dir: TempDir,
}

impl Broker {
    pub async fn start(stop: &Stop, preferred_port: Option<u16>) -> Result<Self> {
        if let Ok(address) = std::env::var("KAFKA_BROKERS") {
            eprintln!("xtask: using the Kafka broker from KAFKA_BROKERS ({address})");
            return Ok(Self {
                address,
                tansu: None,
            });
        }
        let exe = match find_tansu() {
            Some(exe) => exe,
            None => install_tansu(stop).await?,
        };
        let dir = TempDir::new("tansu")?;
        let port = pick_port(preferred_port)?;
        let log_path = dir.path().join("tansu.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        eprintln!(
            "xtask: starting tansu on 127.0.0.1:{port} (data and log in {})",
            dir.path().display()
        );
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(&exe);
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
            .current_dir(dir.path())
            .stdin(Stdio::null());
        // Own process group: a terminal Ctrl-C must not kill it before the services stop.
        cmd.stdout(log.try_clone()?).stderr(log).process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let mut tansu = Tansu { child, dir };
        let ready = wait_for_port(port, Duration::from_secs(30), || {
            match tansu.child.try_wait()? {
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
        Ok(Self {
            address: format!("127.0.0.1:{port}"),
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

impl Tansu {
    fn log(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            eprintln!("xtask: stopping tansu");
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn find_tansu() -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    find_on_path("tansu").or_else(|| Some(cargo_home?.join("bin/tansu")).filter(|p| p.is_file()))
}

async fn install_tansu(stop: &Stop) -> Result<PathBuf> {
    eprintln!(
        "xtask: tansu, the Kafka-protocol broker used when KAFKA_BROKERS is unset, is not installed; \
         installing it with `cargo install tansu --locked --features libsql` \
         (15-20 minutes the first time, cached afterwards)..."
    );
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["install", "tansu", "--locked", "--features", "libsql"]);
    run(cmd, "cargo install tansu", None, stop).await?;
    find_tansu()
        .context("`cargo install tansu` succeeded but tansu is not in $CARGO_HOME/bin or PATH")
}
