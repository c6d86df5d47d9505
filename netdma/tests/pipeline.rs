//! The pipelined receive: posted buffers filled while the stack polls, copies in flight
//! across polls, and every guarantee of `recv` kept.

mod common;

use common::*;
use dmaengine::{Engine, FaultInjector, FaultPlan, SoftwareDevice};
use netdma::config::{Copybreak, NetDmaConfig};
use netdma::link::MemoryLink;
use netdma::pair::StackPair;
use netdma::pipeline::{Pipeline, PostError, MAX_POSTED};
use netdma::stack::Stack;
use netdma::{NetDma, RecvError};
use smoltcp::iface::SocketHandle;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn config(copybreak: Copybreak) -> NetDmaConfig {
    NetDmaConfig {
        tcp_dma_copybreak: copybreak,
        ..NetDmaConfig::default()
    }
}

type FaultyDevice = FaultInjector<SoftwareDevice>;

/// netdma with `cfg` over a software device of `channels` channels behind a fault
/// injector following `plan`.
fn faulty(channels: usize, plan: FaultPlan, cfg: NetDmaConfig) -> (Arc<FaultyDevice>, Arc<NetDma>) {
    let device = FaultInjector::new(SoftwareDevice::builder().channels(channels).build(), plan);
    let engine = Engine::new();
    engine.register_device(device.clone()).unwrap();
    (device, Arc::new(NetDma::new(engine, cfg).unwrap()))
}

#[test]
fn pipelined_64mib_is_exact_and_offloaded() {
    let netdma = Arc::new(NetDma::from_config(config(Copybreak::Bytes(4096))).unwrap());
    let mut bed = bed(netdma.clone());
    let data = pattern(64 * MIB, 21);
    let got = pump(&mut bed, &data, MIB, 1);
    assert_same(&got, &data);
    let s = netdma.stats();
    assert_eq!(s.total_bytes(), data.len() as u64);
    assert!(s.dma_bytes > 0);
    assert_eq!(s.bytes_in_flight, 0);
}

#[test]
fn queued_reads_fill_in_order_and_keep_copies_in_flight_across_them() {
    let netdma = Arc::new(NetDma::from_config(config(Copybreak::Bytes(4096))).unwrap());
    let mut bed = bed(netdma.clone());
    let data = pattern(64 * MIB, 26);
    // 64 KiB reads, 8 posted: one chunk each, so every copy beyond the first is in flight
    // across a read boundary.
    let got = pump(&mut bed, &data, 64 * 1024, 8);
    assert_same(&got, &data);
    let s = netdma.stats();
    assert_eq!(s.dma_bytes, data.len() as u64, "stats {s:?}");
    assert_eq!(s.bytes_in_flight, 0);
    assert_eq!(s.dma_reads, (data.len() / (64 * 1024)) as u64);
}

#[test]
fn cpu_fraction_splits_every_pipelined_copy() {
    let mut cfg = config(Copybreak::Bytes(4096));
    cfg.cpu_fraction = 0.25;
    let netdma = Arc::new(NetDma::from_config(cfg).unwrap());
    let mut bed = bed(netdma.clone());
    let data = pattern(16 * MIB, 28);
    let got = pump(&mut bed, &data, 256 * 1024, 4);
    assert_same(&got, &data);
    let s = netdma.stats();
    assert_eq!(s.total_bytes(), data.len() as u64);
    // The CPU copies a quarter of every chunk, rounded down: a quarter of the stream, less
    // under a byte per chunk.
    let share = s.cpu_bytes as f64 / data.len() as f64;
    assert!(
        (0.24..=0.25).contains(&share),
        "CPU share {share}, stats {s:?}"
    );
    assert_eq!(
        s.fallback_bytes,
        netdma::counters::FallbackCounts::default(),
        "the split is no fallback"
    );
    assert_eq!(s.bytes_in_flight, 0);
}

#[test]
fn adaptive_pipeline_measures_both_paths_and_loses_nothing() {
    let netdma = Arc::new(NetDma::from_config(config(Copybreak::Auto)).unwrap());
    let mut bed = bed(netdma.clone());
    let data = pattern(16 * MIB, 29);
    let got = pump(&mut bed, &data, 64 * 1024, 8);
    assert_same(&got, &data);
    let s = netdma.stats();
    // The policy measures the CPU first, then DMA, before it has a choice to make: both
    // paths carried reads, whichever it settled on.
    assert!(s.dma_reads >= 1, "no read by DMA: {s:?}");
    assert!(s.fallback.adaptive >= 1, "no read routed to the CPU: {s:?}");
    assert_eq!(
        s.dma_bytes + s.fallback_bytes.adaptive,
        data.len() as u64,
        "{s:?}"
    );
    assert_eq!(s.bytes_in_flight, 0);
}

#[test]
fn posted_buffers_below_copybreak_use_the_cpu() {
    let netdma = Arc::new(NetDma::from_config(config(Copybreak::Bytes(MIB))).unwrap());
    let mut bed = bed(netdma.clone());
    let data = pattern(4 * MIB, 22);
    let got = pump(&mut bed, &data, 65536, 1);
    assert_same(&got, &data);
    let s = netdma.stats();
    assert_eq!(s.dma_bytes, 0);
    assert_eq!(s.fallback_bytes.below_copybreak, data.len() as u64);
}

#[test]
fn failing_every_third_transfer_is_redone_by_the_cpu() {
    // With the CPU share of the split in the mix: only the engine's part is redone.
    let mut cfg = config(Copybreak::Bytes(4096));
    cfg.cpu_fraction = 0.25;
    let plan = FaultPlan {
        fail_every: Some(3),
        ..FaultPlan::default()
    };
    let (device, netdma) = faulty(2, plan, cfg);
    let mut bed = bed(netdma.clone());
    let data = pattern(16 * MIB, 23);
    let got = pump(&mut bed, &data, 64 * 1024, 8);
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
    let got = pump(&mut bed, &data, 256 * 1024, 4);
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
    let mut cfg = config(Copybreak::Bytes(4096));
    cfg.wait.timeout_ms = 50;
    let (device, netdma) = faulty(1, FaultPlan::default(), cfg);
    device.stall(0);
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
    let reads = bed.pipeline.abort(bed.server_h);
    assert_eq!(reads.len(), 1);
    let read = &reads[0];
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
    // Up to MAX_POSTED reads queue up; the next is handed back.
    for _ in 1..MAX_POSTED {
        bed.pipeline
            .post_recv(bed.server_h, vec![0; 4096], 4096)
            .unwrap();
    }
    assert_eq!(bed.pipeline.posted(bed.server_h), MAX_POSTED);
    assert!(matches!(
        bed.pipeline.post_recv(bed.server_h, vec![0; 10], 10),
        Err(PostError::QueueFull(b)) if b.len() == 10
    ));
    assert!(matches!(
        bed.pipeline.post_recv(bed.server_h, Vec::new(), 10),
        Err(PostError::Empty(b)) if b.is_empty()
    ));
    // Cancelling hands every read back, oldest first, and frees the socket.
    let reads = bed.pipeline.cancel(bed.server_h);
    assert_eq!(reads.len(), MAX_POSTED);
    assert!(reads.iter().all(|r| r.len == 0 && r.error.is_none()));
    assert_eq!(bed.pipeline.posted(bed.server_h), 0);
    assert_eq!(
        bed.pipeline.with_socket(bed.server_h, |s| s.is_open()),
        Some(true)
    );
}

#[test]
fn aborting_with_queued_reads_in_flight_returns_them_in_order() {
    let (device, netdma) = faulty(1, FaultPlan::default(), config(Copybreak::Bytes(4096)));
    let mut bed = bed(netdma.clone());
    let data = pattern(512 * 1024, 27);
    bed.client.tcp_mut(bed.client_h).send_slice(&data).unwrap();
    // The first read completes before the stall; the rest stay in flight behind it.
    bed.pipeline
        .post_recv(bed.server_h, vec![0; 64 * 1024], 64 * 1024)
        .unwrap();
    let mut first = None;
    for _ in 0..100_000 {
        bed.client.poll();
        bed.pipeline.poll();
        if bed.pipeline.posted(bed.server_h) == 0 {
            first = Some(());
            break;
        }
    }
    assert!(first.is_some(), "the first read did not complete");
    device.stall(0);
    for _ in 0..4 {
        bed.pipeline
            .post_recv(bed.server_h, vec![0; 64 * 1024], 64 * 1024)
            .unwrap();
    }
    for _ in 0..200 {
        bed.client.poll();
        bed.pipeline.poll();
    }
    // All four reads have their copy in flight at once, behind the stall.
    assert_eq!(netdma.stats().bytes_in_flight, 4 * 64 * 1024);
    device.unstall(0);
    let reads = bed.pipeline.abort(bed.server_h);
    assert_eq!(reads.len(), 5, "the finished read, then the four posted");
    let mut got = Vec::new();
    for r in &reads {
        assert_eq!(r.error, None);
        got.extend_from_slice(&r.buf[..r.len]);
    }
    assert!(got.len() >= 64 * 1024);
    assert_same(&got, &data[..got.len()]);
    assert_eq!(netdma.stats().bytes_in_flight, 0);
}

#[test]
fn three_sockets_with_queued_reads_each_get_their_own_stream() {
    // Three connections through one pipeline, each with its own queue of reads of a
    // different size and depth, on a device that fails every fifth transfer: every stream
    // arrives whole and in order, and reads finish per socket in the order posted.
    let plan = FaultPlan {
        fail_every: Some(5),
        ..FaultPlan::default()
    };
    let (device, netdma) = faulty(2, plan, config(Copybreak::Bytes(4096)));
    let mut pair = StackPair::new(9000);
    let conns: Vec<(SocketHandle, SocketHandle)> =
        (0..3).map(|_| pair.connect(MIB, MIB).unwrap()).collect();
    let StackPair {
        server, mut client, ..
    } = pair;
    let mut pipeline = Pipeline::new(server, netdma.clone());
    let data: Vec<Vec<u8>> = (0..3).map(|i| pattern(8 * MIB, 30 + i as u64)).collect();
    let shape = [(64 * 1024, 8), (100_000, 3), (4096, 16)]; // (read size, reads posted)
    let mut sent = [0usize; 3];
    let mut claimed = [0usize; 3];
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); 3];
    let mut idle = 0u64;
    while (0..3).any(|i| got[i].len() < data[i].len()) {
        let mut progress = false;
        for i in 0..3 {
            let (sh, ch) = conns[i];
            let sock = client.tcp_mut(ch);
            if sent[i] < data[i].len() && sock.can_send() {
                sent[i] += sock.send_slice(&data[i][sent[i]..]).unwrap();
                progress = true;
            }
            let (size, depth) = shape[i];
            while pipeline.posted(sh) < depth && claimed[i] < data[i].len() {
                let want = size.min(data[i].len() - claimed[i]);
                pipeline.post_recv(sh, vec![0; want], want).unwrap();
                claimed[i] += want;
            }
        }
        client.poll();
        progress |= pipeline.poll();
        for i in 0..3 {
            while let Some(done) = pipeline.take_completed(conns[i].0) {
                assert_eq!(done.error, None);
                assert_eq!(done.len, done.buf.len(), "socket {i}: a read ended early");
                got[i].extend_from_slice(&done.buf);
                progress = true;
            }
        }
        idle = if progress { 0 } else { idle + 1 };
        assert!(
            idle < 5_000_000,
            "stuck at {:?}",
            got.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }
    for i in 0..3 {
        assert_same(&got[i], &data[i]);
    }
    let s = netdma.stats();
    assert!(device.faults_injected() > 0);
    assert_eq!(s.total_bytes(), 3 * 8 * MIB as u64);
    assert_eq!(s.bytes_in_flight, 0);
    drop(pipeline);
    netdma.disable().unwrap();
    assert_eq!(netdma.engine().total_references(), 0);
}

#[test]
fn posting_on_a_handle_of_another_stack_is_refused() {
    let netdma = Arc::new(NetDma::from_config(config(Copybreak::Bytes(4096))).unwrap());
    let mut bed = bed(netdma);
    // The client stack's second socket has an index the server's set does not hold.
    let foreign = bed.client.add_tcp_socket(4096, 4096);
    assert!(matches!(
        bed.pipeline.post_recv(foreign, vec![0; 64], 64),
        Err(PostError::NotATcpSocket(b)) if b.len() == 64
    ));
    assert_eq!(bed.pipeline.posted(foreign), 0);
}

#[test]
fn a_read_posted_across_an_idle_release_still_goes_by_dma() {
    // The read waits on an idle connection long enough for netdma to release the engine;
    // when data comes, it takes a channel again instead of falling back for good.
    let mut cfg = config(Copybreak::Bytes(4096));
    cfg.idle_release_ms = 1;
    let netdma = Arc::new(NetDma::from_config(cfg).unwrap());
    let mut bed = bed(netdma.clone());
    bed.pipeline
        .post_recv(bed.server_h, vec![0; 256 * 1024], 256 * 1024)
        .unwrap();
    while netdma.holds_client() {
        bed.pipeline
            .poll_wait(Some(Duration::from_millis(1)))
            .unwrap();
        bed.pipeline.poll();
    }
    let data = pattern(256 * 1024, 31);
    bed.client.tcp_mut(bed.client_h).send_slice(&data).unwrap();
    let mut done = None;
    for _ in 0..1_000_000 {
        bed.client.poll();
        bed.pipeline.poll();
        if let Some(d) = bed.pipeline.take_completed(bed.server_h) {
            done = Some(d);
            break;
        }
    }
    let done = done.expect("the read completes");
    assert_eq!(done.error, None);
    assert_same(&done.buf[..done.len], &data);
    let s = netdma.stats();
    assert_eq!(s.dma_bytes, data.len() as u64, "{s:?}");
    assert_eq!(s.dma_reads, 1);
}

#[test]
fn poll_wait_does_not_sleep_while_a_posted_read_has_data_waiting() {
    // 100 KiB arrive; a 64 KiB read takes the first part, and a second read is posted
    // with the rest already in the ring. poll_wait(None) must return at once (it used to
    // sleep on the link, which has nothing more to deliver). Run on a thread so a hang
    // fails the test instead of stalling it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let netdma = Arc::new(NetDma::from_config(config(Copybreak::Bytes(4096))).unwrap());
        let mut bed = bed(netdma);
        let data = pattern(100 * 1024, 32);
        // No Nagle: the short second segment goes out without waiting for an ACK.
        bed.client.tcp_mut(bed.client_h).set_nagle_enabled(false);
        bed.client.tcp_mut(bed.client_h).send_slice(&data).unwrap();
        for _ in 0..1000 {
            bed.client.poll();
            bed.pipeline.poll();
        }
        bed.pipeline
            .post_recv(bed.server_h, vec![0; 64 * 1024], 64 * 1024)
            .unwrap();
        let first = loop {
            bed.client.poll();
            bed.pipeline.poll();
            if let Some(d) = bed.pipeline.take_completed(bed.server_h) {
                break d;
            }
        };
        // Let every byte be acknowledged, so smoltcp has no timer pending that would end
        // a sleep on its own.
        while bed.client.tcp_mut(bed.client_h).send_queue() > 0 {
            bed.client.poll();
            bed.pipeline.poll();
        }
        bed.pipeline
            .post_recv(bed.server_h, vec![0; 64 * 1024], 1)
            .unwrap();
        bed.pipeline.poll_wait(None).unwrap();
        let second = loop {
            bed.pipeline.poll();
            if let Some(d) = bed.pipeline.take_completed(bed.server_h) {
                break d;
            }
        };
        let mut got = first.buf[..first.len].to_vec();
        got.extend_from_slice(&second.buf[..second.len]);
        tx.send(got == data).unwrap();
    });
    let intact = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("poll_wait slept with data waiting for a posted read");
    assert!(intact, "the stream arrived corrupted");
}

#[test]
fn reads_below_and_above_the_copybreak_share_one_queue_in_order() {
    // 1 KiB reads go to the CPU, 64 KiB reads to DMA; queued together, each waits for the
    // copies of the ones before it.
    let netdma = Arc::new(NetDma::from_config(config(Copybreak::Bytes(4096))).unwrap());
    let mut bed = bed(netdma.clone());
    let data = pattern(16 * MIB, 33);
    let got = pump_sizes(
        &mut bed,
        &data,
        &[1024, 64 * 1024, 1024, 1024, 64 * 1024],
        6,
    );
    assert_same(&got, &data);
    let s = netdma.stats();
    assert!(
        s.dma_bytes > 0 && s.fallback_bytes.below_copybreak > 0,
        "{s:?}"
    );
    assert_eq!(s.total_bytes(), data.len() as u64);
    assert_eq!(s.bytes_in_flight, 0);
}

#[test]
fn a_small_ring_wraps_under_copies_in_flight() {
    // A 100 KiB ring with 16 KiB chunks and 48 KiB reads: chunks end at the ring's end
    // and the next read's first chunk starts again at its beginning.
    let mut cfg = config(Copybreak::Bytes(4096));
    cfg.chunk_size = 16 * 1024;
    let netdma = Arc::new(NetDma::from_config(cfg).unwrap());
    let mut bed = bed_with(netdma.clone(), 9000, 100 * 1024);
    let data = pattern(8 * MIB, 34);
    let got = pump(&mut bed, &data, 48 * 1024, 4);
    assert_same(&got, &data);
    let s = netdma.stats();
    assert_eq!(s.dma_bytes, data.len() as u64, "{s:?}");
    assert_eq!(s.bytes_in_flight, 0);
}

#[test]
fn a_fin_ends_the_read_in_progress_with_its_data_and_the_next_with_nothing() {
    let netdma = Arc::new(NetDma::from_config(config(Copybreak::Bytes(4096))).unwrap());
    let mut bed = bed(netdma);
    let data = pattern(100 * 1024, 35);
    bed.client.tcp_mut(bed.client_h).send_slice(&data).unwrap();
    bed.client.tcp_mut(bed.client_h).close();
    for _ in 0..3 {
        bed.pipeline
            .post_recv(bed.server_h, vec![0; 64 * 1024], 64 * 1024)
            .unwrap();
    }
    let mut reads = Vec::new();
    for _ in 0..1_000_000 {
        bed.client.poll();
        bed.pipeline.poll();
        while let Some(d) = bed.pipeline.take_completed(bed.server_h) {
            reads.push(d);
        }
        if reads.len() == 3 {
            break;
        }
    }
    assert_eq!(reads.len(), 3, "every read ends");
    assert_eq!((reads[0].len, reads[0].error), (64 * 1024, None));
    assert_eq!(reads[1].len, 100 * 1024 - 64 * 1024);
    assert_eq!(reads[1].error, Some(RecvError::Finished));
    assert_eq!(
        (reads[2].len, reads[2].error),
        (0, Some(RecvError::Finished))
    );
    let mut got = reads[0].buf[..reads[0].len].to_vec();
    got.extend_from_slice(&reads[1].buf[..reads[1].len]);
    assert_same(&got, &data);
}

#[test]
fn a_device_ring_smaller_than_the_copies_in_flight_falls_back_for_the_excess() {
    // Eight copies in flight per socket, on a channel whose ring holds two: submissions
    // beyond the ring are refused (RingFull) and copied by the CPU at once.
    let engine = Engine::new();
    engine
        .register_device(SoftwareDevice::builder().channels(1).ring_size(2).build())
        .unwrap();
    let netdma = Arc::new(NetDma::new(engine, config(Copybreak::Bytes(4096))).unwrap());
    let mut bed = bed(netdma.clone());
    let data = pattern(16 * MIB, 36);
    let got = pump(&mut bed, &data, 64 * 1024, 8);
    assert_same(&got, &data);
    let s = netdma.stats();
    assert!(s.fallback_bytes.ring_full > 0, "{s:?}");
    assert!(s.dma_bytes > 0, "{s:?}");
    assert_eq!(s.total_bytes(), data.len() as u64);
    assert_eq!(s.bytes_in_flight, 0);
}

#[test]
fn a_stalled_channel_under_the_split_times_out_and_the_cpu_redoes_the_engine_part() {
    let mut cfg = config(Copybreak::Bytes(4096));
    cfg.cpu_fraction = 0.25;
    cfg.wait.timeout_ms = 20;
    let (device, netdma) = faulty(1, FaultPlan::default(), cfg);
    device.stall(0);
    let mut bed = bed(netdma.clone());
    let data = pattern(MIB, 37);
    let got = pump(&mut bed, &data, 256 * 1024, 2);
    assert_same(&got, &data);
    let s = netdma.stats();
    // A quarter of each chunk went by the CPU at submission; of the engine's part, what
    // the stall held past the timeout was cancelled and redone by the CPU, and the
    // engine copied the rest (a cancellation rings the doorbell the stall withheld, so
    // the copies behind the cancelled one run).
    assert_eq!(s.total_bytes(), data.len() as u64, "{s:?}");
    let redone = s.fallback_bytes.timeout + s.fallback_bytes.channel_error;
    let tails = (s.cpu_bytes - redone) as f64 / data.len() as f64;
    assert!(
        (0.24..=0.25).contains(&tails),
        "CPU share at submission {tails}: {s:?}"
    );
    assert!(s.fallback_bytes.timeout > 0, "{s:?}");
    assert_eq!(s.bytes_in_flight, 0);
}

#[test]
fn one_reads_timeout_leaves_another_sockets_copies_on_the_same_channel_alone() {
    // Two sockets, one channel. The channel stalls (doorbells withheld) under socket A's
    // read; socket B's read is posted later, its copies queued behind A's. When A's copy
    // times out it is cancelled alone: B's copies then run on the engine, B's read
    // completes by DMA, and the only fallback counted is A's timeout.
    let mut cfg = config(Copybreak::Bytes(4096));
    cfg.wait.timeout_ms = 1000;
    let (device, netdma) = faulty(1, FaultPlan::default(), cfg);
    let mut pair = StackPair::new(65535);
    let (a_srv, a_cli) = pair.connect(MIB, MIB).unwrap();
    let (b_srv, b_cli) = pair.connect(MIB, MIB).unwrap();
    let StackPair {
        server, mut client, ..
    } = pair;
    let mut pipeline = Pipeline::new(server, netdma.clone());
    let len = 64 * 1024;
    let a_data = pattern(len, 40);
    let b_data = pattern(len, 41);
    client.tcp_mut(a_cli).send_slice(&a_data).unwrap();
    client.tcp_mut(b_cli).send_slice(&b_data).unwrap();
    // Both streams wholly in the server's rings (the last segment may wait for a delayed
    // ACK, hence the sleeps).
    for _ in 0..100_000 {
        client.poll();
        pipeline.poll();
        let queued = |p: &mut Pipeline<Stack<MemoryLink>>, h| p.with_socket(h, |s| s.recv_queue());
        if queued(&mut pipeline, a_srv) == Some(len) && queued(&mut pipeline, b_srv) == Some(len) {
            break;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    device.stall(0);
    pipeline.post_recv(a_srv, vec![0; len], len).unwrap();
    for _ in 0..10 {
        pipeline.poll();
    }
    assert_eq!(
        netdma.stats().bytes_in_flight,
        len as u64,
        "A's copies wait"
    );
    // B's copies go in half a timeout later, so that their own deadline is well after
    // A's (a margin against scheduling delays, not a measurement).
    std::thread::sleep(Duration::from_millis(500));
    pipeline.post_recv(b_srv, vec![0; len], len).unwrap();
    for _ in 0..10 {
        pipeline.poll();
    }
    assert_eq!(
        netdma.stats().bytes_in_flight,
        2 * len as u64,
        "B's copies wait too"
    );
    let (mut a, mut b) = (None, None);
    for _ in 0..10_000_000 {
        client.poll();
        pipeline.poll();
        a = a.or_else(|| pipeline.take_completed(a_srv));
        b = b.or_else(|| pipeline.take_completed(b_srv));
        if a.is_some() && b.is_some() {
            break;
        }
    }
    device.unstall(0);
    let (a, b) = (a.expect("A's read finished"), b.expect("B's read finished"));
    assert_eq!((a.error, a.len), (None, len));
    assert_eq!((b.error, b.len), (None, len));
    assert_same(&a.buf, &a_data);
    assert_same(&b.buf, &b_data);
    let s = netdma.stats();
    // Only A's copies timed out; nobody's copy failed for another reason.
    assert!(s.fallback.timeout >= 1, "{s:?}");
    assert!(s.fallback_bytes.timeout <= len as u64, "{s:?}");
    assert_eq!(s.fallback.channel_error, 0, "{s:?}");
    assert_eq!(s.fallback.aborted, 0, "{s:?}");
    // B's bytes all came by DMA, and the CPU redid nothing but A's timed-out copies.
    assert_eq!(s.cpu_bytes, s.fallback_bytes.timeout, "{s:?}");
    assert!(s.dma_bytes >= len as u64, "{s:?}");
    assert_eq!(s.total_bytes(), 2 * len as u64, "{s:?}");
    assert_eq!(s.bytes_in_flight, 0);
    // The channel failed exactly the cancelled copies.
    let errors: u64 = netdma
        .engine()
        .snapshot()
        .devices
        .iter()
        .flat_map(|d| d.channels.iter())
        .map(|c| c.counters.errors)
        .sum();
    assert_eq!(errors, s.fallback.timeout, "{s:?}");
}

#[test]
fn disable_waits_for_pipelined_copies_in_flight() {
    // The pipeline's copies outlive the call that submitted them; `disable` must still not
    // let go of the device under them: it returns only once none is in flight.
    let mut cfg = config(Copybreak::Bytes(4096));
    cfg.wait.timeout_ms = 600_000; // never the way out here
    let (device, netdma) = faulty(1, FaultPlan::default(), cfg);
    // Another user of the engine keeps the channel's resources, so dropping netdma's
    // client frees nothing, and nothing but netdma's own wait holds `disable` back.
    let other = netdma.engine().client(dmaengine::Cap::Memcpy.into());
    let mut bed = bed(netdma.clone());
    let data = pattern(MIB, 31);
    device.stall(0);
    let sent = bed.client.tcp_mut(bed.client_h).send_slice(&data).unwrap();
    assert_eq!(sent, data.len());
    bed.pipeline
        .post_recv(bed.server_h, vec![0; data.len()], data.len())
        .unwrap();
    while netdma.stats().bytes_in_flight == 0 {
        bed.client.poll();
        bed.pipeline.poll();
    }
    let disabled = Arc::new(AtomicBool::new(false));
    let disabler = {
        let (netdma, disabled) = (netdma.clone(), disabled.clone());
        std::thread::spawn(move || {
            netdma.disable().unwrap();
            disabled.store(true, Ordering::SeqCst);
            netdma.stats().bytes_in_flight
        })
    };
    let unstaller = {
        let device = device.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            device.unstall(0);
        })
    };
    let mut got = Vec::new();
    let mut polls = 0u64;
    while got.len() < data.len() {
        polls += 1;
        assert!(
            polls < 100_000_000,
            "stuck at {} of {}",
            got.len(),
            data.len()
        );
        bed.client.poll();
        bed.pipeline.poll();
        if let Some(done) = bed.pipeline.take_completed(bed.server_h) {
            assert_eq!(done.error, None);
            got.extend_from_slice(&done.buf[..done.len]);
        }
    }
    unstaller.join().unwrap();
    assert_eq!(
        disabler.join().unwrap(),
        0,
        "disable returned with copies in flight"
    );
    assert!(disabled.load(Ordering::SeqCst));
    assert_same(&got, &data);
    drop(other);
    assert_eq!(netdma.engine().total_references(), 0);
}

#[test]
fn the_pipeline_drives_an_applications_own_interface_device_and_sockets() {
    use netdma::pipeline::Parts;
    use smoltcp::iface::{Config, Interface, SocketSet};
    use smoltcp::phy::{Loopback, Medium};
    use smoltcp::socket::tcp;
    use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};

    let netdma = Arc::new(NetDma::from_config(config(Copybreak::Bytes(4096))).unwrap());
    let mut device = Loopback::new(Medium::Ethernet);
    let mac = EthernetAddress([0x02, 0, 0, 0, 0, 9]);
    let now = smoltcp::time::Instant::now();
    let mut iface = Interface::new(Config::new(mac.into()), &mut device, now);
    iface.update_ip_addrs(|a| a.push(IpCidr::new(IpAddress::v4(127, 0, 0, 1), 8)).unwrap());
    let mut sockets = SocketSet::new(Vec::new());
    let buffers = || {
        tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; MIB]),
            tcp::SocketBuffer::new(vec![0; MIB]),
        )
    };
    let (server, client) = (sockets.add(buffers()), sockets.add(buffers()));
    sockets.get_mut::<tcp::Socket>(server).listen(7000).unwrap();
    let remote = (IpAddress::v4(127, 0, 0, 1), 7000);
    sockets
        .get_mut::<tcp::Socket>(client)
        .connect(iface.context(), remote, 49152)
        .unwrap();

    let mut pipeline = Pipeline::new(Parts::new(iface, device, sockets), netdma.clone());
    let data = pattern(4 * MIB, 41);
    let (mut sent, mut claimed, mut polls) = (0, 0, 0u64);
    let mut got = Vec::new();
    while got.len() < data.len() {
        polls += 1;
        assert!(
            polls < 10_000_000,
            "stuck at {} of {}",
            got.len(),
            data.len()
        );
        pipeline.poll();
        sent += pipeline.send(client, &data[sent..]).unwrap_or(0);
        let established = pipeline.state(server) == tcp::State::Established;
        while established && pipeline.posted(server) < 4 && claimed < data.len() {
            let want = (256 * 1024).min(data.len() - claimed);
            pipeline.post_recv(server, vec![0; want], want).unwrap();
            claimed += want;
        }
        while let Some(done) = pipeline.take_completed(server) {
            assert_eq!(done.error, None);
            got.extend_from_slice(&done.buf[..done.len]);
        }
    }
    assert_same(&got, &data);
    let s = netdma.stats();
    assert!(s.dma_bytes > 0, "{s:?}");
    assert_eq!(s.total_bytes(), data.len() as u64);
    let (iface, _device, sockets) = pipeline.into_driver().into_inner();
    assert_eq!(iface.ip_addrs().len(), 1, "the same interface comes back");
    assert_eq!(sockets.iter().count(), 2, "and the same sockets");
}
