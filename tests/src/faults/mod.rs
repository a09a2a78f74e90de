//! The fault-injection harness (`tests/tests/faults/`, one module per case, each run by
//! [`case`]): each case gets its own private PostgreSQL cluster and tansu broker (through
//! `devenv`, so it can kill and restart them), fresh databases, a unique topic prefix, and runs
//! the four services as separate OS processes (the binaries next to the test binary) that it
//! can SIGKILL, SIGTERM and restart. A seeded workload places orders over HTTP while a fault
//! happens; afterwards the case waits until the system is quiet and checks the invariants
//! directly in every service's database and over HTTP (see [`check`]). Which services exist
//! and what each consumes: [`topology`].
//!
//! Environment: `FAULTS_SEED` (the workload's seed; printed), `FAULTS_SOAK=1` (five times the
//! orders and a longer fault period), `FAULTS_ORDERS` (orders per case), `FAULTS_KEEP_LOGS=1`
//! (keep every case's log directory, not only a failed one's).

pub mod case;
pub mod check;
pub mod kafka;
pub mod system;
pub mod topology;
pub mod workload;

use std::time::Duration;

pub use case::{Case, Clock, Faults};
pub use check::{Expectations, Report};
pub use system::{FaultSystem, ServiceProcess};
pub use topology::{saga_topics, Svc};
pub use workload::{Catalog, Outcome, PlannedOrder, Workload};

/// A small deterministic PRNG (SplitMix64): the workload and the fault schedule of a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `low..=high`.
    pub fn between(&mut self, low: i64, high: i64) -> i64 {
        low + self.below((high - low + 1) as u64) as i64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// A duration uniform in `low..=high` milliseconds.
    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.between(low as i64, high as i64) as u64)
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// The seed of a case: `FAULTS_SEED` if set, else a fixed value derived from the case name (so
/// a run is reproducible by default, as far as the workload goes; fault timing is not).
pub fn seed_for(case: &str) -> u64 {
    if let Some(seed) = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return seed;
    }
    // FNV-1a of the name.
    case.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    }) % 1_000_000
}

/// Whether `FAULTS_SOAK` asks for the long mode.
pub fn soak() -> bool {
    std::env::var("FAULTS_SOAK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Orders per case: `FAULTS_ORDERS`, else `default` (five times as many with `FAULTS_SOAK`).
pub fn orders_per_case(default: usize) -> usize {
    if let Some(n) = std::env::var("FAULTS_ORDERS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return n;
    }
    if soak() {
        default * 5
    } else {
        default
    }
}
