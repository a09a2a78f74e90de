//! `restart_postgres`: PostgreSQL crashed (`-m immediate`) and recovered while orders flow.

use e2e::faults::system::Options;
use e2e::faults::{Case, Faults};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_immediately() {
    Case::start("restart_postgres", 200, Options::default(), |_| {})
        .await
        .run_and_check(restart_postgres_repeatedly)
        .await;
}

/// Every 4-7 s, alternately, `pg_ctl restart -m immediate` and `pg_ctl stop -m immediate` with
/// 1-3 s down before it starts again. Returns the restarts.
async fn restart_postgres_repeatedly(f: Faults<'_>) -> u64 {
    let Faults {
        system, rng, clock, ..
    } = f;
    let case = clock.case;
    let mut faults = 0u64;
    while !clock.pause(rng.millis(4_000, 7_000)).await {
        if faults % 2 == 0 {
            clock.log("pg_ctl restart -m immediate");
            system
                .pg
                .restart_immediate()
                .await
                .unwrap_or_else(|e| panic!("[{case}] {e:#}"));
        } else {
            let down = rng.millis(1_000, 3_000);
            clock.log(format_args!("pg_ctl stop -m immediate, start in {down:?}"));
            system
                .pg
                .stop_immediate()
                .await
                .unwrap_or_else(|e| panic!("[{case}] {e:#}"));
            tokio::time::sleep(down).await;
            system
                .pg
                .start_again()
                .await
                .unwrap_or_else(|e| panic!("[{case}] {e:#}"));
        }
        faults += 1;
        clock.log("PostgreSQL accepts connections again");
    }
    faults
}
