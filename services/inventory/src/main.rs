use clap::Parser;
use inventory_service::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init();
    let application = Application::build(Config::parse()).await?;
    tracing::info!(port = application.port(), "inventory service listening");
    application.run_until_stopped().await
}
