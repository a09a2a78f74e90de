//! Helpers for child processes, stop requests, ports, temp dirs and log files.

use anyhow::{bail, ensure, Context, Result};
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// A stop request (e.g. Ctrl-C): everything long-running races against it. Whoever owns the
/// sending half decides what sets it; [`Stop::never`] is never set.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Set when `true` is sent on the channel `receiver` belongs to.
    pub fn from_watch(receiver: watch::Receiver<bool>) -> Self {
        Self(receiver)
    }

    /// Set once Ctrl-C (SIGINT) or SIGTERM arrives (printing `<label>: stopping...`). Needs a
    /// Tokio runtime.
    pub fn on_signals() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            crate::say!("stopping...");
            let _ = tx.send(true);
        });
        Ok(Self(rx))
    }

    /// A stop that never comes (tests).
    pub fn never() -> Self {
        let (_sender, receiver) = watch::channel(false);
        Self(receiver)
    }

    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    pub async fn wait(&self) {
        if self.0.clone().wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Runs `fut` unless a stop signal arrives first (then `fut` is dropped, killing its children).
    pub async fn guard<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::select! { result = fut => result, _ = self.wait() => bail!("interrupted") }
    }
}

/// Runs `cmd` to success, its output inherited or appended to `log` (shown on failure).
pub async fn run(mut cmd: Command, what: &str, log: Option<&Path>, stop: &Stop) -> Result<()> {
    if let Some(log) = log {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log);
        let file = file.with_context(|| format!("opening {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
    }
    let status = run_status(cmd, what, stop).await?;
    ensure!(!stop.is_set(), "interrupted");
    let log_tail = log
        .map(|log| format!(":\n{}", tail(log, 40)))
        .unwrap_or_default();
    ensure!(status.success(), "{what} failed ({status}){log_tail}");
    Ok(())
}

/// Runs `cmd` with inherited output; on a stop signal it gets SIGTERM (SIGKILL after 10 s).
pub async fn run_status(cmd: Command, what: &str, stop: &Stop) -> Result<ExitStatus> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut cmd = tokio::process::Command::from(cmd);
    let spawned = cmd.kill_on_drop(true).spawn();
    let mut child = spawned.with_context(|| format!("running {what} ({program})"))?;
    let status = tokio::select! {
        status = child.wait() => status,
        _ = stop.wait() => {
            if let Some(pid) = child.id() {
                terminate(pid);
            }
            match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            }
        }
    };
    status.with_context(|| format!("waiting for {what}"))
}

/// Sends SIGTERM to `pid` with the `kill` command.
pub fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// SIGTERM to every child still running, then SIGKILL to each one still running once `grace`
/// has passed; returns the names of those it had to kill.
pub async fn stop_gracefully<'a>(
    children: Vec<(&'a str, &'a mut tokio::process::Child)>,
    grace: Duration,
) -> Vec<&'a str> {
    let mut children = children;
    for (_, child) in &mut children {
        if let (Ok(None), Some(pid)) = (child.try_wait(), child.id()) {
            terminate(pid);
        }
    }
    let deadline = tokio::time::Instant::now() + grace;
    let mut killed = Vec::new();
    for (name, child) in children {
        if tokio::time::timeout_at(deadline, child.wait())
            .await
            .is_err()
        {
            let _ = child.start_kill();
            let _ = child.wait().await;
            killed.push(name);
        }
    }
    killed
}

/// The trimmed stdout of `cmd` if it runs and succeeds.
pub fn stdout_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    out.status.success().then_some(text)
}

/// `preferred` if it is free on 127.0.0.1, else a port the kernel picks.
pub fn pick_port(preferred: Option<u16>) -> Result<u16> {
    if let Some(port) = preferred.filter(|&p| port_is_free(p)) {
        return Ok(port);
    }
    // Below the kernel's ephemeral range (32768-60999 on Linux), which the system's outgoing
    // connections draw from: a port picked there (as binding port 0 does) was seen taken by a
    // broker or database connection before the service it was given to could bind it. Each
    // call of a process takes the next port of the range, from a random start.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(u32::MAX);
    let span = u32::from(PICK_TO - PICK_FROM);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos())
        ^ std::process::id();
    let _ = NEXT.compare_exchange(
        u32::MAX,
        seed % span,
        std::sync::atomic::Ordering::SeqCst,
        std::sync::atomic::Ordering::SeqCst,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % span;
        let port = PICK_FROM + offset as u16;
        if port_is_free(port) {
            return Ok(port);
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").context("looking for a free TCP port")?;
    Ok(listener.local_addr()?.port())
}

/// The ports [`pick_port`] hands out: under the ephemeral range.
const PICK_FROM: u16 = 20_000;
const PICK_TO: u16 = 32_000;

pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Waits until 127.0.0.1:`port` accepts connections; `check` fails early (e.g. process died).
pub async fn wait_for_port(
    port: u16,
    timeout: Duration,
    mut check: impl FnMut() -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        check()?;
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "nothing accepts connections on 127.0.0.1:{port} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last `n` lines of a (log) file, or a note that it cannot be read.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A fresh directory under the system temp dir, deleted on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Result<Self> {
        loop {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let name = format!("sagashop-{what}-{}-{nanos}", std::process::id());
            let path = std::env::temp_dir().join(name);
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Self(path)),
                // Another one of this process, made in the same nanosecond: take the next.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
