//! `quick_restart`: a consumer SIGKILLed and restarted within its session timeout (ignored: it
//! measures the broker, see below).

use std::time::Duration;

use e2e::faults::case::log;
use e2e::faults::system::Options;
use e2e::faults::{kafka, Case, Svc};
use tokio::time::Instant;

/// tansu 0.6 cannot do this (RELIABILITY.md): a consumer SIGKILLed and restarted within its
/// session timeout joins a group whose leader is still the dead member, and the group never
/// forms again. Apache Kafka expires the dead member after the session timeout. Kept to
/// re-measure the broker: `cargo xtask test -p e2e --test faults -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fails on tansu 0.6: a group with a dead leader never forms again"]
async fn consumer_sigkilled_and_restarted_within_its_session_timeout() {
    let Case {
        name: case,
        mut system,
        workload,
        targets,
        ..
    } = Case::start("quick_restart", 20, Options::default(), |_| {}).await;
    let http = system.http.clone();
    let brokers = system.broker.address();
    let group = system.group(Svc::INVENTORY);
    let topics = system.consumed_topics(Svc::INVENTORY);
    let mut first = workload.clone();
    first.orders.truncate(3);
    first.duration = Duration::from_secs(1);
    first.run(&http, &targets).await;
    // A formed, settled group.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let process = system.services.get_mut(&Svc::INVENTORY).expect("inventory");
    process.kill().await.expect("SIGKILL");
    tokio::time::sleep(Duration::from_secs(1)).await;
    process.start().expect("restarting");
    process
        .wait_ready(&http, Duration::from_secs(60))
        .await
        .expect("ready");
    let mut rest = workload.clone();
    rest.orders.drain(..3);
    rest.duration = Duration::from_secs(5);
    let outcome = rest.run(&http, &targets).await;
    let started = Instant::now();
    loop {
        let states = kafka::group_state(&brokers, &group, &topics)
            .await
            .expect("group state");
        if states.iter().all(|s| s.lag() == 0) {
            log(case, started, "the restarted consumer caught up");
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            panic!(
                "{group} consumed nothing for 60 s after its consumer was SIGKILLed and restarted \
                 1 s later ({} orders placed since): {}",
                outcome.accepted.len(),
                states
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
