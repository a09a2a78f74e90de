//! `sagashop-logs`: prints the services' log records from the logs topic, filtered; reads what
//! is there and exits, or follows new records with `--follow`.

use clap::Parser;
use shared::config::KafkaConfig;
use shared::log_reader::{self, LogFilter};
use shared::log_shipping;
use tracing::Level;

#[derive(Parser)]
#[command(
    name = "sagashop-logs",
    about = "Follow and filter the Sagashop services' logs (the logs topic)"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaConfig,
    /// Only this service's records (order, payment, inventory, shipping, query).
    #[arg(long)]
    service: Option<String>,
    /// Only records at least this severe: error, warn, info, debug or trace.
    #[arg(long, value_parser = log_reader::parse_level)]
    level: Option<Level>,
    /// Only the records about this order.
    #[arg(long = "order")]
    order_id: Option<String>,
    /// Only the records of this trace.
    #[arg(long = "trace")]
    trace_id: Option<String>,
    /// Only records from this long ago (`10m`, `2h`, `1d`) or since an RFC 3339 time.
    #[arg(long, value_parser = |text: &str| log_reader::parse_since(text, chrono::Utc::now()))]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Keep printing new records (Ctrl-C stops); without it, exit at the end of the topic.
    #[arg(long, short)]
    follow: bool,
    /// One JSON record per line instead of readable lines.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = LogFilter {
        service: cli.service,
        min_level: cli.level,
        order_id: cli.order_id,
        trace_id: cli.trace_id,
        since: cli.since,
    };
    let topic = log_shipping::topic(&cli.kafka.topic_prefix);
    let json = cli.json;
    log_reader::read(&cli.kafka, &topic, &filter, cli.follow, |record| {
        if json {
            match serde_json::to_string(&record) {
                Ok(line) => println!("{line}"),
                Err(error) => eprintln!("unprintable record: {error}"),
            }
        } else {
            println!("{}", log_reader::format_line(&record));
        }
    })?;
    Ok(())
}
