use clap::Parser;
use order_service::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init();
    let application = Application::build(Config::parse()).await?;
    tracing::info!(port = application.port(), "order service listening");
    application.run_until_stopped().await
}
