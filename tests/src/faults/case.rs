//! The life of one fault case, shared by every case in `tests/tests/faults/`: start its system
//! and seeded workload ([`Case::start`]), place the orders while the case's fault loop runs
//! ([`Case::run`]), wait until the system is quiet and check the invariants ([`Case::check`]),
//! and print the summary line ([`Report::finish`]). [`Case::run_and_check`] does all of it for
//! a case whose fault loop only counts the faults it injected.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::check::{settle_and_check, Expectations, Report};
use super::kafka::Duplicator;
use super::system::Options;
use super::workload::{Outcome, Targets, Workload};
use super::{orders_per_case, seed_for, soak, FaultSystem, Rng, Svc};

/// Requests of the workload in flight at most.
pub const CONCURRENCY: usize = 12;

/// Orders are placed over this long (the fault period); five times longer with FAULTS_SOAK.
pub fn fault_period() -> Duration {
    if soak() {
        Duration::from_secs(200)
    } else {
        Duration::from_secs(40)
    }
}

/// A started case: its system with products and accounts created, and its workload.
pub struct Case {
    /// The `case=` of the summary line.
    pub name: &'static str,
    pub system: FaultSystem,
    pub workload: Workload,
    /// The order service instances the workload sends to (the primary; a fault loop may add a
    /// second one).
    pub targets: Targets,
    /// The fault schedule's own stream, derived from the seed.
    pub rng: Rng,
    /// Set once the workload has had every order answered.
    workload_done: AtomicBool,
}

impl Case {
    /// Starts a case: its system, a seeded workload of `default_orders` (see
    /// [`orders_per_case`]) that `adjust` may change, its products and accounts.
    pub async fn start(
        name: &'static str,
        default_orders: usize,
        options: Options,
        adjust: impl FnOnce(&mut Workload),
    ) -> Self {
        let seed = seed_for(name);
        let orders = orders_per_case(default_orders);
        let mut workload = Workload::generate(name, seed, orders, CONCURRENCY, fault_period());
        adjust(&mut workload);
        println!(
            "faults: case={name} seed={seed} orders={orders} concurrency={CONCURRENCY} period={:?} \
             (FAULTS_SEED={seed} replays this workload)",
            workload.duration
        );
        let system = FaultSystem::start(name, seed, options)
            .await
            .unwrap_or_else(|e| panic!("[{name}] starting the system: {e:#}"));
        workload
            .setup(&system)
            .await
            .unwrap_or_else(|e| panic!("[{name}] creating products and accounts: {e:#}"));
        Self {
            name,
            targets: Targets::new(system.url(Svc::ORDER)),
            system,
            workload,
            rng: Rng::new(seed ^ 0xFA17),
            workload_done: AtomicBool::new(false),
        }
    }

    /// Places the workload's orders while `faults` runs; returns the workload's outcome and
    /// what `faults` returned, once both are done (a fault loop ends when
    /// [`Clock::workload_done`] says so, or on a schedule of its own).
    pub async fn run<T>(&mut self, faults: impl AsyncFnOnce(Faults<'_>) -> T) -> (Outcome, T) {
        self.workload_done.store(false, Ordering::SeqCst);
        let (workload, targets, done) = (&self.workload, &self.targets, &self.workload_done);
        let http = self.system.http.clone();
        let clock = Clock {
            case: self.name,
            started: Instant::now(),
            period: workload.duration,
            done,
        };
        let faults = faults(Faults {
            system: &mut self.system,
            rng: &mut self.rng,
            targets,
            http: http.clone(),
            clock,
        });
        tokio::join!(
            async {
                let outcome = workload.run(&http, targets).await;
                done.store(true, Ordering::SeqCst);
                outcome
            },
            faults,
        )
    }

    /// Waits until the system is quiet and checks every invariant (see
    /// [`super::check`]); the case may add its own checks to the report before
    /// [`Report::finish`].
    pub async fn check(&mut self, outcome: &Outcome, expectations: Expectations) -> Report {
        settle_and_check(
            &mut self.system,
            &self.workload,
            outcome,
            None,
            expectations,
        )
        .await
    }

    /// [`Case::check`], also waiting until `duplicator` has copied everything.
    pub async fn check_with_duplicator(
        &mut self,
        outcome: &Outcome,
        duplicator: &mut Duplicator,
        expectations: Expectations,
    ) -> Report {
        settle_and_check(
            &mut self.system,
            &self.workload,
            outcome,
            Some(duplicator),
            expectations,
        )
        .await
    }

    /// The whole case for a fault loop that returns how many faults it injected: the workload
    /// under `faults`, every invariant, the summary line (panics if an invariant broke).
    pub async fn run_and_check(mut self, faults: impl AsyncFnOnce(Faults<'_>) -> u64) {
        let (outcome, faults) = self.run(faults).await;
        let expectations = Expectations {
            faults,
            ..Expectations::default()
        };
        self.check(&outcome, expectations).await.finish();
    }
}

/// What a fault loop works with while the workload runs.
pub struct Faults<'a> {
    pub system: &'a mut FaultSystem,
    /// The fault schedule's stream (seeded, apart from the workload's).
    pub rng: &'a mut Rng,
    /// Where the workload sends its orders.
    pub targets: &'a Targets,
    pub http: reqwest::Client,
    pub clock: Clock<'a>,
}

/// The workload's progress, to pace faults and to log them.
#[derive(Debug, Clone, Copy)]
pub struct Clock<'a> {
    pub case: &'static str,
    /// When the workload started placing orders.
    pub started: Instant,
    /// How long it places orders.
    pub period: Duration,
    done: &'a AtomicBool,
}

impl Clock<'_> {
    /// Whether the workload has had every order answered.
    pub fn workload_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// Sleeps `duration` or until the workload is done; true if it is done.
    pub async fn pause(&self, duration: Duration) -> bool {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            if self.workload_done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100).min(until - Instant::now())).await;
        }
        self.workload_done()
    }

    /// The instant `fraction` of the way through the workload's period.
    pub fn at(&self, fraction: f64) -> Instant {
        self.started + self.period.mul_f64(fraction)
    }

    /// Prints what the fault loop did, with the time since the workload started.
    pub fn log(&self, what: impl Display) {
        log(self.case, self.started, what);
    }
}

/// Prints `faults: [case] t=<seconds since started>s what`.
pub fn log(case: &str, started: Instant, what: impl Display) {
    println!(
        "faults: [{case}] t={:>5.1}s {what}",
        started.elapsed().as_secs_f64()
    );
}
