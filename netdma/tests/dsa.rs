//! The receive paths over the DSA provider on its descriptor-exact software portal:
//! byte-exact streams, page faults at random offsets finished by the CPU, an exhausted
//! work queue, and a stalled one.

mod common;

use common::*;
use dmaengine::dsa::{DsaDevice, EmulatedWq};
use dmaengine::{Engine, ProviderKind};
use netdma::config::{Copybreak, NetDmaConfig, ProviderKind as ConfigProvider};
use netdma::NetDma;
use std::sync::Arc;
use std::time::Duration;

fn config() -> NetDmaConfig {
    NetDmaConfig {
        tcp_dma_copybreak: Copybreak::Bytes(4096),
        ..NetDmaConfig::default()
    }
}

/// netdma over a DSA provider on `wq`.
fn over(wq: &Arc<EmulatedWq>, batch: bool, cfg: NetDmaConfig) -> (Arc<DsaDevice>, Arc<NetDma>) {
    let dev = DsaDevice::builder()
        .channels(2)
        .ring_size(64)
        .batch(batch)
        .emulated(wq.clone());
    let engine = Engine::new();
    engine.register_device(dev.clone()).unwrap();
    (dev, Arc::new(NetDma::new(engine, cfg).unwrap()))
}

fn recv_stream(netdma: &NetDma, data: &[u8]) -> Vec<u8> {
    let (mut pair, server, client) = connected(65535);
    stream_64k(&mut pair, server, client, netdma, data)
}

#[test]
fn recv_64mib_over_emulated_dsa_from_config_is_exact() {
    let mut cfg = config();
    cfg.engine.provider = ConfigProvider::Dsa;
    cfg.engine.dsa.emulate = true;
    let netdma = NetDma::from_config(cfg).unwrap();
    let snap = netdma.engine().snapshot();
    assert_eq!(snap.devices.len(), 1);
    assert_eq!(snap.devices[0].provider, ProviderKind::DsaEmulated);
    let data = pattern(64 * MIB, 0xd5a);
    let got = recv_stream(&netdma, &data);
    assert_same(&got, &data);
    let s = netdma.stats();
    assert_eq!(s.total_bytes(), data.len() as u64);
    assert!(s.dma_bytes > data.len() as u64 / 2, "{s:?}");
    assert_eq!(s.bytes_in_flight, 0);
    assert_eq!(s.fallback.channel_error + s.fallback.partial, 0, "{s:?}");
}

#[test]
fn pipelined_64mib_over_emulated_dsa_is_exact() {
    let wq = EmulatedWq::builder().size(64).build();
    let (dev, netdma) = over(&wq, true, config());
    let mut bed = bed(netdma.clone());
    let data = pattern(64 * MIB, 0xd5b);
    let got = pump(&mut bed, &data, MIB, 2);
    assert_same(&got, &data);
    let s = netdma.stats();
    assert_eq!(s.dma_bytes, data.len() as u64, "{s:?}");
    assert_eq!(s.bytes_in_flight, 0);
    // Several copies went out per doorbell.
    assert!(dev.stats().batches > 0, "{:?}", dev.stats());
    assert_eq!(wq.stats().overflowed, 0);
}

/// Page faults at random bytes: every faulted copy keeps the engine's prefix and the CPU
/// copies exactly the rest.
fn check_partial(s: &netdma::RecvStats, wq: &EmulatedWq, dev: &DsaDevice, len: usize) {
    let faults = wq.stats().page_faults;
    assert!(faults > 10, "too few faults to mean anything: {faults}");
    assert_eq!(s.fallback.partial, faults, "{s:?}");
    assert_eq!(dev.stats().partial_completions, faults);
    // The CPU copied less than the faulted chunks: their prefixes came from the engine.
    assert!(s.fallback_bytes.partial < faults * 64 * 1024, "{s:?}");
    assert!(s.fallback_bytes.partial > 0);
    assert_eq!(s.total_bytes(), len as u64);
    let cpu_reasons: u64 = netdma::Fallback::ALL
        .iter()
        .map(|&r| s.fallback_bytes.get(r))
        .sum();
    assert_eq!(s.cpu_bytes, cpu_reasons, "{s:?}");
    assert_eq!(s.fallback.channel_error, 0, "{s:?}");
}

#[test]
fn recv_page_faults_at_random_offsets_are_finished_by_the_cpu() {
    let wq = EmulatedWq::builder().build();
    wq.random_page_faults(0.2, 7);
    let (dev, netdma) = over(&wq, true, config());
    let data = pattern(16 * MIB, 0xfa17);
    let got = recv_stream(&netdma, &data);
    assert_same(&got, &data);
    check_partial(&netdma.stats(), &wq, &dev, data.len());
}

#[test]
fn pipelined_page_faults_at_random_offsets_are_finished_by_the_cpu() {
    let wq = EmulatedWq::builder().build();
    wq.random_page_faults(0.2, 8);
    let (dev, netdma) = over(&wq, true, config());
    let mut bed = bed(netdma.clone());
    let data = pattern(16 * MIB, 0xfa18);
    let got = pump(&mut bed, &data, 256 * 1024, 4);
    assert_same(&got, &data);
    check_partial(&netdma.stats(), &wq, &dev, data.len());
}

#[test]
fn an_exhausted_work_queue_sends_copies_to_the_cpu() {
    // Two entries and no batching: the third copy in flight finds the queue full.
    let wq = EmulatedWq::builder().size(2).build();
    let (dev, netdma) = over(&wq, false, config());
    let data = pattern(8 * MIB, 0xf011);
    let (mut pair, server, client) = connected(65535);
    let got = stream(&mut pair, server, client, &netdma, &data, || MIB, |_, _| {});
    assert_same(&got, &data);
    let s = netdma.stats();
    assert!(s.fallback.ring_full > 0, "{s:?}");
    assert!(s.dma_bytes > 0, "{s:?}");
    assert_eq!(s.total_bytes(), data.len() as u64);
    assert_eq!(dev.stats().ring_full, s.fallback.ring_full);
    assert_eq!(
        wq.stats().overflowed,
        0,
        "the provider overfilled the queue"
    );

    let (dev, netdma) = over(&wq, false, config());
    let mut bed = bed(netdma.clone());
    let got = pump(&mut bed, &data, MIB, 2);
    assert_same(&got, &data);
    let s = netdma.stats();
    assert!(s.fallback.ring_full > 0, "{s:?}");
    assert_eq!(dev.stats().ring_full, s.fallback.ring_full);
    assert_eq!(wq.stats().overflowed, 0);
}

#[test]
fn a_stalled_work_queue_times_out_to_the_cpu() {
    let wq = EmulatedWq::builder().build();
    let mut cfg = config();
    cfg.wait.timeout_ms = 30;
    let (_dev, netdma) = over(&wq, true, cfg.clone());
    wq.stall(Duration::from_millis(200));
    let data = pattern(4 * MIB, 0x57a1);
    let got = recv_stream(&netdma, &data);
    assert_same(&got, &data);
    let s = netdma.stats();
    assert!(s.fallback.timeout > 0, "{s:?}");
    assert_eq!(s.total_bytes(), data.len() as u64);
    assert_eq!(s.bytes_in_flight, 0);

    let (_dev, netdma) = over(&wq, true, cfg);
    wq.stall(Duration::from_millis(200));
    let mut bed = bed(netdma.clone());
    let got = pump(&mut bed, &data, 256 * 1024, 4);
    assert_same(&got, &data);
    let s = netdma.stats();
    assert!(s.fallback.timeout > 0, "{s:?}");
    assert_eq!(s.bytes_in_flight, 0);
}

#[test]
fn provider_dsa_and_auto_follow_what_discovery_finds() {
    use dmaengine::dsa::{probe, Probe, WqSelection};
    let mut dsa = config();
    dsa.engine.provider = ConfigProvider::Dsa;
    let mut auto = config();
    auto.engine.provider = ConfigProvider::Auto;
    let auto_kind = |n: &NetDma| n.engine().snapshot().devices[0].provider;
    match probe(&WqSelection::Any) {
        Probe::Absent(why) => {
            // "dsa" refuses to start and says exactly why; "auto" takes the software device.
            match NetDma::from_config(dsa) {
                Err(netdma::ControlError::Dsa(e)) => assert_eq!(e.to_string(), why.to_string()),
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("started a DSA provider without DSA"),
            }
            let n = NetDma::from_config(auto).unwrap();
            assert_eq!(auto_kind(&n), ProviderKind::Software);
        }
        Probe::Found(_) => {
            // A machine with DSA: "auto" takes it unless opening it is refused.
            let n = NetDma::from_config(auto).unwrap();
            assert!(matches!(
                auto_kind(&n),
                ProviderKind::Dsa | ProviderKind::Software
            ));
        }
    }
}
