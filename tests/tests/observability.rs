//! Observability end to end, against the real broker and PostgreSQL: an order's log lines come
//! back from the logs topic through `sagashop-logs`' reader from every saga service, and every
//! metric the Grafana dashboard and the Prometheus alert rules use is exported by the running
//! services (so no panel is empty and no alert watches a series that never exists).
//!
//! The services run in this process (the e2e harness); the log layer is installed in this
//! process's subscriber before they start, as `shared::telemetry::init` does in each binary.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Once;

use clap::Parser;
use e2e::{eventually, unique, Api, Backdoor, System, SAGA_TIMEOUT};
use serde_json::Value;
use shared::config::KafkaConfig;
use shared::log_reader::{self, LogFilter};
use shared::log_shipping::{self, LogRecord};
use shared::topics::Topic;
use shared::topology::{INVENTORY, ORDER, PAYMENT, SHIPPING};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The system, with this process's log records shipped to its logs topic.
fn system() -> &'static System {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("info"))
            .with(log_shipping::layer())
            .try_init()
            .expect("the only subscriber of this test process");
    });
    e2e::system()
}

/// The Kafka settings `sagashop-logs` would get with `--kafka-brokers` and `--kafka-topic-prefix`.
fn kafka(system: &System) -> KafkaConfig {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaConfig,
    }
    Cli::try_parse_from([
        "sagashop-logs",
        "--kafka-brokers",
        &system.brokers,
        "--kafka-topic-prefix",
        &system.topic_prefix,
    ])
    .expect("the broker settings")
    .kafka
}

/// Every record of the logs topic so far that `filter` lets through.
async fn logs(system: &'static System, filter: LogFilter) -> Vec<LogRecord> {
    let kafka = kafka(system);
    tokio::task::spawn_blocking(move || {
        let topic = log_shipping::topic(&kafka.topic_prefix);
        let mut records = Vec::new();
        log_reader::read(&kafka, &topic, &filter, false, |record| {
            records.push(record)
        })
        .map(|_| records)
    })
    .await
    .expect("the reading task")
    .expect("reading the logs topic")
}

/// The `sagashop_log_records_dropped_total` samples the order service exports (the services of
/// this process share one shipper and one metrics registry).
async fn dropped_records(system: &System) -> Vec<String> {
    let text = reqwest::get(format!("{}/metrics", system.order_url))
        .await
        .and_then(|response| response.error_for_status());
    match text {
        Ok(response) => response
            .text()
            .await
            .unwrap_or_default()
            .lines()
            .filter(|line| line.starts_with("sagashop_log_records_dropped_total"))
            .map(str::to_owned)
            .collect(),
        Err(error) => vec![format!("/metrics did not answer: {error}")],
    }
}

#[tokio::test]
async fn an_orders_log_lines_come_from_every_saga_service() {
    let api = Api::on(system());
    let (sku, customer) = (unique("tea"), unique("customer"));
    api.create_product(&sku, 300, 10).await;
    api.open_account(&customer, 5_000).await;
    let order_id = api.place_order(&customer, &[(&sku, 1)], "FR").await;
    assert_eq!(api.wait_terminal(order_id).await["status"], "CONFIRMED");

    let by_order = LogFilter {
        order_id: Some(order_id.to_string()),
        ..LogFilter::default()
    };
    // The order service's `order accepted` line and an applied event of the order from each
    // participant. Log records reach the topic asynchronously (a retried batch lands later), so
    // wait for them all.
    let complete = |records: &[LogRecord]| {
        let accepted = records
            .iter()
            .any(|record| record.message == "order accepted" && record.service == ORDER.name);
        accepted
            && [PAYMENT.name, INVENTORY.name, SHIPPING.name]
                .iter()
                .all(|service| {
                    records.iter().any(|record| {
                        record.service == *service
                            && record.message == "event applied"
                            && record.fields.get("event_type").is_some()
                    })
                })
    };
    let deadline = tokio::time::Instant::now() + SAGA_TIMEOUT;
    let records = loop {
        let records = logs(api.system, by_order.clone()).await;
        if complete(&records) {
            break records;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "after {SAGA_TIMEOUT:?} the logs topic still lacks the order's `order accepted` \
                 line or an applied event of a participant; records dropped on the way: {:?}; \
                 the order's records: {records:#?}",
                dropped_records(api.system).await
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    for record in &records {
        assert_eq!(record.order_id, Some(order_id.to_string()), "{record:?}");
    }
    let accepted = records
        .iter()
        .find(|record| record.message == "order accepted")
        .expect("checked above");
    assert_eq!(accepted.service, ORDER.name);
    assert_eq!(accepted.level, "INFO");

    // The other filters narrow the same lines down.
    let payments = logs(
        api.system,
        LogFilter {
            service: Some(PAYMENT.name.to_owned()),
            min_level: Some(tracing::Level::INFO),
            since: Some(accepted.time),
            ..by_order.clone()
        },
    )
    .await;
    assert!(!payments.is_empty());
    assert!(payments
        .iter()
        .all(|r| r.service == PAYMENT.name && r.time >= accepted.time));
    let errors = logs(
        api.system,
        LogFilter {
            min_level: Some(tracing::Level::ERROR),
            ..by_order
        },
    )
    .await;
    assert!(
        errors.is_empty(),
        "a confirmed order logged errors: {errors:#?}"
    );
}

#[tokio::test]
async fn every_metric_of_the_dashboard_and_the_alert_rules_is_exported() {
    let api = Api::on(system());
    let (sku, customer) = (unique("tea"), unique("customer"));
    api.create_product(&sku, 300, 10).await;
    api.open_account(&customer, 5_000).await;
    // One confirmed saga, one compensated (AQ is not served: charged, then refunded).
    let confirmed = api.place_order(&customer, &[(&sku, 1)], "FR").await;
    let compensated = api.place_order(&customer, &[(&sku, 1)], "AQ").await;
    assert_eq!(api.wait_terminal(confirmed).await["status"], "CONFIRMED");
    assert_eq!(api.wait_terminal(compensated).await["status"], "CANCELLED");
    // One dead letter: bytes that are no event, on a topic the order service reads.
    let backdoor = Backdoor::on(api.system);
    backdoor
        .produce(Topic::Shipping, &unique("poison"), b"not an event", None)
        .await;
    eventually("the dead letter", SAGA_TIMEOUT, || async {
        (!backdoor.dead_letters(ORDER.name).await.is_empty()).then_some(())
    })
    .await;

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("docker/grafana/dashboards/sagashop.json"))
            .expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let rules: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(root.join("docker/prometheus/alerts.yml"))
            .expect("the alert rules"),
    )
    .expect("the alert rules are YAML");
    let mut used = BTreeSet::new();
    let mut dashboard_expressions = Vec::new();
    collect_expressions(&dashboard, &mut dashboard_expressions);
    let rule_expressions: Vec<String> = rules["groups"]
        .as_sequence()
        .expect("rule groups")
        .iter()
        .flat_map(|group| group["rules"].as_sequence().expect("rules").iter())
        .map(|rule| rule["expr"].as_str().expect("an expr").to_owned())
        .collect();
    assert!(dashboard_expressions.len() >= 10 && rule_expressions.len() >= 4);
    for expression in dashboard_expressions.iter().chain(&rule_expressions) {
        used.extend(metric_names(expression));
    }
    // Prometheus makes `up` itself, per scrape target.
    used.remove("up");

    let urls = [
        &api.system.order_url,
        &api.system.payment_url,
        &api.system.inventory_url,
        &api.system.shipping_url,
        &api.system.query_url,
    ];
    let missing = |exported: &BTreeSet<String>| -> Vec<String> {
        used.iter()
            .filter(|name| !exported.contains(*name))
            .cloned()
            .collect()
    };
    // The lag gauge and the backlog gauges are sampled in the background: wait for them.
    let deadline = tokio::time::Instant::now() + SAGA_TIMEOUT;
    let (exported, missing) = loop {
        let mut exported = BTreeSet::new();
        for url in urls {
            let response = api
                .http
                .get(format!("{url}/metrics"))
                .send()
                .await
                .expect("/metrics answers");
            assert_eq!(response.status(), 200);
            exported.extend(exported_names(&response.text().await.expect("a body")));
        }
        let missing = missing(&exported);
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break (exported, missing);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert!(
        missing.is_empty(),
        "used by the dashboard or the alert rules but exported by no service: {missing:?}"
    );
    assert!(exported.contains("sagashop_saga_duration_seconds_bucket"));
}

fn collect_expressions(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expression)) => into.push(expression.clone()),
                    _ => collect_expressions(value, into),
                }
            }
        }
        Value::Array(values) => values.iter().for_each(|v| collect_expressions(v, into)),
        _ => {}
    }
}

/// The names in Prometheus text: every sample's (`x_bucket`, `x_sum`, `x_count` of a
/// histogram included) and every `# TYPE` line's.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| match line.strip_prefix("# TYPE ") {
            Some(typed) => typed.split_whitespace().next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        })
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// PromQL words that are not metric names.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
];

/// Keywords followed by a list of label names in parentheses.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression reads: identifiers standing alone or followed by `{`
/// or `[`; not functions or aggregations (followed by `(`, or by `by`/`without`), keywords, the label names of
/// `by (...)` and the like, label matchers, strings, durations, numbers or Grafana variables.
fn metric_names(expression: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expression.chars().collect();
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_string = |mut i: usize| -> usize {
        let quote = chars[i];
        i += 1;
        while i < chars.len() && chars[i] != quote {
            i += if chars[i] == '\\' { 2 } else { 1 };
        }
        i + 1
    };
    let skip_until = |mut i: usize, close: char| -> usize {
        while i < chars.len() && chars[i] != close {
            i = if matches!(chars[i], '"' | '\'' | '`') {
                skip_string(i)
            } else {
                i + 1
            };
        }
        i + 1
    };
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(i);
        } else if c == '{' {
            i = skip_until(i + 1, '}');
        } else if c == '[' {
            i = skip_until(i + 1, ']');
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (`5m`, `1e3`, `0.95`).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c == '$' {
            i += 1;
            while i < chars.len() && is_part(chars[i]) {
                i += 1;
            }
        } else if is_start(c) {
            let start = i;
            while i < chars.len() && is_part(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            // `sum by (...) (...)`: an aggregation whose grouping comes first.
            let following: String = chars[next..].iter().take_while(|c| is_part(**c)).collect();
            let called = chars.get(next) == Some(&'(')
                || (matches!(following.as_str(), "by" | "without")
                    && !LABEL_LISTS.contains(&word.as_str()));
            if LABEL_LISTS.contains(&word.as_str()) && called {
                i = skip_until(next + 1, ')');
            } else if !called && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_tokenizer_finds_the_metric_names_and_nothing_else() {
    let names =
        |expression: &str| -> Vec<String> { metric_names(expression).into_iter().collect() };
    assert_eq!(
        names(
            r#"histogram_quantile(0.95, sum by (service, route, le) (rate(http_seconds_bucket{status_class="5xx", route=~"/a|b{c}"}[5m])))"#
        ),
        ["http_seconds_bucket"]
    );
    assert_eq!(
        names("max by (service) (oldest) > on (service) max by(service)(deadline) + 60"),
        ["deadline", "oldest"]
    );
    assert_eq!(
        names("sum without (instance) (rate(a_total[$__rate_interval] offset 1h)) / ignoring(x) group_left(y) b unless c and up"),
        ["a_total", "b", "c", "up"]
    );
    assert_eq!(names("up{job=~\"order|payment\"} == bool 1e3"), ["up"]);
    assert_eq!(names("vector(1) > 0.5"), Vec::<String>::new());
}

#[test]
fn exported_names_include_each_histogram_series_and_type() {
    let text = "# HELP x_seconds latency\n# TYPE x_seconds histogram\n\
                x_seconds_bucket{le=\"0.1\"} 1\nx_seconds_sum 0.05\nx_seconds_count 1\n\
                # TYPE c_total counter\nc_total{service=\"order\"} 3\nplain 1\n";
    let names: Vec<String> = exported_names(text).into_iter().collect();
    assert_eq!(
        names,
        [
            "c_total",
            "plain",
            "x_seconds",
            "x_seconds_bucket",
            "x_seconds_count",
            "x_seconds_sum"
        ]
    );
}
