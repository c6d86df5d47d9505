//! Building a [`NetDma`] from a config file, `NETDMA_*` variables and command-line flags.

use netdma::config::{Copybreak, NetDmaConfig};
use netdma::NetDma;
use std::path::PathBuf;

/// The offload settings every example takes on its command line.
#[derive(Clone, Debug, Default)]
pub struct DmaOptions {
    /// A `netdma.toml` to load (`NETDMA_*` variables apply on top either way).
    pub config: Option<PathBuf>,
    /// Overrides `tcp_dma_copybreak`.
    pub copybreak: Option<Copybreak>,
    /// Turns offload off (`enabled = false`).
    pub no_dma: bool,
    /// Overrides `engine.channels`.
    pub channels: Option<usize>,
}

/// The configuration the options describe: file (or defaults), then the environment, then
/// the flags. Errors name the file or key at fault.
pub fn load_config(opts: &DmaOptions) -> Result<NetDmaConfig, String> {
    let mut config =
        NetDmaConfig::load_with_env(opts.config.as_deref()).map_err(|e| match &opts.config {
            Some(p) => format!("configuration {}: {e}", p.display()),
            None => format!("configuration: {e}"),
        })?;
    if let Some(cb) = opts.copybreak {
        config.tcp_dma_copybreak = cb;
    }
    if opts.no_dma {
        config.enabled = false;
    }
    if let Some(ch) = opts.channels {
        config.engine.channels = ch;
    }
    config
        .validate()
        .map_err(|e| format!("invalid setting: {e}"))?;
    Ok(config)
}

/// Builds the engine, its software DMA device and the offload.
pub fn build_netdma(opts: &DmaOptions) -> Result<NetDma, String> {
    let config = load_config(opts)?;
    NetDma::from_config(config).map_err(|e| format!("starting netdma: {e}"))
}

/// Sends the program's `tracing` output to stderr, filtered by `RUST_LOG` (default: errors
/// only). Does nothing if a subscriber is already installed.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
}
