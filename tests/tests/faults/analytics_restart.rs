//! `analytics_restart`: the query service (views and analytics windows) killed with SIGKILL
//! three times while orders flow, each time restarted once its consumer session expired. Its
//! window state commits with its inbox rows and recorded offsets, so once quiet the windows
//! must equal the recomputation from the order database (`windows_match_orders`): nothing
//! applied twice, nothing dropped.

use std::time::Duration;

use e2e::faults::system::{Options, RESTART_AFTER_SIGKILL};
use e2e::faults::{Case, Faults, Svc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_service_killed_mid_stream_neither_drops_nor_double_counts() {
    Case::start("analytics_restart", 200, Options::default(), |_| {})
        .await
        .run_and_check(kill_query)
        .await;
}

/// SIGKILL at 15%, 45% and 75% of the workload; each restart after RESTART_AFTER_SIGKILL.
async fn kill_query(f: Faults<'_>) -> u64 {
    let Faults { system, clock, .. } = f;
    let mut kills = 0;
    for fraction in [0.15, 0.45, 0.75] {
        tokio::time::sleep_until(clock.at(fraction)).await;
        let process = system
            .services
            .get_mut(&Svc::QUERY)
            .expect("the query service");
        clock.log(format_args!(
            "SIGKILL {} (pid {:?}) mid-stream",
            process.label(),
            process.pid().unwrap_or(0)
        ));
        process.kill().await.expect("SIGKILL");
        kills += 1;
        tokio::time::sleep(RESTART_AFTER_SIGKILL).await;
        process.start().expect("restarting");
        clock.log(format_args!("{} restarted", process.label()));
    }
    system
        .wait_ready(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("[{}] {e:#}", clock.case));
    kills
}
