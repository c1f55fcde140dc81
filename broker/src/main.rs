//! The `rookery` binary: configuration from file, environment and flags, then the broker
//! until SIGINT or SIGTERM.

use clap::Parser;
use rookery::Config;
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let mut config = Config::load(cli.config.as_deref(), std::env::vars())?;
    if let Some(dir) = cli.data_dir {
        config.storage.data_dir = dir;
    }
    if let Some(addr) = cli.mqtt_listen {
        config.mqtt.listen = addr;
    }
    if let Some(addr) = cli.http_listen {
        config.http.listen = addr;
    }
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
        wait_for_signal().await;
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

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
