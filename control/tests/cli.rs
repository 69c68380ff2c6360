//! The CLI as a shell pipeline uses it.

use std::process::{Command, Stdio};

/// `trellis-control bootstrap ... | head -c 100`: a reader that stops
/// early ends the output quietly, exit 0, as Unix tools do.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_trellis-control"))
        .args(["bootstrap", "--mesh", "m", "--virtual-node", "a"])
        .args([
            "--xds-addr",
            "127.0.0.1:18000",
            "--xds-plaintext",
            "--no-token",
        ])
        .stdin(Stdio::null())
        .stdout(writer)
        .output()
        .expect("run trellis-control");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "nothing on stderr: {stderr}");
}
