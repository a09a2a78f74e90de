//! Logging set-up: `RUST_LOG` filters (default `info`), `LOG_FORMAT=json` for JSON lines; the
//! same records also go to the `logs` topic ([`crate::log_shipping`]).

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; call once from `main` (later calls do nothing).
pub fn init() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(install);
}

fn install() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,rdkafka=warn,tower_http=info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|format| format == "json");
    let stdout = tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal());
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(crate::log_shipping::layer());
    let result = if json {
        registry.with(stdout.json()).try_init()
    } else {
        registry.with(stdout).try_init()
    };
    // Another subscriber may be installed already (a test's): it stays.
    let _ = result;
}
