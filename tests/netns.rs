//! The echo server against the Linux kernel's TCP, in network namespaces
//! (`scripts/netns-echo.sh`, over a veth pair with AF_PACKET and over a TAP).
//!
//! These need root and iproute2 (and ethtool for veth), so they are `#[ignore]`d: a plain
//! `cargo test` reports them as ignored, never as passed. Run them with
//!
//! ```text
//! cargo test --release --test netns -- --ignored --test-threads=1
//! ```
//!
//! (`scripts/test.sh` does, when it runs as root.) Run that way without root, they fail
//! with a message saying why, rather than pass without testing anything.

use std::path::PathBuf;
use std::process::Command;

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The target directory this test binary was built in (`<target>/<profile>/deps/netns-*`).
fn target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.to_path_buf())
}

fn run_script(args: &[&str]) {
    if !is_root() || !has("ip") {
        panic!(
            "SKIPPED is not a pass: the network-namespace echo tests need root and iproute2 \
             (`ip`); run them as root, e.g. through scripts/test.sh"
        );
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/netns-echo.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).args(args);
    if let Some(dir) = target_dir() {
        cmd.env("CARGO_TARGET_DIR", dir);
    }
    if let Ok(cargo) = std::env::var("CARGO") {
        cmd.env("CARGO", cargo);
    }
    let status = cmd.status().expect("running scripts/netns-echo.sh");
    assert!(
        status.success(),
        "scripts/netns-echo.sh {args:?} failed: {status}"
    );
}

#[test]
#[ignore = "needs root and iproute2: cargo test --release --test netns -- --ignored"]
fn echo_over_veth_with_linux_tcp_client() {
    run_script(&["veth"]);
}

#[test]
#[ignore = "needs root and iproute2: cargo test --release --test netns -- --ignored"]
fn echo_over_veth_mtu_9000() {
    run_script(&["veth", "--mtu", "9000"]);
}

#[test]
#[ignore = "needs root and iproute2: cargo test --release --test netns -- --ignored"]
fn echo_over_tap_with_linux_tcp_client() {
    run_script(&["tap"]);
}
