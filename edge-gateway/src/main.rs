//! `edge-gateway`: parses the settings, then serves until SIGTERM.

use anyhow::Context as _;
use edge_gateway::Config;

fn main() -> anyhow::Result<()> {
    let config: Config = shared::config::parse_or_exit();
    shared::config::init_tracing(config.log_format);
    edge_gateway::run(config).context("edge-gateway")
}
