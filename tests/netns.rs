//! The echo server against the Linux kernel's TCP, in network namespaces
//! (`scripts/netns-echo.sh`, over a veth pair with AF_PACKET, over a TAP, and through a
//! faulty wire).
//!
//! The kernel peer keeps its default offloads (TSO, partial checksums): the tests check
//! that the link received and sent super-frames larger than the MTU. One test turns the
//! peer's offloads off (through the SIOCETHTOOL ioctl, no tool needed), so every frame
//! arrives complete and without checksum flags, and checks that the link verified them.
//! The faulty-wire test forwards frames through `link_tool faulty-wire` (seeded drops,
//! duplicates, reordering, corruption) and checks that every byte still comes back and
//! that the link refused and counted the corrupted frames.
//!
//! These need root and iproute2, so they are `#[ignore]`d: a plain
//! `cargo test` reports them as ignored, never as passed. Run them with
//!
//! ```text
//! cargo test --release --test netns -- --ignored --test-threads=1
//! ```
//!
//! (`scripts/test.sh` does, when it runs as root.) Run that way without root, they fail
//! with a message saying why, rather than pass without testing anything.

mod common;

use common::{has, is_root, target_dir};
use std::path::PathBuf;
use std::process::Command;

/// `scripts/netns-echo.sh args`, built where this test was, by this test's cargo; refuses
/// (fails the test) without root or iproute2.
fn script(args: &[&str]) -> Command {
    if !is_root() || !has("ip") {
        panic!(
            "SKIPPED is not a pass: the network-namespace echo tests need root and iproute2 \
             (`ip`); run them as root, e.g. through scripts/test.sh"
        );
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/netns-echo.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).args(args);
    cmd.env("CARGO_TARGET_DIR", target_dir());
    if let Ok(cargo) = std::env::var("CARGO") {
        cmd.env("CARGO", cargo);
    }
    cmd
}

fn run_script(args: &[&str]) {
    let mut cmd = script(args);
    let status = cmd.status().expect("running scripts/netns-echo.sh");
    assert!(
        status.success(),
        "scripts/netns-echo.sh {args:?} failed: {status}"
    );
}

#[test]
#[ignore = "needs root and iproute2: cargo test --release --test netns -- --ignored"]
fn echo_over_veth_with_linux_tcp_client() {
    run_script(&["veth", "--expect-gso"]);
}

#[test]
#[ignore = "needs root and iproute2: cargo test --release --test netns -- --ignored"]
fn echo_over_veth_mtu_9000() {
    run_script(&["veth", "--mtu", "9000", "--expect-gso"]);
}

#[test]
#[ignore = "needs root and iproute2: cargo test --release --test netns -- --ignored"]
fn echo_over_tap_with_linux_tcp_client() {
    run_script(&["tap", "--expect-gso"]);
}

#[test]
#[ignore = "needs root and iproute2: cargo test --release --test netns -- --ignored"]
fn echo_over_tap_mtu_9000() {
    run_script(&["tap", "--mtu", "9000", "--expect-gso"]);
}

/// The peer with its transmit offloads off: complete frames without checksum flags,
/// every one verified by the link.
#[test]
#[ignore = "needs root and iproute2: cargo test --release --test netns -- --ignored"]
fn echo_over_veth_peer_offloads_off() {
    run_script(&["veth", "--peer-offloads", "off"]);
}

/// Drops, duplicates, reordering and corrupted bytes on the wire: the echo stays exact,
/// and the corrupted frames are refused and counted by the link.
#[test]
#[ignore = "needs root and iproute2: cargo test --release --test netns -- --ignored"]
fn echo_through_faulty_wire() {
    for seed in ["7", "1234"] {
        run_script(&["faulty", "--bytes", "2MiB", "--seed", seed]);
    }
}

/// The echo server reading through the pipelined receive on a real link, every read
/// offloaded (copybreak 4096): the kernel client gets every byte back, the server
/// counts them all as copied by DMA, and its engine references are back to zero.
#[test]
#[ignore = "needs root and iproute2: cargo test --release --test netns -- --ignored"]
fn pipelined_echo_over_veth_by_dma() {
    let (client, server) = run_script_reports(&[
        "veth",
        "--bytes",
        "8MiB",
        "--",
        "--pipelined",
        "--copybreak",
        "4096",
    ]);
    let total = 4 * (8u64 << 20);
    assert_eq!(client["integrity_ok"], true, "{client}");
    assert_eq!(client["bytes_echoed"], total, "{client}");
    assert_eq!(server["receive"], "pipelined");
    assert_eq!(server["bytes_echoed"], total, "{}", server["errors"]);
    assert_eq!(server["recv"]["dma_bytes"], total, "{}", server["recv"]);
    assert_eq!(server["recv"]["cpu_bytes"], 0, "{}", server["recv"]);
    assert_eq!(server["after_disable"]["engine_references"], 0);
}

/// Runs scripts/netns-echo.sh with `args` like [`run_script`], and returns the client's
/// and the server's JSON reports (the script prints them as `client: {...}` and
/// `server: {...}`).
fn run_script_reports(args: &[&str]) -> (serde_json::Value, serde_json::Value) {
    let mut cmd = script(args);
    cmd.stderr(std::process::Stdio::inherit());
    let out = cmd.output().expect("running scripts/netns-echo.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(
        out.status.success(),
        "scripts/netns-echo.sh {args:?} failed: {}",
        out.status
    );
    let report = |who: &str| -> serde_json::Value {
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{who}: ")))
            .unwrap_or_else(|| panic!("no {who} report in the script's output"));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{who} report: {e}: {line}"))
    };
    (report("client"), report("server"))
}

#[test]
#[ignore = "needs root and iproute2: cargo test --release --test netns -- --ignored"]
fn echo_over_veth_256_concurrent_kernel_clients_all_accepted() {
    // 256 Linux TCP clients connect at once (a SYN burst) and echo 1 MiB each: every
    // connection is accepted (the listener pool grows between received frames), every
    // byte verified by the clients, and the server reports its peak memory.
    let clients = 256u64;
    let bytes = 1u64 << 20;
    let (client, server) = run_script_reports(&[
        "veth",
        "--connections",
        "256",
        "--bytes",
        "1MiB",
        "--",
        "--socket-buffer",
        "256KiB",
    ]);
    assert_eq!(client["integrity_ok"], true, "{client}");
    assert_eq!(client["errors"], serde_json::json!([]), "{client}");
    assert_eq!(client["refused"], 0, "connections refused: {client}");
    assert_eq!(client["bytes_echoed"], clients * bytes, "{client}");
    assert_eq!(server["integrity_ok"], true, "{}", server["errors"]);
    assert_eq!(server["connections"], clients, "connections served");
    assert_eq!(server["bytes_echoed"], clients * bytes);
    let memory = &server["memory"];
    let peak = memory["peak_connections"]
        .as_u64()
        .expect("peak_connections");
    assert!(
        peak <= memory["max_connections"].as_u64().unwrap(),
        "{memory}"
    );
    let per_connection = memory["per_connection_bytes"].as_u64().unwrap();
    assert!(per_connection >= 2 * 256 * 1024, "{memory}");
    println!(
        "256 clients: peak {peak} connections at once, {per_connection} B per connection, \
         server peak RSS {} B",
        memory["peak_rss_bytes"]
    );
}
