//! `join_leave`: a second instance of each service joins its consumer group and leaves again,
//! over and over, while orders flow.

use std::time::Duration;

use e2e::faults::system::Options;
use e2e::faults::workload::Targets;
use e2e::faults::{kafka, Case, Clock, Expectations, Faults, Rng, ServiceProcess, Svc};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_instances_join_and_leave() {
    let mut case = Case::start("join_leave", 200, Options::default(), |_| {}).await;
    let (outcome, cycles) = case.run(join_and_leave_side_by_side).await;
    let faults = cycles.iter().map(|(c, _)| c.len() as u64).sum();
    let expectations = Expectations {
        faults,
        ..Expectations::default()
    };
    let mut report = case.check(&outcome, expectations).await;
    let mut per_service = Vec::new();
    let mut consumed = 0.0;
    for ((svc, _), (counts, problems)) in case.system.extras.iter().zip(&cycles) {
        per_service.push(format!("{}:{}", svc.name(), counts.len()));
        consumed += counts.iter().sum::<f64>();
        if counts.is_empty() {
            report.violation(
                "fault_injected",
                format!("no second {} joined", svc.binary()),
            );
        }
        for (invariant, problem) in problems {
            report.violation(invariant, problem.clone());
        }
    }
    report.note("cycles", per_service.join(","));
    report.note("consumed_by_second_instances", consumed);
    report.finish();
}

/// What one service's second instance did: the events it consumed in each cycle, and
/// (invariant, problem) of what went wrong.
type Cycles = (Vec<f64>, Vec<(&'static str, String)>);

/// One loop per service, side by side: its second instance joins, stays, leaves, and again 1-2 s
/// later. No cycle starts in the last 10 s: a second instance proves it owns partitions by
/// consuming events, which needs orders flowing.
async fn join_and_leave_side_by_side(f: Faults<'_>) -> Vec<Cycles> {
    let Faults {
        system,
        rng,
        targets,
        http,
        clock,
    } = f;
    let last_cycle = clock.started + clock.period.saturating_sub(Duration::from_secs(10));
    let http = &http;
    futures::future::join_all(system.extras.values_mut().enumerate().map(|(i, extra)| {
        let mut rng = Rng::new(rng.clone().next_u64() ^ i as u64);
        async move {
            let mut cycles = Vec::new();
            let mut problems = Vec::new();
            clock.pause(rng.millis(0, 3_000)).await;
            while !clock.workload_done() && Instant::now() < last_cycle {
                let (consumed, problem) =
                    join_and_leave(extra, http, targets, clock, &mut rng).await;
                cycles.push(consumed);
                problems.extend(problem);
                clock.pause(rng.millis(1_000, 2_000)).await;
            }
            (cycles, problems)
        }
    }))
    .await
}

/// One join/leave cycle of a second instance; returns the events it consumed and a problem.
async fn join_and_leave(
    extra: &mut ServiceProcess,
    http: &reqwest::Client,
    targets: &Targets,
    clock: Clock<'_>,
    rng: &mut Rng,
) -> (f64, Option<(&'static str, String)>) {
    let case = clock.case;
    let mut problem = None;
    extra.start().expect("starting a second instance");
    extra
        .wait_ready(http, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("[{case}] {e:#}"));
    if extra.svc == Svc::ORDER {
        targets.add(extra.url());
    }
    // It leaves only once it owns partitions (it consumed events), and a while after: on
    // tansu 0.6 a member that leaves while a rebalance is electing it leader wedges the group
    // for good (RELIABILITY.md).
    let joined = Instant::now();
    while consumed_events(http, &extra.url()).await == 0.0 {
        if joined.elapsed() > Duration::from_secs(30) {
            if !clock.workload_done() {
                problem = Some((
                    "second_instance_consumes",
                    format!(
                        "{} consumed nothing within 30 s of joining while orders flowed",
                        extra.label()
                    ),
                ));
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stay = rng.millis(2_500, 4_000);
    clock.log(format_args!(
        "{} joined, consumed events {:.1}s later; leaves in {stay:?}",
        extra.label(),
        joined.elapsed().as_secs_f64()
    ));
    tokio::time::sleep(stay).await;
    let consumed = consumed_events(http, &extra.url()).await;
    if extra.svc == Svc::ORDER {
        targets.remove(&extra.url());
    }
    let status = extra
        .terminate(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("[{case}] {e:#}"));
    if !status.success() {
        problem = Some((
            "clean_shutdown",
            format!("{} exited with {status} on SIGTERM", extra.label()),
        ));
    }
    clock.log(format_args!(
        "{} left (SIGTERM, {status}) after consuming {consumed} events",
        extra.label()
    ));
    (consumed, problem)
}

/// Events a service process consumed since it started (its `/metrics`; 0 if unreachable).
async fn consumed_events(http: &reqwest::Client, url: &str) -> f64 {
    kafka::metric(http, url, "sagashop_events_consumed_total", &[])
        .await
        .unwrap_or(0.0)
}
