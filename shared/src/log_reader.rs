//! Reading the logs topic back (`sagashop-logs`): a [`LogFilter`] (service, minimum level,
//! order, trace, since) and [`read`], which assigns itself every partition (no consumer group,
//! nothing committed) and reads from the start to the end, or on for ever with `follow`.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use tracing::Level;

use crate::config::KafkaConfig;
use crate::log_shipping::LogRecord;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Which records to show; every criterion that is set must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogFilter {
    /// Only this service's (`order`, ...).
    pub service: Option<String>,
    /// Only records at least this severe (`warn`: warnings and errors).
    pub min_level: Option<Level>,
    pub order_id: Option<String>,
    pub trace_id: Option<String>,
    /// Only records logged at or after this time.
    pub since: Option<DateTime<Utc>>,
}

impl LogFilter {
    pub fn matches(&self, record: &LogRecord) -> bool {
        let level_ok = match (self.min_level, record.level.parse::<Level>()) {
            (None, _) => true,
            // tracing orders levels by verbosity: ERROR < WARN < ... < TRACE.
            (Some(min), Ok(level)) => level <= min,
            (Some(_), Err(_)) => false,
        };
        level_ok
            && self
                .service
                .as_ref()
                .is_none_or(|service| *service == record.service)
            && self
                .order_id
                .as_ref()
                .is_none_or(|order| record.order_id.as_ref() == Some(order))
            && self
                .trace_id
                .as_ref()
                .is_none_or(|trace| record.trace_id.as_ref() == Some(trace))
            && self.since.is_none_or(|since| record.time >= since)
    }
}

/// A minimum level: `error`, `warn`, `info`, `debug` or `trace` (any case).
pub fn parse_level(text: &str) -> anyhow::Result<Level> {
    text.parse::<Level>()
        .map_err(|_| anyhow::anyhow!("{text:?} is not a level (error, warn, info, debug or trace)"))
}

/// A point in time: an age before `now` (`90s`, `10m`, `2h`, `1d`) or an RFC 3339 time
/// (`2026-12-06T15:00:00Z`).
pub fn parse_since(text: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let invalid =
        || anyhow::anyhow!("{text:?} is neither an age such as 10m, 2h or 1d nor an RFC 3339 time");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (amount, unit) = text.split_at(split);
    let amount: i64 = amount.parse().map_err(|_| invalid())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(invalid()),
    };
    let age = amount
        .checked_mul(seconds)
        .and_then(chrono::TimeDelta::try_seconds)
        .ok_or_else(invalid)?;
    Ok(now - age)
}

/// One record as a line: time, level, service, order, message, then the fields.
pub fn format_line(record: &LogRecord) -> String {
    let mut line = format!(
        "{} {:<5} {:<9} {}",
        record.time.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        record.level,
        record.service,
        record.message,
    );
    if let Some(order) = &record.order_id {
        line.push_str(&format!(" order_id={order}"));
    }
    if let Some(trace) = &record.trace_id {
        line.push_str(&format!(" trace_id={trace}"));
    }
    let mut fields: Vec<_> = record.fields.iter().collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    for (key, value) in fields {
        match value {
            serde_json::Value::String(text) => line.push_str(&format!(" {key}={text}")),
            other => line.push_str(&format!(" {key}={other}")),
        }
    }
    line
}

/// Reads the logs topic `topic` from its start (from `filter.since`, when set, by the records'
/// timestamps) and hands every record `filter` lets through to `each`, until the end it had
/// when called (`follow`: on for ever). A value that is not a log record is skipped. Returns
/// how many records were handed over.
pub fn read(
    kafka: &KafkaConfig,
    topic: &str,
    filter: &LogFilter,
    follow: bool,
    mut each: impl FnMut(LogRecord),
) -> anyhow::Result<usize> {
    let consumer: BaseConsumer = crate::kafka::base_config(kafka)?
        .set("group.id", "sagashop-logs-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating a Kafka consumer")?;
    // With `since`, each partition starts at its first record stamped at or after it (a
    // record is stamped when it is produced, after it was logged: none that matches is skipped).
    let since = filter.since.map(|since| since.timestamp_millis());
    let mut ends =
        crate::kafka::assign_from_time(&consumer, topic, since, TIMEOUT).with_context(|| {
            format!("reading {topic} (is a service running with LOG_TOPIC_ENABLED on?)")
        })?;
    let mut shown = 0;
    while follow || !ends.is_empty() {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.with_context(|| format!("reading {topic}"))?;
        let (partition, offset) = (message.partition(), message.offset());
        ends.retain(|(p, high)| !(*p == partition && offset + 1 >= *high));
        let Some(record) = message
            .payload()
            .and_then(|payload| serde_json::from_slice::<LogRecord>(payload).ok())
        else {
            continue;
        };
        if filter.matches(&record) {
            shown += 1;
            each(record);
        }
    }
    Ok(shown)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::Map;

    use super::*;

    fn record(service: &str, level: &str, order: Option<&str>, minute: u32) -> LogRecord {
        LogRecord {
            time: Utc.with_ymd_and_hms(2026, 12, 6, 15, minute, 0).unwrap(),
            level: level.to_owned(),
            service: service.to_owned(),
            target: "test".to_owned(),
            message: "m".to_owned(),
            order_id: order.map(str::to_owned),
            trace_id: order.map(|order| format!("trace-{order}")),
            fields: Map::new(),
        }
    }

    #[test]
    fn ages_and_rfc3339_times_parse_and_anything_else_is_refused() {
        let now = Utc.with_ymd_and_hms(2026, 12, 6, 15, 0, 0).unwrap();
        let at = |h, m, s| Utc.with_ymd_and_hms(2026, 12, 6, h, m, s).unwrap();
        assert_eq!(parse_since("10m", now).unwrap(), at(14, 50, 0));
        assert_eq!(parse_since("90s", now).unwrap(), at(14, 58, 30));
        assert_eq!(parse_since("2h", now).unwrap(), at(13, 0, 0));
        assert_eq!(
            parse_since("1d", now).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 5, 15, 0, 0).unwrap()
        );
        assert_eq!(
            parse_since("2026-12-06T16:30:00+01:00", now).unwrap(),
            at(15, 30, 0)
        );
        for bad in [
            "",
            "10",
            "m",
            "10w",
            "-5m",
            "1.5h",
            "yesterday",
            "99999999999999999d",
        ] {
            assert!(parse_since(bad, now).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn levels_parse_in_any_case_and_the_minimum_keeps_the_more_severe() {
        assert_eq!(parse_level("warn").unwrap(), Level::WARN);
        assert_eq!(parse_level("ERROR").unwrap(), Level::ERROR);
        assert!(parse_level("loud").is_err());
        let filter = LogFilter {
            min_level: Some(Level::WARN),
            ..LogFilter::default()
        };
        let kept: Vec<&str> = ["ERROR", "WARN", "INFO", "DEBUG", "TRACE", "bogus"]
            .into_iter()
            .filter(|level| filter.matches(&record("order", level, None, 0)))
            .collect();
        assert_eq!(kept, ["ERROR", "WARN"]);
    }

    #[test]
    fn every_set_criterion_must_hold() {
        let records = [
            record("order", "INFO", Some("a"), 0),
            record("payment", "INFO", Some("a"), 10),
            record("payment", "INFO", Some("b"), 20),
            record("payment", "INFO", None, 30),
        ];
        let kept = |filter: LogFilter| -> Vec<usize> {
            (0..records.len())
                .filter(|&i| filter.matches(&records[i]))
                .collect()
        };
        assert_eq!(kept(LogFilter::default()), [0, 1, 2, 3]);
        let order_a = LogFilter {
            order_id: Some("a".to_owned()),
            ..LogFilter::default()
        };
        assert_eq!(kept(order_a.clone()), [0, 1]);
        assert_eq!(
            kept(LogFilter {
                service: Some("payment".to_owned()),
                ..order_a
            }),
            [1]
        );
        assert_eq!(
            kept(LogFilter {
                trace_id: Some("trace-b".to_owned()),
                ..LogFilter::default()
            }),
            [2]
        );
        assert_eq!(
            kept(LogFilter {
                since: Some(Utc.with_ymd_and_hms(2026, 12, 6, 15, 20, 0).unwrap()),
                ..LogFilter::default()
            }),
            [2, 3]
        );
    }

    #[test]
    fn a_line_shows_the_order_and_the_fields_sorted() {
        let mut record = record("payment", "WARN", Some("a"), 5);
        record.fields.insert("z".to_owned(), "last".into());
        record.fields.insert("attempts".to_owned(), 2.into());
        assert_eq!(
            format_line(&record),
            "2026-12-06T15:05:00.000Z WARN  payment   m order_id=a trace_id=trace-a attempts=2 z=last"
        );
    }
}
