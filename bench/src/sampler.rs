//! CPU time and memory of the processes under test, read from /proc once a second: a single
//! process (a service, the broker, the bench itself) or a whole process tree (PostgreSQL's
//! postmaster and its backends).

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The CPU fields of `/proc/<pid>/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub ppid: u32,
    pub utime: u64,
    pub stime: u64,
    /// CPU of children that exited and were waited for.
    pub cutime: u64,
    pub cstime: u64,
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may hold
/// spaces and parentheses itself, so fields are counted from the last `)`.
pub fn parse_stat(line: &str) -> Option<ProcStat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let pid = line[..open].trim().parse().ok()?;
    // Fields from 3 (state) on.
    let rest: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { rest.get(n - 3)?.parse().ok() };
    Some(ProcStat {
        pid,
        ppid: u32::try_from(field(4)?).ok()?,
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
    })
}

/// Memory lines of `/proc/<pid>/status`, in kB (0 when absent, e.g. for kernel threads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcMem {
    pub rss_kb: u64,
    pub hwm_kb: u64,
    pub anon_kb: u64,
    pub file_kb: u64,
    pub shmem_kb: u64,
}

pub fn parse_status(text: &str) -> ProcMem {
    let mut mem = ProcMem::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let kb = || -> u64 {
            value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        match key {
            "VmRSS" => mem.rss_kb = kb(),
            "VmHWM" => mem.hwm_kb = kb(),
            "RssAnon" => mem.anon_kb = kb(),
            "RssFile" => mem.file_kb = kb(),
            "RssShmem" => mem.shmem_kb = kb(),
            _ => {}
        }
    }
    mem
}

/// The pids in the tree rooted at `root` (itself included), given every process's parent.
pub fn tree(root: u32, parents: &HashMap<u32, u32>) -> Vec<u32> {
    let mut members = vec![root];
    let mut i = 0;
    while i < members.len() {
        let parent = members[i];
        members.extend(
            parents
                .iter()
                .filter(|&(&pid, &ppid)| ppid == parent && pid != parent)
                .map(|(&pid, _)| pid),
        );
        i += 1;
    }
    members
}

/// What is measured under one name.
#[derive(Debug, Clone)]
pub enum Target {
    /// One process (its threads included).
    Process(u32),
    /// A process and all its descendants: CPU of the live ones plus what the root reaped;
    /// memory with shared pages counted once (sum of anonymous RSS, plus the largest
    /// file-backed and shared-memory RSS of any member: PostgreSQL's shared buffers).
    Tree(u32),
    /// Not measurable here (e.g. a server on another machine).
    Unknown,
}

#[derive(Debug, Clone, Copy)]
struct Reading {
    cpu_ticks: u64,
    rss_kb: u64,
}

fn read_file(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn read_process(pid: u32) -> Option<Reading> {
    let stat = parse_stat(&read_file(&format!("/proc/{pid}/stat"))?)?;
    let mem = parse_status(&read_file(&format!("/proc/{pid}/status"))?);
    Some(Reading {
        cpu_ticks: stat.utime + stat.stime,
        rss_kb: mem.rss_kb,
    })
}

fn read_tree(root: u32) -> Option<Reading> {
    let root_stat = parse_stat(&read_file(&format!("/proc/{root}/stat"))?)?;
    let mut stats = HashMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(stat) = read_file(&format!("/proc/{pid}/stat")).and_then(|l| parse_stat(&l)) {
            stats.insert(pid, stat);
        }
    }
    let parents: HashMap<u32, u32> = stats.iter().map(|(&pid, s)| (pid, s.ppid)).collect();
    let mut cpu_ticks = root_stat.cutime + root_stat.cstime;
    let (mut anon, mut shared) = (0, 0);
    for pid in tree(root, &parents) {
        let Some(stat) = stats.get(&pid) else {
            continue;
        };
        cpu_ticks += stat.utime + stat.stime;
        if let Some(status) = read_file(&format!("/proc/{pid}/status")) {
            let mem = parse_status(&status);
            anon += mem.anon_kb;
            shared = u64::max(shared, mem.file_kb + mem.shmem_kb);
        }
    }
    Some(Reading {
        cpu_ticks,
        rss_kb: anon + shared,
    })
}

fn read(target: &Target) -> Option<Reading> {
    match *target {
        Target::Process(pid) => read_process(pid),
        Target::Tree(root) => read_tree(root),
        Target::Unknown => None,
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we know of).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|&t: &f64| t > 0.0)
        .unwrap_or(100.0)
}

/// Resource use of one target over a window.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub name: String,
    pub cpu_seconds: Option<f64>,
    /// CPU seconds per wall second, in % of one core.
    pub cpu_percent: Option<f64>,
    /// Largest RSS seen in the window (sampled every second), in MiB.
    pub peak_rss_mib: Option<f64>,
}

struct State {
    names: Vec<String>,
    targets: Vec<Target>,
    /// Highest RSS per target since the last mark.
    peaks: Vec<Option<u64>>,
}

impl State {
    fn sample(&mut self) -> Vec<Option<Reading>> {
        let readings: Vec<Option<Reading>> = self.targets.iter().map(read).collect();
        for (peak, reading) in self.peaks.iter_mut().zip(&readings) {
            if let Some(reading) = reading {
                *peak = Some(peak.unwrap_or(0).max(reading.rss_kb));
            }
        }
        readings
    }
}

/// The start of a measurement window.
pub struct Mark {
    at: Instant,
    readings: Vec<Option<Reading>>,
}

/// Samples every target once a second in the background (for peak memory); CPU is the
/// difference between the readings at the ends of a window.
pub struct Sampler {
    state: Arc<Mutex<State>>,
    ticks: f64,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(targets: Vec<(String, Target)>) -> Self {
        let (names, targets): (Vec<_>, Vec<_>) = targets.into_iter().unzip();
        let state = Arc::new(Mutex::new(State {
            peaks: vec![None; names.len()],
            names,
            targets,
        }));
        let background = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(1));
            loop {
                interval.tick().await;
                let state = Arc::clone(&background);
                let _ = tokio::task::spawn_blocking(move || {
                    state.lock().expect("sampler state").sample();
                })
                .await;
            }
        });
        Self {
            state,
            ticks: clock_ticks(),
            task,
        }
    }

    /// Starts a window: reads every target now and forgets the peaks so far.
    pub fn mark(&self) -> Mark {
        let mut state = self.state.lock().expect("sampler state");
        state.peaks.iter_mut().for_each(|p| *p = None);
        Mark {
            at: Instant::now(),
            readings: state.sample(),
        }
    }

    /// Resource use of every target from `mark` to now.
    pub fn since(&self, mark: &Mark) -> Vec<Usage> {
        let mut state = self.state.lock().expect("sampler state");
        let now = state.sample();
        let wall = mark.at.elapsed().as_secs_f64();
        state
            .names
            .iter()
            .zip(&mark.readings)
            .zip(now)
            .zip(&state.peaks)
            .map(|(((name, start), end), peak)| {
                let cpu_seconds = match (start, end) {
                    (Some(start), Some(end)) => {
                        Some(end.cpu_ticks.saturating_sub(start.cpu_ticks) as f64 / self.ticks)
                    }
                    _ => None,
                };
                Usage {
                    name: name.clone(),
                    cpu_seconds,
                    cpu_percent: cpu_seconds.filter(|_| wall > 0.0).map(|s| s / wall * 100.0),
                    peak_rss_mib: peak.map(|kb| kb as f64 / 1024.0),
                }
            })
            .collect()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_an_awkward_command_name() {
        let line = "4242 (postgres: a (b) c) S 4200 4200 4200 0 -1 4194560 1234 0 0 0 \
                    150 37 12 3 20 0 1 0 123456 234567890 4567 18446744073709551615 1 1 0 0 0 0 \
                    0 4096 1 0 0 0 17 1 0 0 0 0 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                pid: 4242,
                ppid: 4200,
                utime: 150,
                stime: 37,
                cutime: 12,
                cstime: 3,
            }
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn parses_the_memory_lines_of_status() {
        let text = "Name:\tpostgres\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n\
                    RssAnon:\t    2048 kB\nRssFile:\t    4096 kB\nRssShmem:\t    4096 kB\n";
        let mem = parse_status(text);
        assert_eq!(mem.rss_kb, 10240);
        assert_eq!(mem.hwm_kb, 20480);
        assert_eq!(mem.anon_kb, 2048);
        assert_eq!(mem.file_kb, 4096);
        assert_eq!(mem.shmem_kb, 4096);
        assert_eq!(parse_status("Name:\tkthreadd\n"), ProcMem::default());
    }

    #[test]
    fn a_tree_holds_every_descendant() {
        let parents = HashMap::from([(1, 0), (10, 1), (11, 10), (12, 10), (13, 12), (20, 1)]);
        let mut members = tree(10, &parents);
        members.sort_unstable();
        assert_eq!(members, [10, 11, 12, 13]);
        assert_eq!(tree(99, &parents), [99]);
    }

    #[test]
    fn reads_this_process() {
        let reading = read(&Target::Process(std::process::id())).unwrap();
        assert!(reading.rss_kb > 0);
        assert!(read(&Target::Tree(std::process::id())).is_some());
        assert!(read(&Target::Unknown).is_none());
    }
}
