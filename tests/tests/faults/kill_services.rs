//! `kill_services`: services killed with SIGKILL and restarted while orders flow.

use std::time::Duration;

use e2e::faults::system::{Options, RESTART_AFTER_SIGKILL};
use e2e::faults::{Case, Faults, Rng, Svc};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_killed_with_sigkill_and_restarted() {
    Case::start("kill_services", 200, Options::default(), |_| {})
        .await
        .run_and_check(kill_in_turn)
        .await;
}

/// Every 2-5 s a running service is killed; each comes back after 7-9 s (longer than its
/// consumer session: RESTART_AFTER_SIGKILL), so up to three are down at once. Each service gets
/// its turn in a shuffled round-robin. Returns the kills.
async fn kill_in_turn(f: Faults<'_>) -> u64 {
    let Faults {
        system, rng, clock, ..
    } = f;
    let mut faults = 0u64;
    let mut queue = Vec::new();
    let mut down: Vec<(Svc, Instant)> = Vec::new();
    let mut next_kill = Instant::now() + rng.millis(2_000, 4_000);
    loop {
        let now = Instant::now();
        for (svc, _) in down.iter().filter(|(_, at)| *at <= now) {
            let process = system.services.get_mut(svc).expect("a service");
            process.start().expect("restarting");
            clock.log(format_args!("{} restarted", process.label()));
        }
        down.retain(|(_, at)| *at > now);
        if clock.workload_done() {
            if down.is_empty() {
                break;
            }
        } else if now >= next_kill && down.len() < 3 {
            let svc = loop {
                let svc = next_service(rng, &mut queue);
                if !down.iter().any(|(d, _)| *d == svc) {
                    break svc;
                }
            };
            let pause = RESTART_AFTER_SIGKILL + rng.millis(0, 2_000);
            let process = system.services.get_mut(&svc).expect("a service");
            clock.log(format_args!(
                "SIGKILL {} (pid {:?}), restart in {pause:?}",
                process.label(),
                process.pid().unwrap_or(0)
            ));
            process.kill().await.expect("SIGKILL");
            faults += 1;
            down.push((svc, Instant::now() + pause));
            next_kill = Instant::now() + rng.millis(2_000, 5_000);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    system
        .wait_ready(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("[{}] {e:#}", clock.case));
    faults
}

/// The next service of a shuffled round-robin (every service gets its turn).
fn next_service(rng: &mut Rng, queue: &mut Vec<Svc>) -> Svc {
    if queue.is_empty() {
        *queue = Svc::all().collect();
        rng.shuffle(queue);
    }
    queue.pop().expect("refilled")
}
