//! The quickstart demo (`examples/run-demo` runs the `trellis-demo` binary):
//! started for a bounded time, it must carry traffic through the gateway,
//! the frontend's sidecar and both backend sidecars over mTLS, show the
//! canary shift from v1 to v2 with no failed request, and exit 0 on SIGINT
//! after stopping everything it started.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use regex::Regex;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use trellis_tests::client;
use trellis_tests::process::workspace_bin;

/// A base port with the 100 ports above it free right now.
fn free_base() -> u16 {
    let start = 20000 + (std::process::id() % 200) as u16 * 100;
    (0..100u16)
        .map(|i| 20000 + (start - 20000 + i * 100) % 20000)
        .find(|base| (*base..*base + 100).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()))
        .expect("a free block of 100 loopback ports")
}

/// The numbers on a demo report line, by label.
fn hops(line: &str) -> Vec<u64> {
    Regex::new(r"in (\d+)")
        .expect("regex")
        .captures_iter(line)
        .map(|c| c[1].parse().expect("number"))
        .collect()
}

#[tokio::test]
async fn the_demo_meshes_shifts_and_exits_cleanly() {
    let proxy = workspace_bin("trellis-proxy");
    let bins = proxy.parent().expect("bin dir").to_path_buf();
    let base = free_base();
    let mut demo = Command::new(workspace_bin("trellis-demo"))
        .arg("--bin-dir")
        .arg(&bins)
        .args([
            "--base-port",
            &base.to_string(),
            "--step-secs",
            "3",
            "--rate",
            "25",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start trellis-demo");
    let mut lines = BufReader::new(demo.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let mut reports_after_shift = 0;
    let read = async {
        while let Some(line) = lines.next_line().await.expect("demo output") {
            println!("{line}");
            if line.contains("weights v1/v2   0/100") {
                reports_after_shift += 1;
            }
            seen.push(line);
            if reports_after_shift == 2 {
                return;
            }
        }
        panic!("the demo stopped before the canary finished");
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("the demo reaches the end of its canary in time");

    // The frontend's sidecar takes only mTLS: plain text is refused.
    let plain = client::get(&format!("http://127.0.0.1:{}/", base + 20)).await;
    assert!(
        plain.map_or(true, |r| r.status != 200),
        "the frontend sidecar's STRICT listener answered plain text"
    );

    let pid = demo.id().expect("demo pid") as i32;
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let rest = async {
        while let Some(line) = lines.next_line().await.expect("demo output") {
            println!("{line}");
            seen.push(line);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), rest)
        .await
        .expect("the demo stops after SIGINT");
    let status = tokio::time::timeout(Duration::from_secs(10), demo.wait())
        .await
        .expect("the demo exits")
        .expect("exit status");
    assert!(status.success(), "the demo exited with {status}");

    let text = seen.join("\n");
    for step in ["90/10", "50/50", "0/100"] {
        assert!(
            text.contains(&format!("canary: route weights now v1/v2 {step}")),
            "no canary step {step}:\n{text}"
        );
    }
    // Every hop carried traffic: gateway, frontend sidecar, both backends.
    let last = seen
        .iter()
        .rev()
        .find(|l| l.contains("hops:"))
        .expect("a hops line");
    let counts = hops(last);
    assert_eq!(counts.len(), 4, "gateway, frontend, v1, v2 in {last}");
    assert!(
        counts.iter().all(|n| *n > 0),
        "a hop saw no request: {last}"
    );
    // After the shift to 0/100, only v2 answers.
    let final_window = seen
        .iter()
        .rev()
        .find(|l| l.contains("weights v1/v2   0/100"))
        .expect("a report after the shift");
    assert!(
        final_window.contains("v1   0 v2"),
        "v1 still served after 0/100: {final_window}"
    );
    assert!(
        text.contains(" 0 failed.") && text.contains("Cleaned up."),
        "{text}"
    );
    // Nothing it started is left listening.
    for port in [base, base + 1, base + 2, base + 20, base + 90] {
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} still held after the demo exited"
        );
    }
}
