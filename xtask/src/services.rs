//! Builds, runs and supervises the services of `shared::topology`, prefixing their output with
//! their names.

use anyhow::{bail, ensure, Context, Result};
use devenv::process::{port_is_free, run, stop_gracefully};
use devenv::Stop;
use shared::topology::{Service, SERVICES};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// ANSI colors of the output prefixes, handed out in `SERVICES` order.
const COLORS: [u8; 6] = [36, 35, 33, 32, 34, 31];

/// The HTTP port of `service` (from e.g. ORDER_HTTP_PORT, else its default), checked to be free.
pub fn port(service: &Service) -> Result<u16> {
    let var = format!("{}_HTTP_PORT", service.name.to_uppercase());
    let port = match std::env::var(&var) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{var}={v} is not a port number"))?,
        Err(_) => service.http_port,
    };
    ensure!(
        port_is_free(port),
        "port {port} for {} is in use (set {var})",
        service.name
    );
    Ok(port)
}

pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Builds the service binaries and returns the directory holding them.
pub async fn build(stop: &Stop) -> Result<PathBuf> {
    eprintln!("xtask: building the services");
    let mut cmd = cargo();
    cmd.args(["build", "--bins"]);
    for service in SERVICES {
        cmd.arg("-p").arg(service.package);
    }
    run(cmd, "cargo build", None, stop).await?;
    Ok(target_dir().join("debug"))
}

/// Builds the services and the benchmark in release and returns the directory holding
/// their binaries.
pub async fn build_release(stop: &Stop) -> Result<PathBuf> {
    eprintln!("xtask: building the services and the benchmark (release)");
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--locked"]);
    for service in SERVICES {
        cmd.arg("-p").arg(service.package);
    }
    cmd.args(["-p", BENCH_PACKAGE]);
    run(cmd, "cargo build --release", None, stop).await?;
    Ok(target_dir().join("release"))
}

/// Package and binary name of the benchmark.
pub const BENCH_PACKAGE: &str = "sagashop-bench";

/// The cargo target directory (CARGO_TARGET_DIR, relative to the workspace root, or `target`).
fn target_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    workspace_root().join(target)
}

struct Proc {
    service: &'static Service,
    port: u16,
    child: tokio::process::Child,
    output: Vec<JoinHandle<()>>,
}

pub struct Running(Vec<Proc>);

impl Running {
    /// Starts every service on its port; `env` gives each one's extra environment.
    pub fn spawn(
        bin_dir: &Path,
        ports: &[u16],
        env: impl Fn(&Service) -> Vec<(&'static str, String)>,
    ) -> Result<Self> {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        let mut procs = Vec::new();
        for (index, (service, &port)) in SERVICES.iter().zip(ports).enumerate() {
            let exe = bin_dir.join(service.package);
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.envs(env(service))
                .env("HTTP_PORT", port.to_string())
                .env("RUST_LOG", &rust_log);
            cmd.current_dir(workspace_root())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            // Own process group: on Ctrl-C xtask stops them in order with SIGTERM.
            cmd.process_group(0).kill_on_drop(true);
            let mut child = cmd
                .spawn()
                .with_context(|| format!("starting {}", exe.display()))?;
            let prefix = match color {
                true => format!(
                    "\x1b[{}m{:<9} |\x1b[0m ",
                    COLORS[index % COLORS.len()],
                    service.name
                ),
                false => format!("{:<9} | ", service.name),
            };
            let output = [
                child.stdout.take().map(|o| forward(o, prefix.clone())),
                child.stderr.take().map(|e| forward(e, prefix)),
            ];
            procs.push(Proc {
                service,
                port,
                child,
                output: output.into_iter().flatten().collect(),
            });
        }
        Ok(Self(procs))
    }

    pub fn ports(&self) -> Vec<(&'static str, u16)> {
        self.0.iter().map(|p| (p.service.name, p.port)).collect()
    }

    /// Resolves when the first service exits.
    pub async fn first_exit(&mut self) -> (&'static str, ExitStatus) {
        loop {
            for p in &mut self.0 {
                if let Ok(Some(status)) = p.child.try_wait() {
                    return (p.service.name, status);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM to all, then SIGKILL to those still running after 10 s.
    pub async fn shutdown(mut self) {
        eprintln!("xtask: stopping the services");
        let children = self
            .0
            .iter_mut()
            .map(|p| (p.service.name, &mut p.child))
            .collect();
        for name in stop_gracefully(children, Duration::from_secs(10)).await {
            eprintln!("xtask: {name} did not stop within 10 s; killed it");
        }
        for p in &mut self.0 {
            for handle in p.output.drain(..) {
                let _ = tokio::time::timeout(Duration::from_secs(1), handle).await;
            }
        }
    }
}

/// Copies `reader` line by line to stdout, each line prefixed.
fn forward(reader: impl AsyncRead + Unpin + Send + 'static, prefix: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line).await, Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line);
            let _ = writeln!(
                std::io::stdout().lock(),
                "{prefix}{}",
                text.trim_end_matches(['\r', '\n'])
            );
            line.clear();
        }
    })
}

/// Waits (up to 120 s) until every service answers 200 on GET /health/ready.
pub async fn wait_ready(ports: Vec<(&'static str, u16)>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pending = ports;
    loop {
        let mut still = Vec::new();
        for (name, port) in pending {
            if !ready(port).await {
                still.push((name, port));
            }
        }
        pending = still;
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let names: Vec<_> = pending.iter().map(|(name, _)| *name).collect();
            bail!(
                "not ready after 120 s (GET /health/ready): {}",
                names.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn ready(port: u16) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /health/ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let status = response.split(|&b| b == b' ').nth(1).map(<[u8]>::to_vec);
        Ok::<_, std::io::Error>(status.as_deref() == Some(b"200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(true))
    )
}
