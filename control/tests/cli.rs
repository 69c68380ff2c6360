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

/// Without a data dir to sign API calls with, a bootstrap that needs the
/// node's token says why it asks the API and which flags do without it.
#[test]
fn bootstrap_without_api_credentials_names_the_flags_that_do_without() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_trellis-control"))
        .args(["bootstrap", "--mesh", "m", "--virtual-node", "a"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run trellis-control");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("node's token") && stderr.contains("--no-token"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no bootstrap printed");
}
