//! The query service's settings.

use clap::{Parser, Subcommand};
use shared::config::CommonConfig;

#[derive(Debug, Clone, Parser)]
#[command(name = "query-service", about = "Sagashop query service (read views)")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,

    #[command(flatten)]
    pub analytics: crate::analytics::AnalyticsConfig,

    /// HTTP port (0 picks a free one).
    #[arg(long, env = "HTTP_PORT", default_value_t = 8085)]
    pub http_port: u16,

    /// Without a command the service runs; `rebuild` rebuilds the views and exits.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum Command {
    /// Replays every event topic from its earliest offset into fresh tables and swaps them in
    /// while the service keeps running (docs/QUERY.md).
    Rebuild,
}
