//! `sagashop-ledger verify`: replays every account's ledger and reports each account whose
//! stored balance is not the fold of its ledger (or whose ledger has a gap). Exit code 0 when
//! every balance adds up, 1 when one does not, 2 when the check could not run.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
#[command(name = "sagashop-ledger", about = "Check the payment ledgers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replays every ledger and compares it with the account balances.
    Verify {
        /// The payment database.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let Command::Verify { database_url } = Cli::parse().command;
    let verified = async {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&database_url)
            .await?;
        payment_service::verify::verify(&pool).await
    };
    match verified.await {
        Ok(verification) => {
            println!("{verification}");
            if verification.is_consistent() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("sagashop-ledger: {error}");
            ExitCode::from(2)
        }
    }
}
