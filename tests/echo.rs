//! The embedded echo (the `echo_server` example's default run) as a library call: a
//! smoltcp echo server reading through netdma and a smoltcp client over the in-memory
//! link, every echoed byte verified.

use netdma::config::Copybreak;
use netdma_suite::echo::{run_embedded, EmbeddedOptions};
use netdma_suite::report::EchoReport;
use netdma_suite::setup::{build_netdma, DmaOptions};

fn options(read_size: usize) -> EmbeddedOptions {
    EmbeddedOptions {
        connections: 4,
        bytes_per_connection: 4 << 20,
        read_size,
        ..EmbeddedOptions::default()
    }
}

fn run(dma: DmaOptions, opts: &EmbeddedOptions) -> EchoReport {
    let netdma = std::sync::Arc::new(build_netdma(&dma).expect("netdma from defaults"));
    let outcome = run_embedded(&netdma, opts, None).expect("embedded echo set-up");
    EchoReport::embedded(&netdma, opts, outcome)
}

/// Offload with Linux's fixed copybreak (4096), so large reads go to DMA.
fn linux_copybreak() -> DmaOptions {
    DmaOptions {
        copybreak: Some(Copybreak::Bytes(4096)),
        ..DmaOptions::default()
    }
}

fn assert_clean(r: &EchoReport, opts: &EmbeddedOptions) {
    let total = opts.bytes_per_connection * opts.connections as u64;
    assert!(r.integrity_ok, "integrity: {:?}", r.errors);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.bytes_echoed, total);
    assert_eq!(
        r.recv.dma_bytes + r.recv.cpu_bytes,
        total,
        "every byte the server read is counted once: {:?}",
        r.recv
    );
    assert_eq!(r.recv.bytes_in_flight, 0);
    let a = &r.after_disable;
    assert!(a.disable_ok, "{a:?}");
    assert!(
        a.unregister_ok,
        "unregister after disable must succeed: {a:?}"
    );
    assert_eq!(a.engine_references, 0, "{a:?}");
    assert_eq!(a.devices_left, 0, "{a:?}");
}

#[test]
fn echo_with_copybreak_4096_goes_through_dma() {
    let opts = options(65536);
    let r = run(linux_copybreak(), &opts);
    assert_clean(&r, &opts);
    assert!(r.recv.dma_bytes > 0, "{:?}", r.recv);
    assert!(r.after_disable.was_enabled);
    let moved: u64 = r
        .engine
        .devices
        .iter()
        .flat_map(|d| d.channels.iter())
        .map(|c| c.counters.bytes_transferred)
        .sum();
    assert!(
        moved >= r.recv.dma_bytes,
        "channel counters {moved} vs {:?}",
        r.recv
    );
}

#[test]
fn pipelined_echo_goes_through_dma_and_is_exact() {
    let opts = EmbeddedOptions {
        pipelined: true,
        ..options(65536)
    };
    let r = run(linux_copybreak(), &opts);
    assert_clean(&r, &opts);
    assert_eq!(r.receive, netdma_suite::report::ReceivePath::Pipelined);
    assert!(r.recv.dma_bytes > 0, "{:?}", r.recv);
    // The same with reads smaller than the chunk size, several per connection posted.
    let opts = EmbeddedOptions {
        pipelined: true,
        mtu: 1500,
        ..options(16 * 1024)
    };
    let r = run(linux_copybreak(), &opts);
    assert_clean(&r, &opts);
}

#[test]
fn echo_without_dma_copies_everything_by_cpu() {
    let opts = options(65536);
    let r = run(
        DmaOptions {
            no_dma: true,
            ..DmaOptions::default()
        },
        &opts,
    );
    assert_clean(&r, &opts);
    assert_eq!(r.recv.dma_bytes, 0, "{:?}", r.recv);
    assert!(r.recv.fallback.disabled > 0, "{:?}", r.recv);
}

#[test]
fn echo_with_reads_below_copybreak_stays_on_cpu() {
    let opts = EmbeddedOptions {
        mtu: 1500,
        bytes_per_connection: 1 << 20,
        ..options(1000)
    };
    let r = run(
        DmaOptions {
            channels: Some(1),
            ..linux_copybreak()
        },
        &opts,
    );
    assert_clean(&r, &opts);
    assert_eq!(r.recv.dma_bytes, 0, "{:?}", r.recv);
    assert!(r.recv.fallback.below_copybreak > 0, "{:?}", r.recv);
}

#[test]
fn unregister_is_refused_while_offload_is_enabled() {
    let netdma = build_netdma(&DmaOptions::default()).expect("netdma");
    let device = netdma.device().expect("a registered device");
    assert!(netdma.engine().unregister_device(device).is_err());
    let r = EchoReport::embedded(
        &netdma,
        &options(65536),
        netdma_suite::echo::EmbeddedOutcome {
            integrity_ok: true,
            bytes_echoed: 0,
            elapsed: std::time::Duration::ZERO,
            errors: Vec::new(),
        },
    );
    assert!(r.after_disable.unregister_ok, "{:?}", r.after_disable);
}

#[test]
fn json_report_has_the_documented_keys() {
    let opts = EmbeddedOptions {
        connections: 2,
        bytes_per_connection: 256 << 10,
        ..options(65536)
    };
    let r = run(DmaOptions::default(), &opts);
    assert_clean(&r, &opts);
    let v = serde_json::to_value(&r).expect("serializable");
    for key in [
        "integrity_ok",
        "bytes_echoed",
        "throughput_gbps",
        "recv",
        "engine",
        "after_disable",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert!(v["integrity_ok"].is_boolean());
    assert!(v["recv"]["dma_bytes"].is_u64());
    assert!(v["recv"]["cpu_bytes"].is_u64());
    assert!(v["recv"]["fallback"]["below_copybreak"].is_u64());
    assert!(v["engine"]["devices"].is_array());
    assert_eq!(v["after_disable"]["unregister_ok"], serde_json::json!(true));
}

#[test]
fn a_corrupted_echo_is_detected() {
    // The verifier itself: a flipped byte is reported at its stream offset.
    let mut data = vec![0u8; 10_000];
    netdma_suite::pattern::fill(9, 123, &mut data);
    let mut scratch = Vec::new();
    assert_eq!(
        netdma_suite::pattern::verify(9, 123, &data, &mut scratch),
        None
    );
    data[4321] ^= 0x40;
    assert_eq!(
        netdma_suite::pattern::verify(9, 123, &data, &mut scratch),
        Some(123 + 4321)
    );
}

#[test]
fn every_accepted_mtu_completes_a_4_x_1mib_echo_with_and_without_dma() {
    // The in-memory link pushes back when its queue is full instead of dropping, so no
    // MTU, however small, leaves TCP waiting on loss recovery. The stall detector is
    // generous (it catches a hang, not a slow run); nothing here is timed.
    for mtu in [
        68, 69, 100, 296, 576, 1000, 1280, 1500, 4000, 9000, 16384, 65535,
    ] {
        for no_dma in [false, true] {
            let opts = EmbeddedOptions {
                mtu,
                bytes_per_connection: 1 << 20,
                stall_timeout: std::time::Duration::from_secs(20),
                ..options(65536)
            };
            let r = run(
                DmaOptions {
                    no_dma,
                    ..linux_copybreak()
                },
                &opts,
            );
            assert!(
                r.errors.is_empty(),
                "MTU {mtu}, no_dma {no_dma}: {:?}",
                r.errors
            );
            assert_clean(&r, &opts);
            if no_dma {
                assert_eq!(r.recv.dma_bytes, 0, "MTU {mtu}: {:?}", r.recv);
            }
        }
    }
}

/// 64 smoltcp clients connect at once to a server whose pool keeps `spare` sockets
/// listening and holds at most `max` sockets; returns (established, refused) clients.
fn connection_burst(spare: usize, max: usize) -> (usize, usize) {
    use netdma::pair::{StackPair, SERVER_ADDR};
    use netdma_suite::listeners::ListenerPool;
    use smoltcp::socket::tcp::State;
    let StackPair {
        mut server,
        mut client,
        ..
    } = StackPair::new(1500);
    let mut pool = ListenerPool::new(7000, spare, max, 4096, 1024);
    pool.replenish(server.sockets_mut());
    let handles: Vec<_> = (0..64u16)
        .map(|i| {
            let h = client.add_tcp_socket(4096, 4096);
            client
                .tcp_connect(h, (SERVER_ADDR, 7000), 40000 + i)
                .unwrap();
            h
        })
        .collect();
    let mut settled = (0, 0);
    for _ in 0..100_000 {
        client.poll();
        server.poll_each(|sockets| pool.replenish(sockets));
        let states: Vec<State> = handles.iter().map(|&h| client.tcp_mut(h).state()).collect();
        let established = states.iter().filter(|&&s| s == State::Established).count();
        let refused = states.iter().filter(|&&s| s == State::Closed).count();
        settled = (established, refused);
        if established + refused == handles.len() {
            break;
        }
    }
    assert!(pool.slots.len() <= max, "{} sockets", pool.slots.len());
    assert_eq!(pool.peak_connections, settled.0.min(max));
    assert!(pool.per_connection_bytes() >= 2 * 4096 + 1024);
    settled
}

#[test]
fn a_burst_of_connections_is_accepted_by_a_growing_listener_pool() {
    // Two listeners kept ready, room for 100: the pool grows between received frames, so
    // every SYN of the burst finds a listener.
    assert_eq!(connection_burst(2, 100), (64, 0));
}

#[test]
fn connections_beyond_the_maximum_are_refused() {
    assert_eq!(connection_burst(2, 10), (10, 54));
}
