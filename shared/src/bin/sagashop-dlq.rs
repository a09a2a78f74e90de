//! `sagashop-dlq`: lists a service's dead letters and replays them to their original topic.

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};
use shared::config::KafkaConfig;
use shared::dead_letters::{self, DeadLetter};
use shared::topology::{self, Service};

#[derive(Parser)]
#[command(
    name = "sagashop-dlq",
    about = "Inspect and replay Sagashop dead letters"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaConfig,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Lists the dead letters of a service.
    List {
        #[arg(value_parser = service_name())]
        service: &'static Service,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Publishes dead letters back to the topic they came from.
    Replay {
        #[arg(value_parser = service_name())]
        service: &'static Service,
        /// Which ones, as `partition:offset` in the dead-letter topic (see `list`). A truncated
        /// one is refused (`--all` skips it): its original is where `list` says.
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
        /// Every dead letter of the service.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

/// A service of the topology, by its short name (`--help` lists them).
fn service_name() -> impl TypedValueParser<Value = &'static Service> {
    PossibleValuesParser::new(topology::names())
        .map(|name| topology::by_name(&name).expect("a possible value names a service"))
}

fn print(letter: &DeadLetter) {
    let payload = String::from_utf8_lossy(&letter.payload);
    let preview: String = payload.chars().take(120).collect();
    let truncated = match letter.truncated() {
        Some(original) => format!(
            "\n    TRUNCATED: the original had {} bytes and is at {} (not replayable)",
            original.map_or_else(|| "?".to_owned(), |n| n.to_string()),
            letter.origin()
        ),
        None => String::new(),
    };
    println!(
        "{}:{}  from {}  type={}  key={}\n    error: {}{truncated}\n    payload ({} bytes): {}{}",
        letter.partition,
        letter.offset,
        letter.origin(),
        letter.header("event_type").unwrap_or("-"),
        letter.key.as_deref().unwrap_or("-"),
        letter.error(),
        letter.payload.len(),
        preview,
        if payload.chars().count() > 120 {
            "..."
        } else {
            ""
        },
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::List { service, json } => {
            let topic = service.dead_letter_topic(&cli.kafka.topic_prefix);
            let kafka = cli.kafka.clone();
            let letters =
                tokio::task::spawn_blocking(move || dead_letters::read_all_as(&kafka, &topic))
                    .await??;
            for letter in &letters {
                if *json {
                    println!("{}", serde_json::to_string(letter)?);
                } else {
                    print(letter);
                }
            }
            if !json {
                println!("{} dead letter(s)", letters.len());
            }
        }
        Command::Replay { service, ids, all } => {
            let topic = service.dead_letter_topic(&cli.kafka.topic_prefix);
            let kafka = cli.kafka.clone();
            let reading = topic.clone();
            let letters =
                tokio::task::spawn_blocking(move || dead_letters::read_all_as(&kafka, &reading))
                    .await??;
            let chosen: Vec<&DeadLetter> = if *all {
                letters
                    .iter()
                    .filter(|letter| {
                        let truncated = letter.truncated().is_some();
                        if truncated {
                            eprintln!(
                                "skipping {}:{}: truncated, the original is at {}",
                                letter.partition,
                                letter.offset,
                                letter.origin()
                            );
                        }
                        !truncated
                    })
                    .collect()
            } else {
                ids.iter()
                    .map(|id| {
                        letters
                            .iter()
                            .find(|letter| format!("{}:{}", letter.partition, letter.offset) == *id)
                            .with_context(|| format!("no dead letter {id} in {topic}"))
                    })
                    .collect::<anyhow::Result<_>>()?
            };
            let producer = shared::kafka::producer(&cli.kafka)?;
            for letter in chosen {
                let target = dead_letters::replay(&producer, &topic, letter).await?;
                println!(
                    "replayed {}:{} to {target}",
                    letter.partition, letter.offset
                );
            }
        }
    }
    Ok(())
}
