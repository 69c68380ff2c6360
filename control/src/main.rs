//! trellis-control: the App Mesh API, an xDS server, a CA and a sidecar injector.

mod cmd;

use std::process::ExitCode;

fn main() -> ExitCode {
    cmd::main()
}
