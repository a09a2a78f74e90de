//! `shutdown`: with the broker or PostgreSQL down (killed, or frozen with SIGSTOP as a network
//! partition would leave it: connections open, nothing answered), every service exits within
//! 5 s of SIGTERM (xtask and orchestrators kill it a few seconds later), with work in flight:
//! orders the relay cannot publish, or an HTTP request waiting for the database.

use std::time::Duration;

use e2e::faults::system::Options;
use e2e::faults::{seed_for, FaultSystem, Svc};
use serde_json::json;
use tokio::time::Instant;

/// What the services promise: exit within this long of SIGTERM, whatever is down.
const BUDGET: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exits_promptly_with_the_broker_down() {
    let case = "shutdown_broker_down";
    let mut system = FaultSystem::start(case, seed_for(case), Options::default())
        .await
        .unwrap_or_else(|e| panic!("[{case}] starting the system: {e:#}"));
    system.broker.kill().expect("killing tansu");
    // Accepted orders whose events the relay cannot deliver.
    for _ in 0..5 {
        place_order(&system).await;
    }
    // Long enough for every client to notice the broker is gone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    terminate_all_within_budget(&mut system, "broker down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exits_promptly_with_the_broker_frozen() {
    let case = "shutdown_broker_frozen";
    let mut system = FaultSystem::start(case, seed_for(case), Options::default())
        .await
        .unwrap_or_else(|e| panic!("[{case}] starting the system: {e:#}"));
    let frozen = Frozen::new(system.broker.pid().expect("tansu runs"));
    for _ in 0..5 {
        place_order(&system).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    terminate_all_within_budget(&mut system, "broker frozen").await;
    drop(frozen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exits_promptly_with_postgres_frozen() {
    let case = "shutdown_postgres_frozen";
    let mut system = FaultSystem::start(case, seed_for(case), Options::default())
        .await
        .unwrap_or_else(|e| panic!("[{case}] starting the system: {e:#}"));
    let frozen = Frozen::new(system.pg.postmaster_pid().expect("PostgreSQL runs"));
    let in_flight = request_in_flight(&system);
    tokio::time::sleep(Duration::from_secs(2)).await;
    terminate_all_within_budget(&mut system, "PostgreSQL frozen").await;
    in_flight.abort();
    drop(frozen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exits_promptly_with_postgres_down() {
    let case = "shutdown_postgres_down";
    let mut system = FaultSystem::start(case, seed_for(case), Options::default())
        .await
        .unwrap_or_else(|e| panic!("[{case}] starting the system: {e:#}"));
    system
        .pg
        .stop_immediate()
        .await
        .expect("stopping PostgreSQL");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let in_flight = request_in_flight(&system);
    tokio::time::sleep(Duration::from_millis(100)).await;
    terminate_all_within_budget(&mut system, "PostgreSQL down").await;
    in_flight.abort();
}

/// An order request, sent and not awaited: it waits for the database when the signal comes.
fn request_in_flight(system: &FaultSystem) -> tokio::task::JoinHandle<()> {
    let http = system.http.clone();
    let url = format!("{}/orders", system.url(Svc::ORDER));
    tokio::spawn(async move {
        let _ = http.post(url).json(&order_body()).send().await;
    })
}

/// A process and its children stopped with SIGSTOP (alive, holding its connections, answering
/// nothing); continued on drop, so the harness can stop it normally.
struct Frozen(Vec<String>);

impl Frozen {
    fn new(pid: u32) -> Self {
        let children = std::process::Command::new("pgrep")
            .args(["-P", &pid.to_string()])
            .output()
            .expect("running pgrep");
        let mut pids = vec![pid.to_string()];
        pids.extend(
            String::from_utf8_lossy(&children.stdout)
                .split_whitespace()
                .map(str::to_owned),
        );
        signal("-STOP", &pids);
        Self(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", &self.0);
    }
}

fn signal(which: &str, pids: &[String]) {
    let status = std::process::Command::new("kill")
        .arg(which)
        .args(pids)
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {which} {pids:?} failed");
}

fn order_body() -> serde_json::Value {
    json!({
        "customer_id": "shutdown",
        "items": [{"sku": "nothing", "quantity": 1}],
        "shipping_address": {"country": "FR"},
    })
}

async fn place_order(system: &FaultSystem) {
    let response = system
        .http
        .post(format!("{}/orders", system.url(Svc::ORDER)))
        .json(&order_body())
        .send()
        .await
        .expect("placing an order");
    assert_eq!(response.status().as_u16(), 202, "the order is accepted");
}

/// SIGTERM to every service at once; each must exit 0 within [`BUDGET`] (measured up to 20 s,
/// so a failure says how long it took).
async fn terminate_all_within_budget(system: &mut FaultSystem, what: &str) {
    let exits = futures::future::join_all(system.services.values_mut().map(|process| async {
        let started = Instant::now();
        let status = process.terminate(Duration::from_secs(20)).await;
        (process.label(), started.elapsed(), status)
    }))
    .await;
    let mut problems = Vec::new();
    for (label, took, status) in exits {
        println!("faults: [shutdown] {what}: {label} exited after {took:.1?}: {status:?}");
        match status {
            Ok(status) if status.success() && took <= BUDGET => {}
            Ok(status) => problems.push(format!("{label}: {status} after {took:.1?}")),
            Err(error) => problems.push(format!("{label}: {error:#}")),
        }
    }
    assert!(
        problems.is_empty(),
        "with {what}, not every service exited 0 within {BUDGET:?} of SIGTERM: {problems:?}"
    );
}
