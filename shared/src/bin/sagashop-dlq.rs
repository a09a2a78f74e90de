//! `sagashop-dlq`: lists a service's dead letters and replays them to their original topic.

use anyhow::Context;
use clap::{Parser, Subcommand};
use shared::config::KafkaConfig;
use shared::dead_letters::{self, DeadLetter};
use shared::topics::dead_letter_topic;

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
    /// Lists the dead letters of a service (order, payment, inventory or shipping).
    List {
        service: String,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Publishes dead letters back to the topic they came from.
    Replay {
        service: String,
        /// Which ones, as `partition:offset` in the dead-letter topic (see `list`).
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
        /// Every dead letter of the service.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

fn topic_for(kafka: &KafkaConfig, service: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        ["order", "payment", "inventory", "shipping"].contains(&service),
        "unknown service {service:?}: expected order, payment, inventory or shipping"
    );
    Ok(dead_letter_topic(
        &kafka.topic_prefix,
        &format!("{service}-service"),
    ))
}

fn print(letter: &DeadLetter) {
    let payload = String::from_utf8_lossy(&letter.payload);
    let preview: String = payload.chars().take(120).collect();
    println!(
        "{}:{}  from {}[{}]@{}  type={}  key={}\n    error: {}\n    payload ({} bytes): {}{}",
        letter.partition,
        letter.offset,
        letter.source_topic().unwrap_or("?"),
        letter.header("dlq.partition").unwrap_or("?"),
        letter.header("dlq.offset").unwrap_or("?"),
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
            let topic = topic_for(&cli.kafka, service)?;
            let brokers = cli.kafka.brokers.clone();
            let letters =
                tokio::task::spawn_blocking(move || dead_letters::read_all(&brokers, &topic))
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
            let topic = topic_for(&cli.kafka, service)?;
            let brokers = cli.kafka.brokers.clone();
            let reading = topic.clone();
            let letters =
                tokio::task::spawn_blocking(move || dead_letters::read_all(&brokers, &reading))
                    .await??;
            let chosen: Vec<&DeadLetter> = if *all {
                letters.iter().collect()
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
