//! `netdmactl` against the embedded echo server while traffic flows: the administrator's
//! "remove the DMA driver under a running network service", step by step, on the
//! in-memory link (no privileges). The server is the echo server's own code
//! (`netdma_suite::echo`) with a control socket; every command is the real `netdmactl`
//! binary, checked by its exit status and output; every echoed byte is verified.

use netdma::config::Copybreak;
use netdma::ctl::CtlServer;
use netdma::NetDma;
use netdma_suite::echo::{run_embedded, EmbeddedOptions, EmbeddedOutcome};
use netdma_suite::setup::{build_netdma, DmaOptions};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What `netdmactl` did: exit status, stdout, stderr.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// An embedded echo run with a control socket, streaming until stopped.
struct Service {
    netdma: Arc<NetDma>,
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    run: Option<JoinHandle<Result<EmbeddedOutcome, String>>>,
    _server: CtlServer,
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// One echo service at a time: each keeps two threads busy streaming, and this machine's
/// cores are few.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Service {
    fn start(tag: &str) -> Service {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let netdma = Arc::new(
            build_netdma(&DmaOptions {
                copybreak: Some(Copybreak::Bytes(4096)),
                channels: Some(2),
                ..DmaOptions::default()
            })
            .unwrap(),
        );
        let socket = std::env::temp_dir().join(format!("ct-{tag}-{}.sock", std::process::id()));
        let server = CtlServer::bind(&socket, netdma.clone()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let opts = EmbeddedOptions {
            connections: 2,
            bytes_per_connection: u64::MAX,
            read_size: 65536,
            stop_sending: Some(stop.clone()),
            rx_buffer_factor: 4,
            ..EmbeddedOptions::default()
        };
        let run = {
            let netdma = netdma.clone();
            std::thread::spawn(move || run_embedded(&netdma, &opts, None))
        };
        Service {
            netdma,
            socket,
            stop,
            run: Some(run),
            _server: server,
            _turn: turn,
        }
    }

    fn ctl(&self, args: &[&str]) -> Out {
        let out = Command::new(env!("CARGO_BIN_EXE_netdmactl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running netdmactl");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `netdmactl stats --json`.
    fn stats(&self) -> Value {
        let out = self.ctl(&["stats", "--json"]);
        assert_eq!(out.code, 0, "stats: {}", out.stderr);
        out.json()
    }

    /// Waits until the counters satisfy `cond` (traffic is flowing, so they move);
    /// returns the stats that did. Bounded: a stuck stream fails the test.
    fn wait_stats(&self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = self.stats();
            if cond(&s) {
                return s;
            }
            assert!(
                !self.run.as_ref().is_some_and(JoinHandle::is_finished),
                "the echo run ended while waiting for {what}"
            );
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the traffic and checks every echoed byte came back intact and was read once.
    fn finish(mut self) -> EmbeddedOutcome {
        self.stop.store(true, Ordering::Release);
        let outcome = self.run.take().unwrap().join().unwrap().unwrap();
        let recv = self.netdma.stats();
        assert!(
            outcome.integrity_ok && outcome.errors.is_empty(),
            "{:?}; {recv:?}",
            outcome.errors
        );
        assert_eq!(
            recv.dma_bytes + recv.cpu_bytes,
            outcome.bytes_echoed,
            "every byte echoed was read exactly once: {recv:?}"
        );
        assert_eq!(recv.bytes_in_flight, 0);
        outcome
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(run) = self.run.take() {
            let _ = run.join();
        }
    }
}

/// Bytes by DMA in a `stats --json` snapshot (the top-level total, which must match the
/// receive counters').
fn dma(s: &Value) -> u64 {
    assert_eq!(s["dma_bytes"], s["recv"]["dma_bytes"], "top-level total");
    s["dma_bytes"].as_u64().unwrap()
}

/// Bytes by the CPU in a `stats --json` snapshot.
fn cpu(s: &Value) -> u64 {
    assert_eq!(s["cpu_bytes"], s["recv"]["cpu_bytes"], "top-level total");
    s["cpu_bytes"].as_u64().unwrap()
}

const MIB: u64 = 1 << 20;

#[test]
fn remove_the_dma_device_under_a_running_echo_service() {
    let svc = Service::start("rm");
    // No idle release: the offload must hold the device for as long as it is enabled.
    let out = svc.ctl(&["sysctl", "set", "net.netdma.idle_release_ms", "0"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "net.netdma.idle_release_ms = 0 (was 1000)\n");

    // Traffic flows through DMA.
    let s = svc.wait_stats("DMA traffic", |s| dma(s) > 8 * MIB);
    assert_eq!(s["enabled"], true);

    // The device, with its two channels, pinned by one client: netdma.
    let list = svc.ctl(&["dev", "list", "--json"]).json();
    let devs = list.as_array().unwrap();
    assert_eq!(devs.len(), 1, "{list}");
    assert_eq!(devs[0]["name"], "swdma");
    assert_eq!(devs[0]["id"], "dev0");
    assert_eq!(devs[0]["channels"], 2);
    assert_eq!(devs[0]["clients"], 1);
    assert_eq!(devs[0]["references"], 2);
    assert_eq!(devs[0]["netdma_holds"], true);
    let table = svc.ctl(&["dev", "list"]);
    assert_eq!(table.code, 0);
    assert!(table.stdout.contains("netdma offload"), "{}", table.stdout);

    // rmmod while in use: refused, naming the device and its holders.
    let out = svc.ctl(&["dev", "remove", "swdma"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot remove device swdma (dev0)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("pinned by 1 client(s)"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("dma disable"), "{}", out.stderr);
    assert_eq!(svc.ctl(&["dev", "list", "--json"]).json()[0]["clients"], 1);

    // Let go of the device.
    let out = svc.ctl(&["dma", "disable", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let st = out.json();
    assert_eq!(st["enabled"], false);
    assert_eq!(st["changed"], true);
    assert_eq!(st["references"], 0);
    let after_disable = svc.stats();
    assert_eq!(after_disable["holds_client"], false);

    // Now the removal goes through.
    let out = svc.ctl(&["dev", "remove", "swdma"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "device swdma (dev0) unregistered\n");
    assert_eq!(
        svc.ctl(&["dev", "list", "--json"]).json(),
        serde_json::json!([])
    );

    // The stream goes on, by the CPU only.
    let d0 = dma(&after_disable);
    let s = svc.wait_stats("CPU traffic after the removal", |s| {
        cpu(s) > cpu(&after_disable) + 16 * MIB
    });
    assert_eq!(dma(&s), d0, "no DMA after disable: {s}");
    assert!(
        s["recv"]["fallback"]["disabled"].as_u64().unwrap() > 0,
        "{s}"
    );

    // Enabling with no device left: accepted, and reads fall back cleanly.
    let out = svc.ctl(&["dma", "enable"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("netdma offload enabled"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("no DMA device is registered"),
        "{}",
        out.stdout
    );
    let enabled = svc.stats();
    let s = svc.wait_stats("CPU traffic with offload enabled and no device", |s| {
        cpu(s) > cpu(&enabled) + 16 * MIB
    });
    assert_eq!(dma(&s), d0);
    assert_eq!(s["enabled"], true);
    assert!(
        s["recv"]["fallback"]["no_channel"].as_u64().unwrap()
            > enabled["recv"]["fallback"]["no_channel"].as_u64().unwrap(),
        "{s}"
    );

    let human = svc.ctl(&["stats"]);
    assert_eq!(human.code, 0);
    assert!(
        human
            .stdout
            .contains("offload           enabled, copybreak 4096, 0 device(s)"),
        "{}",
        human.stdout
    );

    let outcome = svc.finish();
    assert!(outcome.bytes_echoed > 40 * MIB, "{}", outcome.bytes_echoed);
}

#[test]
fn sysctl_changes_the_routing_and_bad_values_change_nothing() {
    let svc = Service::start("sysctl");
    let out = svc.ctl(&["sysctl", "set", "net.netdma.idle_release_ms", "0"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    svc.wait_stats("DMA traffic", |s| dma(s) > 4 * MIB);

    // A copybreak above every read: everything goes to the CPU, as below_copybreak.
    let out = svc.ctl(&["sysctl", "set", "net.ipv4.tcp_dma_copybreak", "1048576"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "net.ipv4.tcp_dma_copybreak = 1048576 (was 4096)\n"
    );
    let set = svc.stats();
    assert_eq!(set["config"]["tcp_dma_copybreak"], 1048576);
    // The server reads on one thread: once 8 MiB went to the CPU, no read from before
    // the change is still running.
    let s1 = svc.wait_stats("CPU traffic", |s| cpu(s) > cpu(&set) + 8 * MIB);
    let s2 = svc.wait_stats("more CPU traffic", |s| cpu(s) > cpu(&s1) + 8 * MIB);
    assert_eq!(dma(&s2), dma(&s1), "no DMA above the copybreak: {s2}");
    assert!(
        s2["recv"]["fallback_bytes"]["below_copybreak"]
            .as_u64()
            .unwrap()
            >= set["recv"]["fallback_bytes"]["below_copybreak"]
                .as_u64()
                .unwrap()
                + 8 * MIB,
        "{s2}"
    );

    // Bad values and unknown keys: refused by name (exit 1), nothing changes.
    let before = svc.ctl(&["sysctl", "-a", "--json"]).json();
    for (args, needles) in [
        (
            ["sysctl", "set", "net.ipv4.tcp_dma_copybreak", "lots"],
            ["`net.ipv4.tcp_dma_copybreak`", "expected an integer"],
        ),
        (
            ["sysctl", "set", "net.netdma.max_inflight", "5000"],
            [
                "`net.netdma.max_inflight`",
                "out of range: accepted 1..=1024",
            ],
        ),
        (
            ["sysctl", "set", "net.netdma.engine.channels", "8"],
            ["`net.netdma.engine.channels`", "read-only"],
        ),
        (
            ["sysctl", "set", "net.ipv4.tcp_dma_copybrak", "1"],
            ["`net.ipv4.tcp_dma_copybrak`", "unknown configuration key"],
        ),
        (
            ["sysctl", "set", "net.ipv4.tcp_dma_copybreak", "-1"],
            ["`net.ipv4.tcp_dma_copybreak`", "invalid value `-1`"],
        ),
    ] {
        let out = svc.ctl(&args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        for n in needles {
            assert!(out.stderr.contains(n), "{args:?}: {}", out.stderr);
        }
        assert!(out.stdout.is_empty(), "{}", out.stdout);
    }
    assert_eq!(svc.ctl(&["sysctl", "-a", "--json"]).json(), before);
    let out = svc.ctl(&["sysctl", "get", "net.ipv4.tcp_dma_copybreak"]);
    assert_eq!(out.stdout, "net.ipv4.tcp_dma_copybreak = 1048576\n");

    // Back to 4096: DMA again.
    let out = svc.ctl(&["sysctl", "set", "net.ipv4.tcp_dma_copybreak", "4096"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    svc.wait_stats("DMA traffic again", |s| dma(s) > dma(&s2) + 4 * MIB);

    // Usage errors are exit 2.
    assert_eq!(svc.ctl(&["sysctl"]).code, 2);
    assert_eq!(svc.ctl(&["sysctl", "frobnicate"]).code, 2);
    assert_eq!(svc.ctl(&["stats", "--watch", "0"]).code, 2);
    svc.finish();
}

#[test]
fn forced_removal_under_traffic_falls_back_to_the_cpu() {
    let svc = Service::start("force");
    let out = svc.ctl(&["sysctl", "set", "net.netdma.idle_release_ms", "0"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    svc.wait_stats("DMA traffic", |s| dma(s) > 4 * MIB);
    let out = svc.ctl(&["dev", "remove", "dev0", "--force", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(r["forced"], true);
    assert_eq!(r["references_dropped"], 2);
    let removed = svc.stats();
    assert_eq!(removed["enabled"], true, "offload stays enabled");
    let s = svc.wait_stats("CPU traffic after the forced removal", |s| {
        cpu(s) > cpu(&removed) + 16 * MIB
    });
    assert!(
        s["recv"]["fallback"]["no_channel"].as_u64().unwrap() > 0,
        "{s}"
    );
    // Watching: three samples, one JSON object each.
    let out = svc.ctl(&["stats", "--watch", "0.05", "--count", "3", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["recv"]["cpu_bytes"].is_u64()));
    svc.finish();
}

#[test]
fn no_server_is_a_connection_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_netdmactl"))
        .args(["--socket", "/nonexistent/ct.sock", "dev", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/ct.sock"), "{err}");
}
