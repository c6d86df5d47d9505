//! Bounded, seeded stress: 8 threads x 10,000 random copies while devices, clients and the
//! online CPU set churn underneath. Every completed copy is verified byte for byte; every
//! failure is reported, redone with the CPU and verified; at the end nothing is pinned and
//! every device unregisters.
#![cfg(not(loom))]

mod common;

use common::{pattern, MockDevice};
use dmaengine::dsa::{DsaDevice, EmulatedWq};
use dmaengine::{
    scope, Cap, CapMask, Client, DeviceId, Engine, FaultInjector, FaultPlan, SoftwareDevice,
    SubmitError, UnregisterError, WaitError,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const THREADS: usize = 8;
const COPIES: usize = 10_000;
const MAX_LEN: usize = 1 << 20;
const SEED: u64 = 0x5EED_D11A;
/// Far beyond the expected run time: a hang aborts the process instead of blocking CI.
const WATCHDOG: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
struct CopyStats {
    completed: usize,
    submit_errors: usize,
    wait_errors: usize,
    no_channel: usize,
    bytes: usize,
    /// Reported errors by kind.
    kinds: BTreeMap<&'static str, usize>,
}

fn submit_kind(e: &SubmitError) -> &'static str {
    match e {
        SubmitError::RingFull { .. } => "ring_full",
        SubmitError::NoResources(_) => "no_resources",
        SubmitError::ChannelGone(_) => "channel_gone",
        SubmitError::Unsupported(_) => "unsupported",
        SubmitError::LengthMismatch { .. } => "length_mismatch",
        SubmitError::TooLarge { .. } => "too_large",
    }
}

fn wait_kind(e: &WaitError) -> &'static str {
    match e {
        WaitError::Failed(_) => "failed",
        WaitError::Partial { .. } => "partial",
        WaitError::Timeout { .. } => "timeout",
        WaitError::WrongChannel { .. } => "wrong_channel",
    }
}

/// Log-uniform length in `0..=MAX_LEN`: a uniform power of two, then uniform below it.
fn random_len(rng: &mut ChaCha8Rng) -> usize {
    let exp = rng.random_range(0..=MAX_LEN.trailing_zeros());
    rng.random_range(0..=(1usize << exp))
}

fn copier(engine: Engine, index: usize, started: Arc<AtomicUsize>) -> CopyStats {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ (index as u64 + 1));
    let source = pattern(2 * MAX_LEN, SEED + index as u64);
    let mut dst_buf = vec![0u8; MAX_LEN + 64];
    let client: Client = engine.client(Cap::Memcpy.into());
    started.fetch_add(1, Ordering::SeqCst);
    let mut stats = CopyStats::default();
    for _ in 0..COPIES {
        let len = random_len(&mut rng);
        let src_off = rng.random_range(0..=source.len() - len);
        let dst_off = rng.random_range(0..64);
        let src = &source[src_off..src_off + len];
        let dst = &mut dst_buf[dst_off..dst_off + len];
        // A marker unlike the source, so a copy that did not happen cannot pass.
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = !*s);

        // None: no channel; Some(Err(Err)): refused at submit; Some(Err(Ok)): failed wait.
        let outcome = client.find_channel(Cap::Memcpy).map(|chan| {
            scope(|s| match s.memcpy(&chan, dst, src) {
                Err(e) => Err(Err(e)),
                Ok(t) => t.wait().map_err(Ok),
            })
        });
        match outcome {
            Some(Ok(())) => {
                assert!(
                    dst == src,
                    "thread {index}: DMA copy of {len} bytes corrupted"
                );
                stats.completed += 1;
                stats.bytes += len;
                continue;
            }
            Some(Err(Err(e))) => {
                stats.submit_errors += 1;
                *stats.kinds.entry(submit_kind(&e)).or_default() += 1;
            }
            Some(Err(Ok(e))) => {
                stats.wait_errors += 1;
                *stats.kinds.entry(wait_kind(&e)).or_default() += 1;
                if let WaitError::Partial { bytes_done, .. } = e {
                    // A partial completion: the prefix is final, the CPU copies exactly
                    // the rest.
                    assert!(bytes_done <= len);
                    assert!(
                        dst[..bytes_done] == src[..bytes_done],
                        "thread {index}: prefix"
                    );
                    dst[bytes_done..].copy_from_slice(&src[bytes_done..]);
                    assert!(dst == src);
                    continue;
                }
            }
            None => stats.no_channel += 1,
        }
        // Reported, never silent: the CPU does the copy, and it is verified too.
        dst.copy_from_slice(src);
        assert!(dst == src);
    }
    drop(client);
    stats
}

#[derive(Debug, Default)]
struct ChurnStats {
    added: usize,
    removed: usize,
    unregistered: usize,
    busy: usize,
    clients_made: usize,
    cpu_changes: usize,
    privates: usize,
}

struct Churn {
    engine: Engine,
    rng: ChaCha8Rng,
    /// Registered devices, and whether each copies (memcpy).
    devices: Vec<(DeviceId, bool)>,
    software: Vec<Arc<SoftwareDevice>>,
    clients: Vec<Client>,
    stats: ChurnStats,
}

impl Churn {
    fn add_device(&mut self) {
        let n = self.stats.added;
        let sw = SoftwareDevice::builder()
            .name(format!("st{n}"))
            .channels(self.rng.random_range(1..=3))
            .ring_size(if self.rng.random_bool(0.15) {
                4 // small enough for copiers sharing a channel to fill it
            } else {
                1 << self.rng.random_range(6..=10)
            })
            .build();
        self.software.push(sw.clone());
        let kind = self.rng.random_range(0..5);
        let id = match kind {
            0 => {
                let plan = FaultPlan {
                    fail_probability: 0.02,
                    seed: n as u64,
                    ..FaultPlan::default()
                };
                self.engine
                    .register_device(FaultInjector::new(sw, plan))
                    .unwrap()
            }
            // The DSA provider over its software portal, with page faults at random bytes.
            4 => {
                let wq = EmulatedWq::builder()
                    .size(self.rng.random_range(4..=64))
                    .max_transfer_size(MAX_LEN as u32)
                    .build();
                wq.random_page_faults(0.05, n as u64);
                let dsa = DsaDevice::builder()
                    .name(format!("dsa{n}"))
                    .channels(self.rng.random_range(1..=3))
                    .ring_size(1 << self.rng.random_range(2..=8))
                    .emulated(wq);
                self.engine.register_device(dsa).unwrap()
            }
            // A device no copier pins: it unregisters unless a churn client holds it.
            1 => self
                .engine
                .register_device(MockDevice::new(&format!("ms{n}"), Cap::Memset.into(), 2))
                .unwrap(),
            _ => self.engine.register_device(sw).unwrap(),
        };
        self.devices.push((id, kind != 1));
        self.stats.added += 1;
    }

    fn step(&mut self) {
        match self.rng.random_range(0..10) {
            0 | 1 => self.add_device(),
            2 => {
                // Force-remove any device but the last copying one: copiers mostly find
                // a channel (the no-channel path is still taken between removal and add).
                let copying = self.devices.iter().filter(|d| d.1).count();
                let i = self.rng.random_range(0..self.devices.len());
                if !self.devices[i].1 || copying > 1 {
                    let (id, _) = self.devices.swap_remove(i);
                    assert!(self.engine.remove_device(id).is_ok());
                    self.stats.removed += 1;
                }
            }
            3 | 4 if !self.devices.is_empty() => {
                let i = self.rng.random_range(0..self.devices.len());
                match self.engine.unregister_device(self.devices[i].0) {
                    Ok(()) => {
                        self.devices.swap_remove(i);
                        self.stats.unregistered += 1;
                    }
                    Err(UnregisterError::Busy {
                        clients,
                        private_channels,
                        references,
                        ..
                    }) => {
                        assert!(clients + private_channels > 0 && references > 0);
                        self.stats.busy += 1;
                    }
                    Err(e) => panic!("unexpected: {e}"),
                }
            }
            5 => {
                let caps = match self.rng.random_range(0..3) {
                    0 => CapMask::from(Cap::Memcpy),
                    1 => CapMask::from(Cap::Memset),
                    _ => CapMask::of(&[Cap::Memcpy, Cap::Memset]),
                };
                self.clients.push(self.engine.client(caps));
                self.stats.clients_made += 1;
            }
            6 if !self.clients.is_empty() => {
                let i = self.rng.random_range(0..self.clients.len());
                drop(self.clients.swap_remove(i));
            }
            7 => {
                let cpus: Vec<usize> = (0..4).filter(|_| self.rng.random_bool(0.5)).collect();
                let cpus = if cpus.is_empty() { vec![0] } else { cpus };
                self.engine.set_online_cpus(&cpus).unwrap();
                self.stats.cpu_changes += 1;
            }
            8 => {
                if let Ok(chan) = self.engine.request_channel(Cap::Memset.into(), |_| true) {
                    self.stats.privates += 1;
                    drop(chan);
                }
            }
            _ => {
                let _ = self.engine.snapshot();
            }
        }
    }
}

#[test]
fn copies_survive_device_client_and_cpu_churn() {
    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if start.elapsed() > WATCHDOG {
                    eprintln!("stress test hung for {WATCHDOG:?}; aborting");
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let engine = Engine::new();
    let mut churn = Churn {
        engine: engine.clone(),
        rng: ChaCha8Rng::seed_from_u64(SEED),
        devices: Vec::new(),
        software: Vec::new(),
        clients: Vec::new(),
        stats: ChurnStats::default(),
    };
    churn.add_device();
    churn.add_device();

    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let copiers: Vec<_> = (0..THREADS)
        .map(|i| {
            let (engine, started, finished) = (engine.clone(), started.clone(), finished.clone());
            std::thread::Builder::new()
                .name(format!("copier{i}"))
                .spawn(move || {
                    let stats = copier(engine, i, started);
                    finished.fetch_add(1, Ordering::SeqCst);
                    stats
                })
                .unwrap()
        })
        .collect();

    let churner = std::thread::spawn(move || {
        while finished.load(Ordering::SeqCst) < THREADS {
            churn.step();
            std::thread::sleep(Duration::from_micros(churn.rng.random_range(200..2000)));
        }
        churn
    });

    let mut total = CopyStats::default();
    for c in copiers {
        let s = c.join().expect("copier panicked");
        total.completed += s.completed;
        total.submit_errors += s.submit_errors;
        total.wait_errors += s.wait_errors;
        total.no_channel += s.no_channel;
        total.bytes += s.bytes;
        for (kind, n) in s.kinds {
            *total.kinds.entry(kind).or_default() += n;
        }
    }
    let mut churn = churner.join().expect("churner panicked");
    assert_eq!(started.load(Ordering::SeqCst), THREADS);

    assert_eq!(
        total.completed + total.submit_errors + total.wait_errors + total.no_channel,
        THREADS * COPIES
    );
    // Most copies complete; `ring_full` (the caller's CPU fallback) takes a share that
    // grows with the machine's load, since the emulated work queues' threads then run
    // less often and their queues stay full longer.
    assert!(total.completed > THREADS * COPIES / 10, "{total:?}");
    // Only the failures the churn can cause: no copy waited out its 5 s bound, none was
    // refused as malformed.
    for kind in [
        "timeout",
        "wrong_channel",
        "unsupported",
        "length_mismatch",
        "too_large",
    ] {
        assert_eq!(total.kinds.get(kind), None, "{kind}: {total:?}");
    }

    // Every client gone: nothing is pinned, and every device leaves cleanly.
    churn.clients.clear();
    assert_eq!(engine.total_references(), 0);
    for (id, _) in churn.devices.drain(..) {
        assert_eq!(engine.unregister_device(id), Ok(()));
    }
    assert!(engine.snapshot().devices.is_empty());
    for sw in &churn.software {
        assert_eq!(sw.running_workers(), 0, "{sw:?} still runs workers");
    }
    done.store(true, Ordering::SeqCst);
    watchdog.join().unwrap();
    eprintln!(
        "stress: {:?} in {:.1?}; churn: {:?}",
        total,
        start.elapsed(),
        churn.stats
    );
}

/// Cancellation and resource churn on shared channels: copiers share one device's
/// channels while one thread keeps cancelling everything in flight (`terminate_all`, the
/// timeout path of the safe APIs) and another keeps freeing and re-allocating channel
/// resources by taking CPU 1, and with it channel 1, offline and back. Every wait ends (complete
/// or failed, never a timeout), and every completed copy is exact.
#[test]
fn copies_survive_cancellation_and_resource_churn() {
    const COPIERS: usize = 4;
    const EACH: usize = 2_000;
    let engine = Engine::new();
    engine.set_online_cpus(&[0, 1]).unwrap();
    engine
        .register_device(
            SoftwareDevice::builder()
                .name("cancel")
                .channels(2)
                .ring_size(16)
                .build(),
        )
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let holder = engine.client(Cap::Memcpy.into());
    let holder_ref = &holder;
    let channels: Vec<_> = std::thread::scope(|s| {
        [0usize, 1]
            .map(|cpu| {
                s.spawn(move || {
                    dmaengine::cpu::pin_current_thread(cpu).ok();
                    holder_ref.find_channel(Cap::Memcpy).unwrap()
                })
            })
            .map(|h| h.join().unwrap())
            .into_iter()
            .collect()
    });

    let canceller = {
        let (channels, stop) = (channels.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                channels[n % channels.len()].terminate_all();
                n += 1;
                std::thread::sleep(Duration::from_micros(100));
            }
            n
        })
    };
    // Channel 1 leaves the table with CPU 1 (resources freed) and comes back (allocated).
    let churner = {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let cpus: &[usize] = if n.is_multiple_of(2) { &[0] } else { &[0, 1] };
                engine.set_online_cpus(cpus).unwrap();
                n += 1;
                std::thread::sleep(Duration::from_micros(300));
            }
            n
        })
    };

    let copiers: Vec<_> = (0..COPIERS)
        .map(|i| {
            let channels = channels.clone();
            // Each copier is a client: the device stays pinned while it copies.
            let client = engine.client(Cap::Memcpy.into());
            std::thread::spawn(move || {
                let _client = client;
                let mut rng = ChaCha8Rng::seed_from_u64(SEED + 100 + i as u64);
                let source = pattern(1 << 16, i as u64);
                let mut dst = vec![0u8; 1 << 16];
                let mut stats: BTreeMap<&'static str, usize> = BTreeMap::new();
                for _ in 0..EACH {
                    let len = rng.random_range(0..=source.len());
                    let chan = &channels[rng.random_range(0..channels.len())];
                    let (src, dst) = (&source[..len], &mut dst[..len]);
                    dst.iter_mut().zip(src).for_each(|(d, s)| *d = !*s);
                    let kind = scope(|s| match s.memcpy(chan, dst, src) {
                        Err(e) => submit_kind(&e),
                        Ok(t) => match t.wait() {
                            Ok(()) => "complete",
                            Err(e) => wait_kind(&e),
                        },
                    });
                    if kind == "complete" {
                        assert!(dst == src, "copier {i}: completed copy of {len} corrupted");
                    }
                    *stats.entry(kind).or_default() += 1;
                }
                stats
            })
        })
        .collect();

    drop(holder);
    let mut total: BTreeMap<&'static str, usize> = BTreeMap::new();
    for c in copiers {
        for (k, n) in c.join().expect("copier panicked") {
            *total.entry(k).or_default() += n;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let cancels = canceller.join().unwrap();
    let toggles = churner.join().unwrap();
    eprintln!("cancellation stress: {total:?}; {cancels} terminate_all, {toggles} CPU set changes");
    assert_eq!(total.values().sum::<usize>(), COPIERS * EACH);
    for kind in ["timeout", "wrong_channel", "unsupported", "length_mismatch"] {
        assert_eq!(total.get(kind), None, "{kind}: {total:?}");
    }
    assert!(total.get("complete").copied().unwrap_or(0) > 0, "{total:?}");
    assert_eq!(engine.total_references(), 0);
}
