//! The DSA provider through the engine, over its descriptor-exact software portal:
//! batching, occupancy, partial completions, injected errors, stalls, shared WQs.
#![cfg(all(not(loom), target_os = "linux"))]

mod common;

use common::pattern;
use dmaengine::dsa::{DsaDevice, EmulatedWq, Injection, SubmitPath, WqMode};
use dmaengine::{
    scope, scope_with_timeout, Cap, Engine, ProviderKind, SoftwareDevice, SubmitError, Terminated,
    TxStatus, WaitError,
};
use std::sync::Arc;
use std::time::Duration;

fn setup(wq: &Arc<EmulatedWq>, ring: usize) -> (Engine, dmaengine::Client, Arc<DsaDevice>) {
    let engine = Engine::new();
    let dev = DsaDevice::builder()
        .channels(1)
        .ring_size(ring)
        .emulated(wq.clone());
    engine.register_device(dev.clone()).unwrap();
    let client = engine.client(Cap::Memcpy.into());
    (engine, client, dev)
}

#[test]
fn copies_are_exact_and_a_doorbell_sends_one_batch() {
    let wq = EmulatedWq::builder().size(32).build();
    let (_engine, client, dev) = setup(&wq, 64);
    assert_eq!(dev.submit_path(), SubmitPath::Emulated);
    assert!(dev.batching());
    let chan = client.find_channel(Cap::Memcpy).unwrap();
    let src = pattern(16 * 4096 + 17, 7);
    let mut dst = vec![0u8; src.len()];
    scope(|s| {
        let ts: Vec<_> = dst
            .chunks_mut(4096)
            .zip(src.chunks(4096))
            .map(|(d, sr)| s.memcpy(&chan, d, sr).unwrap())
            .collect();
        chan.issue_pending(); // one doorbell for 17 descriptors
        for t in ts {
            t.wait().unwrap();
        }
    });
    assert!(dst == src);
    let st = dev.stats();
    assert_eq!(st.descriptors, 17);
    assert_eq!(st.batches, 1, "{st:?}");
    assert_eq!(st.portal_writes, 1, "{st:?}");
    let ws = wq.stats();
    assert_eq!(ws.batches, 1);
    assert_eq!(ws.executed, 18); // the batch and its 17 members
    assert_eq!(ws.overflowed, 0);
    // Memset goes out as MEMFILL.
    let mut fill = vec![0u8; 1000];
    scope(|s| s.memset(&chan, &mut fill, 0xa5).unwrap().wait().unwrap());
    assert!(fill.iter().all(|&b| b == 0xa5));
    assert_eq!(chan.counters().errors, 0);
}

#[test]
fn a_page_fault_completes_a_prefix_and_says_how_much() {
    let wq = EmulatedWq::builder().build();
    let (_engine, client, dev) = setup(&wq, 16);
    let chan = client.find_channel(Cap::Memcpy).unwrap();
    let src = pattern(10_000, 3);
    let mut dst = vec![0u8; src.len()];
    wq.inject(Injection::PageFaultAt {
        byte: 4321,
        write: true,
    });
    let (result, cookie) = scope(|s| {
        let t = s.memcpy(&chan, &mut dst, &src).unwrap();
        (t.wait(), t.cookie())
    });
    assert_eq!(
        result,
        Err(WaitError::Partial {
            cookie,
            bytes_done: 4321
        })
    );
    assert_eq!(chan.status(cookie), Ok(TxStatus::Error));
    assert_eq!(chan.bytes_done(cookie), Ok(Some(4321)));
    assert!(dst[..4321] == src[..4321]);
    assert!(
        dst[4321..].iter().all(|&b| b == 0),
        "nothing past the fault"
    );
    assert_eq!(dev.stats().partial_completions, 1);
    assert_eq!(wq.stats().page_faults, 1);
    assert_eq!(chan.counters().errors, 1);
}

#[test]
fn block_on_fault_resolves_the_fault() {
    let wq = EmulatedWq::builder().build();
    let engine = Engine::new();
    let dev = DsaDevice::builder()
        .block_on_fault(true)
        .emulated(wq.clone());
    engine.register_device(dev).unwrap();
    let client = engine.client(Cap::Memcpy.into());
    let chan = client.find_channel(Cap::Memcpy).unwrap();
    let src = pattern(5000, 1);
    let mut dst = vec![0u8; 5000];
    wq.inject(Injection::PageFaultAt {
        byte: 10,
        write: false,
    });
    scope(|s| s.memcpy(&chan, &mut dst, &src).unwrap().wait().unwrap());
    assert!(dst == src);
    assert_eq!(wq.stats().faults_resolved, 1);
}

#[test]
fn injected_bad_opcode_and_size_errors_fail_without_writing() {
    let wq = EmulatedWq::builder().max_transfer_size(8192).build();
    let (_engine, client, _dev) = setup(&wq, 16);
    let chan = client.find_channel(Cap::Memcpy).unwrap();
    let src = pattern(4096, 9);
    for inj in [Injection::BadOpcode, Injection::TransferSizeOutOfRange] {
        let mut dst = vec![0u8; 4096];
        wq.inject(inj);
        let (r, cookie) = scope(|s| {
            let t = s.memcpy(&chan, &mut dst, &src).unwrap();
            (t.wait(), t.cookie())
        });
        assert_eq!(r, Err(WaitError::Failed(cookie)), "{inj:?}");
        assert_eq!(chan.bytes_done(cookie), Ok(None));
        assert!(dst.iter().all(|&b| b == 0), "{inj:?} wrote");
    }
    assert_eq!(chan.counters().errors, 2);
    // Larger than the WQ's max_transfer_size: refused at submission.
    let big = vec![0u8; 8193];
    let mut out = vec![0u8; 8193];
    let r = scope(|s| s.memcpy(&chan, &mut out, &big).map(|_| ()));
    assert_eq!(
        r,
        Err(SubmitError::TooLarge {
            len: 8193,
            max: 8192
        })
    );
}

#[test]
fn dedicated_occupancy_is_never_exceeded() {
    let wq = EmulatedWq::builder().size(4).build();
    let engine = Engine::new();
    // No batching: every descriptor is one WQ entry.
    let dev = DsaDevice::builder()
        .batch(false)
        .ring_size(64)
        .emulated(wq.clone());
    engine.register_device(dev.clone()).unwrap();
    let client = engine.client(Cap::Memcpy.into());
    let chan = client.find_channel(Cap::Memcpy).unwrap();
    wq.stall(Duration::from_secs(60));
    let src = pattern(6 * 1024, 2);
    let mut dst = vec![0u8; src.len()];
    scope(|s| {
        let mut ok = Vec::new();
        let mut full = 0;
        for (d, sr) in dst.chunks_mut(1024).zip(src.chunks(1024)) {
            match s.memcpy(&chan, d, sr) {
                Ok(t) => ok.push(t),
                Err(SubmitError::RingFull { capacity }) => {
                    assert_eq!(capacity, 4);
                    full += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!((ok.len(), full), (4, 2));
        chan.issue_pending();
        assert_eq!(dev.occupancy(), 4);
        wq.release_stall();
        for t in ok {
            t.wait().unwrap();
        }
    });
    assert!(dst[..4096] == src[..4096]);
    assert_eq!(wq.stats().overflowed, 0);
    assert_eq!(dev.stats().ring_full, 2);
}

#[test]
fn a_full_shared_wq_refuses_after_bounded_retries() {
    let wq = EmulatedWq::builder().mode(WqMode::Shared).size(2).build();
    let (_engine, client, dev) = setup(&wq, 16);
    let chan = client.find_channel(Cap::Memcpy).unwrap();
    wq.stall(Duration::from_secs(60));
    let src = pattern(3 * 512, 4);
    let mut dst = vec![0u8; src.len()];
    scope(|s| {
        let mut chunks = dst.chunks_mut(512).zip(src.chunks(512));
        let (d, sr) = chunks.next().unwrap();
        let a = s.memcpy(&chan, d, sr).unwrap();
        let (d, sr) = chunks.next().unwrap();
        let b = s.memcpy(&chan, d, sr).unwrap();
        let (d, sr) = chunks.next().unwrap();
        assert_eq!(
            s.memcpy(&chan, d, sr).err(),
            Some(SubmitError::RingFull { capacity: 2 })
        );
        wq.release_stall();
        a.wait().unwrap();
        b.wait().unwrap();
    });
    assert!(dst[..1024] == src[..1024]);
    let st = dev.stats();
    assert_eq!(st.refusals, 9, "one ENQCMD and 8 retries: {st:?}");
    assert_eq!(wq.stats().refused, 9);
}

#[test]
fn a_stall_times_out_and_terminate_all_waits_for_the_device() {
    let wq = EmulatedWq::builder().build();
    let (_engine, client, _dev) = setup(&wq, 16);
    let chan = client.find_channel(Cap::Memcpy).unwrap();
    let src = pattern(4096, 5);
    let mut dst = vec![0u8; 4096];
    wq.stall(Duration::from_millis(300));
    let (first, status_after) = scope_with_timeout(Duration::from_millis(20), |s| {
        let t = s.memcpy(&chan, &mut dst, &src).unwrap();
        let first = t.wait();
        chan.terminate_all();
        (first, t.status())
    });
    assert!(matches!(first, Err(WaitError::Timeout { .. })), "{first:?}");
    // terminate_all returned only once the device had written the record.
    assert!(status_after.is_done());
    // Whatever the device did, the CPU may now redo it: the buffers are ours.
    dst.copy_from_slice(&src);
}

#[test]
fn a_bounded_cancel_of_a_stalled_copy_gives_up_at_its_deadline() {
    // The device holds what it was sent until the stall ends: a cancellation with a
    // deadline says "pending" at the deadline instead of waiting for it, and says so
    // until the device lets go; then the copy is done and the buffers are ours again.
    let wq = EmulatedWq::builder().build();
    let (_engine, client, _dev) = setup(&wq, 16);
    let chan = client.find_channel(Cap::Memcpy).unwrap();
    let src = pattern(4096, 6);
    let mut dst = vec![0u8; 4096];
    wq.stall(Duration::from_secs(60));
    let outcomes = scope_with_timeout(Duration::from_millis(20), |s| {
        let t = s.memcpy(&chan, &mut dst, &src).unwrap();
        chan.issue_pending();
        let stalled = chan.terminate(&[t.cookie()], Duration::from_millis(20));
        let status_stalled = t.status();
        wq.release_stall();
        let released = chan.terminate(&[t.cookie()], Duration::from_secs(60));
        (stalled, status_stalled, released, t.status())
    });
    assert_eq!(outcomes.0, Terminated::Pending);
    assert_eq!(outcomes.1, TxStatus::InProgress);
    // A device that cannot recall what it was sent: the rest of the channel was
    // cancelled with it, so the answer is "the whole channel".
    assert_eq!(outcomes.2, Terminated::WholeChannel);
    assert!(outcomes.3.is_done());
}

#[test]
fn snapshot_names_each_devices_provider_kind() {
    let engine = Engine::new();
    let wq = EmulatedWq::builder().build();
    engine
        .register_device(DsaDevice::builder().emulated(wq))
        .unwrap();
    engine
        .register_device(SoftwareDevice::builder().channels(1).build())
        .unwrap();
    let snap = engine.snapshot();
    let kinds: Vec<_> = snap.devices.iter().map(|d| d.provider).collect();
    assert_eq!(kinds, [ProviderKind::DsaEmulated, ProviderKind::Software]);
    let json = serde_json::to_string(&snap).unwrap();
    assert!(json.contains("\"provider\":\"dsa_emulated\""), "{json}");
}

#[test]
fn many_threads_share_one_emulated_wq_with_faults() {
    let wq = EmulatedWq::builder().size(16).build();
    wq.random_page_faults(0.1, 99);
    let engine = Engine::new();
    let dev = DsaDevice::builder()
        .channels(4)
        .ring_size(8)
        .emulated(wq.clone());
    engine.register_device(dev.clone()).unwrap();
    let threads: Vec<_> = (0..8u64)
        .map(|i| {
            let client = engine.client(Cap::Memcpy.into());
            std::thread::spawn(move || {
                let chan = client.find_channel(Cap::Memcpy).unwrap();
                let src = pattern(64 * 1024, i);
                let mut partial = 0;
                for round in 0..200usize {
                    let len = 1 + (round * 997) % src.len();
                    let mut dst = vec![0u8; len];
                    let r = scope(|s| s.memcpy(&chan, &mut dst, &src[..len]).map(|t| t.wait()));
                    match r {
                        Ok(Ok(())) => {}
                        Ok(Err(WaitError::Partial { bytes_done, .. })) => {
                            assert!(dst[..bytes_done] == src[..bytes_done]);
                            dst[bytes_done..].copy_from_slice(&src[bytes_done..len]);
                            partial += 1;
                        }
                        Ok(Err(e)) => panic!("{e}"),
                        Err(SubmitError::RingFull { .. }) => dst.copy_from_slice(&src[..len]),
                        Err(e) => panic!("{e}"),
                    }
                    assert!(dst == src[..len]);
                }
                partial
            })
        })
        .collect();
    let partial: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(partial > 0);
    assert_eq!(dev.stats().partial_completions, partial);
    assert_eq!(wq.stats().overflowed, 0);
    assert_eq!(engine.total_references(), 0);
}

/// Raw descriptors straight into the software portal: it consumes exactly the uapi
/// descriptor and writes exactly the uapi completion record, refusing malformed ones
/// with their own status codes and writing nothing.
#[test]
fn the_software_portal_validates_raw_descriptors() {
    use dmaengine::dsa::hw::{decode, flags, opcode, RecordRef};
    use dmaengine::dsa::{CompletionRecord, DsaError, WorkDescriptor};
    let wq = EmulatedWq::builder().max_batch_size(4).build();
    let src = pattern(256, 11);
    let run = |desc: WorkDescriptor, dst: &mut [u8]| -> Result<(), DsaError> {
        let mut rec = CompletionRecord::default();
        let mut d = desc;
        d.completion_addr = &mut rec as *mut CompletionRecord as u64;
        if d.opcode() == opcode::MEMMOVE || d.opcode() == opcode::MEMFILL {
            d.dst_addr = dst.as_mut_ptr() as u64;
        }
        // SAFETY: the buffers and the record outlive the wait below, which ends only
        // once the record is written.
        assert!(unsafe { wq.write_portal(&d) });
        // SAFETY: `rec` is a live, 32-byte aligned record accessed only through this.
        let r = unsafe { RecordRef::new(&mut rec) };
        while r.status() == 0 {
            std::thread::yield_now();
        }
        decode(&r.read()).expect("written")
    };
    let memmove = |f: u32| {
        let mut d = WorkDescriptor::new(opcode::MEMMOVE, flags::CRAV | flags::RCR | f);
        d.src_addr = src.as_ptr() as u64;
        d.xfer_size = 256;
        d
    };
    let mut dst = vec![0u8; 256];
    run(memmove(0), &mut dst).unwrap();
    assert_eq!(dst, src);

    let mut dst = vec![0u8; 256];
    let mut bad = memmove(0);
    bad.set_opcode(0x7f);
    assert_eq!(run(bad, &mut dst), Err(DsaError::BadOpcode));
    assert_eq!(
        run(memmove(0x80_0000), &mut dst),
        Err(DsaError::InvalidFlags { flags: 0x80_0000 })
    );
    let mut reserved = memmove(0);
    reserved.rsvd1 = 1;
    assert_eq!(run(reserved, &mut dst), Err(DsaError::NonZeroReserved));
    let mut empty = memmove(0);
    empty.xfer_size = 0;
    assert_eq!(run(empty, &mut dst), Err(DsaError::TransferSizeOutOfRange));
    let mut overlap = memmove(0);
    overlap.src_addr = dst.as_ptr() as u64 + 8;
    overlap.xfer_size = 16;
    assert_eq!(run(overlap, &mut dst), Err(DsaError::OverlappingBuffers));
    assert!(dst.iter().all(|&b| b == 0), "a refused descriptor wrote");

    let mut batch = WorkDescriptor::new(opcode::BATCH, flags::CRAV | flags::RCR);
    batch.xfer_size = 5; // more than max_batch_size
    assert_eq!(
        run(batch, &mut dst),
        Err(DsaError::DescriptorCountOutOfRange)
    );
    batch.xfer_size = 2;
    batch.src_addr = 32; // not 64-byte aligned
    assert_eq!(
        run(batch, &mut dst),
        Err(DsaError::DescriptorListMisaligned)
    );

    let mut fill = WorkDescriptor::new(opcode::MEMFILL, flags::CRAV | flags::RCR);
    fill.src_addr = u64::from_le_bytes(*b"abcdefgh");
    fill.xfer_size = 20;
    let mut out = vec![0u8; 24];
    run(fill, &mut out).unwrap();
    assert_eq!(&out, b"abcdefghabcdefghabcd\0\0\0\0");
    run(
        WorkDescriptor::new(opcode::NOOP, flags::CRAV | flags::RCR),
        &mut out,
    )
    .unwrap();
    assert_eq!(wq.stats().errors, 7);
}

/// The `write()` submission path, end to end, against a regular file standing in for the
/// WQ's character device: the provider writes exactly 64-byte uapi descriptors, and a
/// stand-in device that reads them back and performs them completes every copy.
#[test]
fn the_write_path_emits_exact_descriptors() {
    use dmaengine::dsa::hw::{opcode, status, RecordRef};
    use dmaengine::dsa::{CompletionRecord, CpuFeatures, WorkDescriptor, WqInfo};
    let path = std::env::temp_dir().join(format!("dmaengine-dsa-write-{}", std::process::id()));
    std::fs::write(&path, b"").unwrap();
    let wq = WqInfo {
        name: "wq9.0".into(),
        device: "dsa9".into(),
        wq_type: "user".into(),
        state: "enabled".into(),
        mode: WqMode::Dedicated,
        size: 16,
        max_transfer_size: 1 << 20,
        max_batch_size: 16,
        memmove: true,
        memfill: true,
        batch: true,
        char_dev: path.clone(),
        char_dev_present: true,
    };
    // No portal instruction on this CPU: descriptors go through write().
    let dev = DsaDevice::builder()
        .open(&wq, CpuFeatures::default())
        .unwrap();
    assert_eq!(dev.submit_path(), SubmitPath::Write);
    assert!(!dev.batching(), "no BATCH through write()");
    let engine = Engine::new();
    engine.register_device(dev.clone()).unwrap();
    let client = engine.client(Cap::Memcpy.into());
    let chan = client.find_channel(Cap::Memcpy).unwrap();
    let src = pattern(3 * 1000, 12);
    let mut dst = vec![0u8; src.len()];
    scope(|s| {
        let ts: Vec<_> = dst
            .chunks_mut(1000)
            .zip(src.chunks(1000))
            .map(|(d, sr)| s.memcpy(&chan, d, sr).unwrap())
            .collect();
        chan.issue_pending();
        // The stand-in device: every 64 bytes written are one descriptor.
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written.len(), 3 * 64);
        for raw in written.chunks_exact(64) {
            let d = WorkDescriptor::from_bytes(raw.try_into().unwrap());
            assert_eq!(d.opcode(), opcode::MEMMOVE);
            assert_eq!(d.xfer_size, 1000);
            assert_eq!(d.completion_addr % 32, 0);
            // SAFETY: the descriptor names buffers of this scope, alive until its
            // transfers are done, which is after the record written here.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    d.src_addr as *const u8,
                    d.dst_addr as *mut u8,
                    d.xfer_size as usize,
                );
                RecordRef::new(d.completion_addr as *mut CompletionRecord).complete(
                    &CompletionRecord {
                        status: status::SUCCESS,
                        ..CompletionRecord::default()
                    },
                );
            }
        }
        for t in ts {
            t.wait().unwrap();
        }
    });
    assert!(dst == src);
    assert_eq!(dev.stats().portal_writes, 3);
    drop(client);
    drop(engine);
    drop(dev);
    std::fs::remove_file(&path).unwrap();
}
