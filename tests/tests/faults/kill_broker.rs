//! `kill_broker`: tansu killed with SIGKILL and started again while orders flow.

use e2e::faults::system::Options;
use e2e::faults::{Case, Faults};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted() {
    Case::start("kill_broker", 200, Options::default(), |_| {})
        .await
        .run_and_check(kill_broker_repeatedly)
        .await;
}

/// Every 4-7 s tansu is killed and started again 0.5-3 s later on the same port and data.
/// Returns the kills.
async fn kill_broker_repeatedly(f: Faults<'_>) -> u64 {
    let Faults {
        system, rng, clock, ..
    } = f;
    let mut faults = 0u64;
    while !clock.pause(rng.millis(4_000, 7_000)).await {
        let down = rng.millis(500, 3_000);
        clock.log(format_args!(
            "SIGKILL tansu (pid {}), restart in {down:?}",
            system.broker.pid().unwrap_or(0)
        ));
        system.broker.kill().expect("killing tansu");
        faults += 1;
        tokio::time::sleep(down).await;
        system
            .broker
            .start_again()
            .await
            .unwrap_or_else(|e| panic!("[{}] restarting tansu: {e:#}", clock.case));
        clock.log("tansu accepts connections again");
    }
    faults
}
