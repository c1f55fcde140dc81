//! The `rookery` binary: configuration from file, environment and flags, then the broker
//! until SIGINT or SIGTERM. SIGHUP reloads the configuration (see `server/reload.rs`).

use clap::Parser;
use rookery::{BrokerHandle, Config};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

// The commit path and the router allocate many small, short-lived buffers across
// threads; mimalloc's per-thread free lists cost less there than glibc's malloc, whose
// consolidation of freed chunks showed up as ~10% of broker CPU in `strict` profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "rookery",
    version,
    about = "An MQTT broker in which groups are first-class topics"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (overrides [storage] data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// MQTT/TCP listen address (overrides [mqtt] listen).
    #[arg(long)]
    mqtt_listen: Option<SocketAddr>,
    /// HTTP listen address (overrides [http] listen).
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

/// The configuration from the file, the environment and the flags.
fn load_config(cli: &Cli) -> Result<Config, rookery::config::ConfigError> {
    let mut config = Config::load(cli.config.as_deref(), std::env::vars())?;
    if let Some(dir) = &cli.data_dir {
        config.storage.data_dir.clone_from(dir);
    }
    if let Some(addr) = cli.mqtt_listen {
        config.mqtt.listen = addr;
    }
    if let Some(addr) = cli.http_listen {
        config.http.listen = addr;
    }
    Ok(config)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let config = load_config(&cli)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // Tokio runs the most recently woken task first (its "LIFO slot"). When the data of
    // several connections arrives in one I/O batch, that handles the last one first, so a
    // PUBLISH can be routed before a SUBSCRIBE that reached the broker earlier on another
    // connection. Without the slot, connections are handled in arrival order.
    builder.disable_lifo_slot();
    let runtime = builder.enable_all().build()?;
    runtime.block_on(async move {
        let broker = rookery::start(config).await?;
        // Tests and scripts that start the binary on port 0 read the addresses from here
        // (the MQTT line last).
        println!("rookery: HTTP listening on {}", broker.http_addr());
        if let Some(addr) = broker.http_tls_addr() {
            println!("rookery: HTTP/TLS listening on {addr}");
        }
        if let Some(addr) = broker.mqtt_tls_addr() {
            println!("rookery: MQTT/TLS listening on {addr}");
        }
        println!("rookery: MQTT listening on {}", broker.mqtt_addr());
        run_until_stopped(&broker, &cli).await;
        tracing::info!("shutting down");
        broker.shutdown(Duration::from_secs(5)).await;
        anyhow::Ok(())
    })
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Serves until SIGINT or SIGTERM; each SIGHUP reloads the configuration.
async fn run_until_stopped(broker: &BrokerHandle, cli: &Cli) {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    async fn next(signal: &mut Option<Signal>) {
        let received = match signal {
            Some(signal) => signal.recv().await.is_some(),
            None => false,
        };
        if !received {
            std::future::pending::<()>().await;
        }
    }
    let mut terminate = signal(SignalKind::terminate()).ok();
    let mut hangup = signal(SignalKind::hangup()).ok();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = next(&mut terminate) => return,
            _ = next(&mut hangup) => reload(broker, cli).await,
        }
    }
}

/// Reads the configuration again, as at start, and applies what can change without a
/// restart. A file that does not read, parse or validate changes nothing.
async fn reload(broker: &BrokerHandle, cli: &Cli) {
    tracing::info!(config = ?cli.config, "SIGHUP: reloading the configuration");
    let config = match load_config(cli) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "configuration reload refused, nothing changed");
            return;
        }
    };
    match broker.reload(config).await {
        Ok(report) => {
            if !report.need_restart.is_empty() {
                tracing::warn!(
                    keys = ?report.need_restart,
                    "configuration reload: these changes take effect only after a restart"
                );
            }
            tracing::info!(
                changed = ?report.changed,
                acl_reread = report.acl_reread,
                "configuration reloaded"
            );
        }
        Err(error) => {
            tracing::error!(%error, "configuration reload refused, nothing changed");
        }
    }
}
