//! `duplicate_rewind`: every event delivered twice (a duplicator), and each service's consumer
//! group rewound to 0 while it is stopped; then, once the system is quiet, every group rewound
//! to 0 at once, which must change no effect at all (`e2e::faults::check::rewind`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use e2e::faults::check::rewind::{redelivery_problems, Effects};
use e2e::faults::check::wait_quiet;
use e2e::faults::kafka::{self, Duplicator, PartitionState};
use e2e::faults::system::Options;
use e2e::faults::{saga_topics, Case, Expectations, FaultSystem, Faults, Svc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_delivered_twice_and_groups_rewound() {
    let mut case = Case::start("duplicate_rewind", 200, Options::default(), |_| {}).await;
    let system = &case.system;
    let topics: Vec<String> = saga_topics().iter().map(|t| system.topic(t)).collect();
    let mut duplicator = Duplicator::start(
        &system.broker.address(),
        &format!("{}faults-duplicator", system.prefix),
        topics,
    )
    .expect("starting the duplicator");
    let (outcome, (rewinds, mut problems)) = case.run(rewind_each_service).await;
    for svc in Svc::all() {
        if !rewinds.iter().any(|r| r.svc == svc) {
            problems.push((
                "fault_injected",
                format!(
                    "{} was never rewound (the workload ended first)",
                    svc.binary()
                ),
            ));
        }
    }
    let copies_before_settle = duplicator.copied.load(Ordering::SeqCst);
    let expectations = Expectations {
        faults: rewinds.len() as u64,
        ..Expectations::default()
    };
    let mut report = case
        .check_with_duplicator(&outcome, &mut duplicator, expectations)
        .await;
    duplicator.stop().await.expect("stopping the duplicator");
    let copies = duplicator.copied.load(Ordering::SeqCst);
    report.faults += copies;
    for (invariant, problem) in problems {
        report.violation(invariant, problem);
    }
    // Each rewound range was delivered again and changed nothing.
    let brokers = case.system.broker.address();
    let mut redelivered = 0;
    let mut duplicates_seen = 0.0;
    for rewind in &rewinds {
        let system = &case.system;
        let group = system.group(rewind.svc);
        let topics = system.consumed_topics(rewind.svc);
        let now = committed_map(
            &kafka::group_state(&brokers, &group, &topics)
                .await
                .expect("group state"),
        );
        for (partition, &end) in &rewind.before {
            redelivered += end.max(0);
            let committed = now.get(partition).copied().unwrap_or(-1);
            if committed < end {
                report.violation(
                    "redelivery_changes_nothing",
                    format!(
                        "{group} {partition:?}: rewound from {end} to 0 but committed only \
                         {committed} since"
                    ),
                );
            }
        }
        // The restarted process counts what it consumed: every event of the rewound range that
        // it had applied (an inbox row below the rewind point) again, as a duplicate (its
        // counters start at its restart; types it does not handle count as `ignored`).
        match kafka::metric(
            &system.http,
            &system.url(rewind.svc),
            "sagashop_events_consumed_total",
            &[("outcome", "duplicate")],
        )
        .await
        {
            Ok(seen) => {
                duplicates_seen += seen;
                let expected: i64 = rewind.inbox_below.values().sum();
                if (seen as i64) < expected {
                    report.violation(
                        "redelivery_changes_nothing",
                        format!(
                            "{}: {seen} duplicates counted since the rewind, but {expected} \
                             applied events were below the rewind point",
                            rewind.svc.binary()
                        ),
                    );
                }
            }
            Err(error) => report.violation(
                "redelivery_changes_nothing",
                format!(
                    "{}: no duplicate count from /metrics: {error:#}",
                    rewind.svc.binary()
                ),
            ),
        }
    }
    // Once quiet, every group rewound to 0 at once: everything is delivered again (copies
    // included) and must change nothing at all, each applied event counted as a duplicate.
    match rewind_everything_once_quiet(&mut case.system).await {
        Ok(problems) => {
            for problem in problems {
                report.violation("redelivery_changes_nothing", problem);
            }
        }
        Err(error) => report.violation(
            "redelivery_changes_nothing",
            format!("the final rewind: {error:#}"),
        ),
    }
    if copies == 0 || copies < copies_before_settle {
        report.violation(
            "fault_injected",
            format!("the duplicator copied {copies} messages"),
        );
    }
    report.note("copies", copies);
    report.note("rewinds", rewinds.len());
    report.note("redelivered", redelivered);
    report.note("duplicates_seen", duplicates_seen);
    report.finish();
}

/// What a rewind moved, to check after the system is quiet.
struct Rewind {
    svc: Svc,
    /// Committed offsets when the service had stopped.
    before: BTreeMap<(String, i32), i64>,
    /// Inbox rows per partition below those offsets.
    inbox_below: BTreeMap<(String, i32), i64>,
}

/// Every 4-6 s, each service in turn (again and again in soak mode) while orders flow: stopped
/// with SIGTERM, its group's committed offsets set to 0 from outside the (now empty) group and
/// read back, restarted. Returns the rewinds and (invariant, problem) of what went wrong.
async fn rewind_each_service(f: Faults<'_>) -> (Vec<Rewind>, Vec<(&'static str, String)>) {
    let Faults {
        system,
        rng,
        http,
        clock,
        ..
    } = f;
    let case = clock.case;
    let mut rewinds = Vec::new();
    let mut problems = Vec::new();
    let brokers = system.broker.address();
    // The saga's services in this order, then every other service of the topology (a read
    // side such as query).
    let saga = [Svc::PAYMENT, Svc::INVENTORY, Svc::SHIPPING, Svc::ORDER];
    let order: Vec<Svc> = saga
        .into_iter()
        .chain(Svc::all().filter(|svc| !saga.contains(svc)))
        .collect();
    for svc in order.into_iter().cycle() {
        if clock.pause(rng.millis(4_000, 6_000)).await {
            break;
        }
        let group = system.group(svc);
        let topics = system.consumed_topics(svc);
        let process = system.services.get_mut(&svc).expect("a service");
        let status = process
            .terminate(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("[{case}] {e:#}"));
        if !status.success() {
            problems.push((
                "clean_shutdown",
                format!("{} exited with {status} on SIGTERM", svc.binary()),
            ));
        }
        let states = kafka::group_state(&brokers, &group, &topics)
            .await
            .unwrap_or_else(|e| panic!("[{case}] {e:#}"));
        let before = committed_map(&states);
        let inbox = inbox_below(system, svc, &before).await;
        let zero: Vec<(String, i32, i64)> = states
            .iter()
            .map(|s| (s.topic.clone(), s.partition, 0))
            .collect();
        kafka::commit_offsets(&brokers, &group, &zero)
            .await
            .unwrap_or_else(|e| panic!("[{case}] rewinding {group}: {e:#}"));
        let rewound = kafka::group_state(&brokers, &group, &topics)
            .await
            .unwrap_or_else(|e| panic!("[{case}] {e:#}"));
        if rewound.iter().any(|s| s.committed != Some(0)) {
            problems.push((
                "fault_injected",
                format!(
                    "{group}: committed offsets did not go back to 0: {}",
                    rewound
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        clock.log(format_args!(
            "{} stopped (SIGTERM), its group rewound to 0 from {}",
            svc.binary(),
            states
                .iter()
                .map(|s| s.to_string().replace(&system.prefix, ""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let process = system.services.get_mut(&svc).expect("a service");
        process.start().expect("restarting");
        process
            .wait_ready(&http, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("[{case}] {e:#}"));
        rewinds.push(Rewind {
            svc,
            before,
            inbox_below: inbox,
        });
    }
    (rewinds, problems)
}

/// Inbox rows of `svc` per partition below the offsets of `before`.
async fn inbox_below(
    system: &FaultSystem,
    svc: Svc,
    before: &BTreeMap<(String, i32), i64>,
) -> BTreeMap<(String, i32), i64> {
    let rows: Vec<(String, i32, i64)> =
        sqlx::query_as("select topic, kafka_partition, kafka_offset from inbox")
            .fetch_all(&system.pool(svc))
            .await
            .expect("reading the inbox");
    let mut counts: BTreeMap<(String, i32), i64> = before.keys().map(|k| (k.clone(), 0)).collect();
    for (topic, partition, offset) in rows {
        let key = (topic, partition);
        if before.get(&key).is_some_and(|&end| offset < end) {
            *counts.entry(key).or_default() += 1;
        }
    }
    counts
}

/// Committed offset per (topic, partition); -1 for none.
fn committed_map(states: &[PartitionState]) -> BTreeMap<(String, i32), i64> {
    states
        .iter()
        .map(|s| ((s.topic.clone(), s.partition), s.committed.unwrap_or(-1)))
        .collect()
}

/// Stops every service, rewinds every group to 0, restarts them, waits until quiet; returns
/// what the re-delivery changed (see `check::rewind`).
async fn rewind_everything_once_quiet(system: &mut FaultSystem) -> anyhow::Result<Vec<String>> {
    let before = Effects::take(system).await?;
    let brokers = system.broker.address();
    for svc in Svc::all() {
        let status = system
            .services
            .get_mut(&svc)
            .expect("a service")
            .terminate(Duration::from_secs(30))
            .await?;
        anyhow::ensure!(status.success(), "{} exited with {status}", svc.binary());
    }
    for svc in Svc::all() {
        let group = system.group(svc);
        let states = kafka::group_state(&brokers, &group, &system.consumed_topics(svc)).await?;
        let zero: Vec<(String, i32, i64)> = states
            .iter()
            .map(|s| (s.topic.clone(), s.partition, 0))
            .collect();
        kafka::commit_offsets(&brokers, &group, &zero).await?;
    }
    for svc in Svc::all() {
        system.services.get_mut(&svc).expect("a service").start()?;
    }
    system.wait_ready(Duration::from_secs(60)).await?;
    wait_quiet(system, Duration::from_secs(120)).await?;
    let after = Effects::take(system).await?;
    let mut duplicates = Vec::new();
    for svc in Svc::all() {
        let counted = kafka::metric(
            &system.http,
            &system.url(svc),
            "sagashop_events_consumed_total",
            &[("outcome", "duplicate")],
        )
        .await?;
        println!(
            "faults: [duplicate_rewind] final rewind: {} counted {counted} duplicates, had \
             applied {}",
            svc.binary(),
            before.applied(svc)
        );
        duplicates.push((svc, counted));
    }
    Ok(redelivery_problems(&before, &after, &duplicates))
}
