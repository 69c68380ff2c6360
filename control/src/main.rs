//! trellis-control: the App Mesh API, an xDS server, a CA and a sidecar injector.

use clap::Parser;

#[derive(Parser)]
#[command(name = "trellis-control", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
