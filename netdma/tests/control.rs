//! The run-time controls under concurrency: `set`, `enable` and `disable` from several
//! threads never lose an update.

use netdma::{NetDma, NetDmaConfig};
use std::sync::Arc;
use std::thread;

const ROUNDS: usize = 2000;

/// Each thread owns one key: whatever the others do, reading its key right after setting
/// it must give back its own value, and at the end every key holds its last value.
#[test]
fn concurrent_sets_never_lose_an_update() {
    let netdma = Arc::new(NetDma::from_config(NetDmaConfig::default()).unwrap());
    let keys = [
        ("net.netdma.chunk_size", 64usize),
        ("net.netdma.max_inflight", 1),
        ("net.netdma.idle_release_ms", 0),
        ("net.netdma.wait_timeout_ms", 1),
    ];
    let workers: Vec<_> = keys
        .iter()
        .map(|&(key, base)| {
            let netdma = netdma.clone();
            thread::spawn(move || {
                for i in 0..ROUNDS {
                    let value = (base + i % 1000).to_string();
                    netdma.set(key, &value).unwrap();
                    assert_eq!(netdma.get(key).unwrap(), value, "{key} lost an update");
                }
            })
        })
        .collect();
    // Meanwhile offload is switched off and on: the other keys must survive it, and the
    // configuration's `enabled` must match the state.
    for _ in 0..200 {
        netdma.disable().unwrap();
        netdma.enable().unwrap();
    }
    for w in workers {
        w.join().unwrap();
    }
    for (key, base) in keys {
        assert_eq!(
            netdma.get(key).unwrap(),
            (base + (ROUNDS - 1) % 1000).to_string()
        );
    }
    assert!(netdma.is_enabled());
    assert_eq!(netdma.get("net.netdma.enabled").unwrap(), "1");
}

/// `set("net.netdma.enabled", ...)` racing `disable`/`enable` leaves the configuration
/// agreeing with the state.
#[test]
fn enabled_key_agrees_with_state_after_racing_toggles() {
    let netdma = Arc::new(NetDma::from_config(NetDmaConfig::default()).unwrap());
    let setter = {
        let netdma = netdma.clone();
        thread::spawn(move || {
            for i in 0..ROUNDS {
                netdma
                    .set("net.netdma.enabled", if i % 2 == 0 { "0" } else { "1" })
                    .unwrap();
                netdma
                    .set("net.netdma.chunk_size", &(4096 + i).to_string())
                    .unwrap();
            }
        })
    };
    for _ in 0..ROUNDS / 4 {
        let _ = netdma.disable();
        let _ = netdma.enable();
    }
    setter.join().unwrap();
    let want = if netdma.is_enabled() { "1" } else { "0" };
    assert_eq!(netdma.get("net.netdma.enabled").unwrap(), want);
    assert_eq!(
        netdma.get("net.netdma.chunk_size").unwrap(),
        (4096 + ROUNDS - 1).to_string()
    );
    // Whatever the final state, disabling drops every reference.
    let _ = netdma.disable();
    assert_eq!(netdma.engine().total_references(), 0);
}
