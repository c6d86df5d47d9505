//! The pipelined receive: posted buffers filled while the stack polls, copies in flight
//! across polls, and every guarantee of `recv` kept.

mod common;

use common::*;
use dmaengine::{Engine, FaultInjector, FaultPlan, SoftwareDevice};
use netdma::config::{Copybreak, NetDmaConfig};
use netdma::link::MemoryLink;
use netdma::pair::StackPair;
use netdma::pipeline::Pipeline;
use netdma::stack::Stack;
use netdma::{NetDma, RecvError};
use smoltcp::iface::SocketHandle;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Bed {
    pipeline: Pipeline<MemoryLink>,
    client: Stack<MemoryLink>,
    server_h: SocketHandle,
    client_h: SocketHandle,
}

fn bed(netdma: Arc<NetDma>) -> Bed {
    let mut pair = StackPair::new(65535);
    let (server_h, client_h) = pair.connect(MIB, MIB).unwrap();
    let StackPair { server, client, .. } = pair;
    Bed {
        pipeline: Pipeline::new(server, netdma),
        client,
        server_h,
        client_h,
    }
}

/// Streams `data` through the pipeline with posted buffers of `post` bytes.
#[track_caller]
fn pump(bed: &mut Bed, data: &[u8], post: usize) -> Vec<u8> {
    let mut sent = 0;
    let mut got = Vec::with_capacity(data.len());
    let mut posted = false;
    let mut idle = 0u64;
    while got.len() < data.len() {
        let mut progress = false;
        let sock = bed.client.tcp_mut(bed.client_h);
        if sent < data.len() && sock.can_send() {
            sent += sock.send_slice(&data[sent..]).unwrap();
            progress = true;
        }
        bed.client.poll();
        if !posted {
            let want = post.min(data.len() - got.len());
            bed.pipeline
                .post_recv(bed.server_h, vec![0; want], want)
                .unwrap();
            posted = true;
        }
        progress |= bed.pipeline.poll();
        if let Some(done) = bed.pipeline.take_completed(bed.server_h) {
            assert_eq!(done.error, None);
            got.extend_from_slice(&done.buf[..done.len]);
            posted = false;
            progress = true;
        }
        idle = if progress { 0 } else { idle + 1 };
        assert!(idle < 5_000_000, "stuck at {} of {}", got.len(), data.len());
    }
    got
}

fn config(copybreak: Copybreak) -> NetDmaConfig {
    NetDmaConfig {
        tcp_dma_copybreak: copybreak,
        ..NetDmaConfig::default()
    }
}

#[test]
fn pipelined_64mib_is_exact_and_offloaded() {
    let netdma = Arc::new(NetDma::from_config(config(Copybreak::Bytes(4096))).unwrap());
    let mut bed = bed(netdma.clone());
    let data = pattern(64 * MIB, 21);
    let got = pump(&mut bed, &data, MIB);
    assert_same(&got, &data);
    let s = netdma.stats();
    assert_eq!(s.total_bytes(), data.len() as u64);
    assert!(s.dma_bytes > 0);
    assert_eq!(s.bytes_in_flight, 0);
}

#[test]
fn posted_buffers_below_copybreak_use_the_cpu() {
    let netdma = Arc::new(NetDma::from_config(config(Copybreak::Bytes(MIB))).unwrap());
    let mut bed = bed(netdma.clone());
    let data = pattern(4 * MIB, 22);
    let got = pump(&mut bed, &data, 65536);
    assert_same(&got, &data);
    let s = netdma.stats();
    assert_eq!(s.dma_bytes, 0);
    assert_eq!(s.fallback_bytes.below_copybreak, data.len() as u64);
}

#[test]
fn failing_every_third_transfer_is_redone_by_the_cpu() {
    let device = FaultInjector::new(
        SoftwareDevice::builder().channels(2).build(),
        FaultPlan {
            fail_every: Some(3),
            ..FaultPlan::default()
        },
    );
    let engine = Engine::new();
    engine.register_device(device.clone()).unwrap();
    let netdma = Arc::new(NetDma::new(engine, config(Copybreak::Bytes(4096))).unwrap());
    let mut bed = bed(netdma.clone());
    let data = pattern(16 * MIB, 23);
    let got = pump(&mut bed, &data, MIB);
    assert_same(&got, &data);
    let s = netdma.stats();
    assert!(device.faults_injected() > 0);
    assert!(s.fallback.channel_error >= device.faults_injected());
    assert_eq!(s.total_bytes(), data.len() as u64);
}

#[test]
fn toggling_offload_while_copies_are_in_flight_loses_nothing() {
    let netdma = Arc::new(NetDma::from_config(config(Copybreak::Bytes(4096))).unwrap());
    let mut bed = bed(netdma.clone());
    let data = pattern(32 * MIB, 24);
    let stop = Arc::new(AtomicBool::new(false));
    let toggler = {
        let (netdma, stop) = (netdma.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(2));
                if netdma.is_enabled() {
                    netdma.disable().unwrap();
                } else {
                    netdma.enable().unwrap();
                }
            }
        })
    };
    let got = pump(&mut bed, &data, MIB);
    stop.store(true, Ordering::Relaxed);
    toggler.join().unwrap();
    assert_same(&got, &data);
    if netdma.is_enabled() {
        netdma.disable().unwrap();
    }
    drop(bed);
    assert_eq!(netdma.engine().total_references(), 0);
    netdma
        .engine()
        .unregister_device(netdma.device().unwrap())
        .unwrap();
}

/// A bed whose only channel is stalled, with `pending` bytes waiting in the server's ring
/// and a posted read whose copies are in flight.
fn stalled_bed_with_copies_in_flight() -> (Bed, Arc<NetDma>, Vec<u8>) {
    let device = FaultInjector::new(
        SoftwareDevice::builder().channels(1).build(),
        FaultPlan::default(),
    );
    device.stall(0);
    let engine = Engine::new();
    engine.register_device(device).unwrap();
    let mut cfg = config(Copybreak::Bytes(4096));
    cfg.wait.timeout_ms = 50;
    let netdma = Arc::new(NetDma::new(engine, cfg).unwrap());
    let mut bed = bed(netdma.clone());
    let data = pattern(256 * 1024, 25);
    bed.client.tcp_mut(bed.client_h).send_slice(&data).unwrap();
    bed.pipeline
        .post_recv(bed.server_h, vec![0; MIB], MIB)
        .unwrap();
    for _ in 0..200 {
        bed.client.poll();
        bed.pipeline.poll();
    }
    assert!(
        netdma.stats().bytes_in_flight > 0,
        "copies should be stuck in flight"
    );
    (bed, netdma, data)
}

#[test]
fn aborting_a_socket_with_copies_in_flight_cancels_them_first() {
    let (mut bed, netdma, data) = stalled_bed_with_copies_in_flight();
    let read = bed.pipeline.abort(bed.server_h).expect("a read was posted");
    assert_same(&read.buf[..read.len], &data[..read.len]);
    assert_eq!(netdma.stats().bytes_in_flight, 0);
    assert!(bed
        .pipeline
        .with_socket(bed.server_h, |s| s.is_open())
        .is_some());
    // The socket is closed now: a new read reports it at once.
    bed.pipeline
        .post_recv(bed.server_h, vec![0; 4096], 4096)
        .unwrap();
    bed.pipeline.poll();
    let done = bed.pipeline.take_completed(bed.server_h).unwrap();
    assert_eq!(done.error, Some(RecvError::InvalidState));
}

#[test]
fn a_peer_reset_with_copies_in_flight_ends_the_read_with_an_error() {
    let (mut bed, netdma, _data) = stalled_bed_with_copies_in_flight();
    bed.client.tcp_mut(bed.client_h).abort(); // sends RST
    let mut done = None;
    // The stalled copy is cancelled after the 50 ms wait timeout; give it 10 s at most.
    for _ in 0..10_000 {
        std::thread::sleep(Duration::from_millis(1));
        bed.client.poll();
        bed.pipeline.poll();
        if let Some(d) = bed.pipeline.take_completed(bed.server_h) {
            done = Some(d);
            break;
        }
    }
    let state = bed.pipeline.state(bed.server_h);
    let done = done.unwrap_or_else(|| {
        panic!(
            "the read did not end after the reset; server {state}, stats {:?}",
            netdma.stats()
        )
    });
    assert_eq!(done.error, Some(RecvError::InvalidState));
    assert_eq!(netdma.stats().bytes_in_flight, 0);
}

#[test]
fn a_socket_with_a_posted_read_is_not_handed_out() {
    let netdma = Arc::new(NetDma::from_config(config(Copybreak::Bytes(4096))).unwrap());
    let mut bed = bed(netdma);
    bed.pipeline
        .post_recv(bed.server_h, vec![0; 4096], 4096)
        .unwrap();
    assert!(bed
        .pipeline
        .with_socket(bed.server_h, |s| s.abort())
        .is_none());
    assert!(matches!(
        bed.pipeline.post_recv(bed.server_h, vec![0; 10], 10),
        Err(netdma::pipeline::PostError::AlreadyPosted(b)) if b.len() == 10
    ));
}
