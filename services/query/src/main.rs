//! The query service's binary: runs the service, or with `rebuild` rebuilds its views and exits.

use clap::Parser;
use query_service::{Application, Command, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init();
    let config = Config::parse();
    if let Some(Command::Rebuild) = config.command {
        let report = query_service::rebuild::run(&config).await?;
        tracing::info!(
            ?report,
            "views rebuilt from the event topics and swapped in"
        );
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let application = Application::build(config).await?;
    tracing::info!(port = application.port(), "query service listening");
    application.run_until_stopped().await
}
