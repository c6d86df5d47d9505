//! The soak harness: many verified streams over the in-memory link while a chaos thread
//! disables and enables offload, changes the copybreak, hot-adds and force-removes DMA
//! devices with copies in flight, changes the online CPU set and injects faults.
//!
//! Several receiver threads share the offload (twice as many threads as this machine's
//! cores, counting the chaos thread and the DMA workers), half of them through the
//! pipelined receive with copies in flight across polls.
//!
//! Every stream is a pure function of its seed and byte position, so the receiver checks
//! each byte, and its order, without keeping a copy. A failing seed reproduces the same
//! chaos schedule (the interleaving with the receiver may differ; the schedule does not).

use crate::pattern;
use dmaengine::dsa::{DsaDevice, EmulatedWq};
use dmaengine::{DeviceId, FaultInjector, FaultPlan, SoftwareDevice};
use netdma::config::{Copybreak, NetDmaConfig};
use netdma::link::MemoryLink;
use netdma::pair::StackPair;
use netdma::pipeline::Pipeline;
use netdma::stack::Stack;
use netdma::NetDma;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use smoltcp::iface::SocketHandle;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    /// How long the chaos lasts.
    pub duration: Duration,
    /// Seed of the streams and of the chaos schedule.
    pub seed: u64,
    /// Concurrent connections.
    pub connections: usize,
    /// Link MTU.
    pub mtu: usize,
    /// How long, after the chaos stops, the streams may take to deliver what was sent.
    pub drain_limit: Duration,
    /// Receiver threads sharing the one offload (odd ones use the pipelined receive).
    pub receivers: usize,
}

impl Default for SoakConfig {
    fn default() -> Self {
        SoakConfig {
            duration: Duration::from_secs(10),
            seed: 1,
            connections: 4,
            mtu: 65535,
            drain_limit: Duration::from_secs(30),
            receivers: 2,
        }
    }
}

/// What happened. `corrupt_bytes`, `lost_bytes` and `leaked_references` must be 0.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SoakReport {
    /// The seed.
    pub seed: u64,
    /// Bytes received and checked, in order.
    pub bytes_verified: u64,
    /// Bytes that differed from what was sent at their position.
    pub corrupt_bytes: u64,
    /// Bytes sent but never received.
    pub lost_bytes: u64,
    /// Transfers failed on purpose.
    pub faults_injected: u64,
    /// Forced removals of devices (with copies possibly in flight).
    pub hot_removals: u64,
    /// Devices added while traffic flowed.
    pub hot_adds: u64,
    /// Of those, DSA providers over the software portal (with page faults injected at
    /// random bytes, finished by the CPU).
    pub dsa_adds: u64,
    /// Bytes the CPU copied after partial completions (the rest of page-faulted copies).
    pub partial_cpu_bytes: u64,
    /// Times offload was disabled or enabled.
    pub toggles: u64,
    /// Run-time copybreak changes.
    pub copybreak_changes: u64,
    /// Online CPU set changes.
    pub cpu_set_changes: u64,
    /// Channel stalls injected.
    pub stalls: u64,
    /// Bytes delivered by DMA.
    pub dma_bytes: u64,
    /// Bytes delivered by the CPU.
    pub cpu_fallback_bytes: u64,
    /// Engine references left after the final disable.
    pub leaked_references: u64,
    /// The longest a single read waited, in milliseconds.
    pub max_stall_ms: f64,
    /// Seconds the run took in all.
    pub seconds: f64,
}

impl SoakReport {
    /// Whether the run kept every promise.
    pub fn ok(&self) -> bool {
        self.corrupt_bytes == 0 && self.lost_bytes == 0 && self.leaked_references == 0
    }
}

struct Conn {
    server: SocketHandle,
    client: SocketHandle,
    seed: u64,
    sent: u64,
    received: u64,
}

/// A device the chaos thread added, with the handle that injects its faults.
enum AddedDevice {
    /// A software device behind a fault injector.
    Software(Arc<FaultInjector<SoftwareDevice>>),
    /// The DSA provider over its software portal, which injects page faults and stalls.
    Dsa(Arc<EmulatedWq>),
}

impl AddedDevice {
    fn faults_injected(&self) -> u64 {
        match self {
            AddedDevice::Software(d) => d.faults_injected(),
            AddedDevice::Dsa(wq) => wq.stats().page_faults,
        }
    }

    /// Stops injecting faults and ends stalls.
    fn calm(&self) {
        match self {
            AddedDevice::Software(d) => {
                d.set_plan(FaultPlan::default());
                for chan in 0..2 {
                    d.unstall(chan);
                }
            }
            AddedDevice::Dsa(wq) => {
                wq.random_page_faults(0.0, 0);
                wq.release_stall();
            }
        }
    }
}

/// Devices the chaos thread added.
type Added = Vec<(DeviceId, AddedDevice)>;

/// Runs a soak and reports.
pub fn run(config: &SoakConfig) -> SoakReport {
    let started = Instant::now();
    let netdma_config = NetDmaConfig {
        // Offload every read from 4 KiB up: the soak is there to stress the DMA path.
        tcp_dma_copybreak: netdma::Copybreak::LINUX_DEFAULT,
        // Bounded waits short enough that injected stalls resolve while the run lasts.
        wait: netdma::config::WaitPolicy {
            timeout_ms: 100,
            ..Default::default()
        },
        ..NetDmaConfig::default()
    };
    let netdma =
        Arc::new(NetDma::from_config(netdma_config).expect("default configuration is valid"));
    let stop = Arc::new(AtomicBool::new(false));
    let added: Arc<Mutex<Added>> = Arc::default();
    let counters = Arc::new(ChaosCounters::default());
    let chaos = {
        let (netdma, stop, added, counters) = (
            netdma.clone(),
            stop.clone(),
            added.clone(),
            counters.clone(),
        );
        let seed = config.seed;
        std::thread::spawn(move || chaos_loop(&netdma, &stop, &added, &counters, seed))
    };
    let chaos_until = started + config.duration;
    let chaos_over = Arc::new(AtomicBool::new(false));
    let receivers: Vec<_> = (0..config.receivers.max(1))
        .map(|r| {
            let (netdma, chaos_over, config) = (netdma.clone(), chaos_over.clone(), config.clone());
            std::thread::Builder::new()
                .name(format!("soak-rx{r}"))
                .spawn(move || receive_loop(&netdma, &config, r as u64, &chaos_over))
                .expect("spawning a receiver")
        })
        .collect();

    std::thread::sleep(chaos_until.saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    chaos.join().expect("chaos thread");
    for (_, device) in added.lock().iter() {
        device.calm();
    }
    chaos_over.store(true, Ordering::Relaxed);

    let mut report = SoakReport {
        seed: config.seed,
        ..SoakReport::default()
    };
    for receiver in receivers {
        let part = receiver.join().expect("receiver thread");
        report.bytes_verified += part.bytes_verified;
        report.corrupt_bytes += part.corrupt_bytes;
        report.lost_bytes += part.lost_bytes;
        report.max_stall_ms = report.max_stall_ms.max(part.max_stall_ms);
    }
    if netdma.is_enabled() {
        netdma.disable().expect("enabled, so disable succeeds");
    }
    report.leaked_references = netdma.engine().total_references() as u64;
    let stats = netdma.stats();
    report.dma_bytes = stats.dma_bytes;
    report.cpu_fallback_bytes = stats.cpu_bytes;
    report.partial_cpu_bytes = stats.fallback_bytes.partial;
    report.faults_injected = counters.faults.load(Ordering::Relaxed)
        + added
            .lock()
            .iter()
            .map(|(_, d)| d.faults_injected())
            .sum::<u64>();
    report.hot_removals = counters.removals.load(Ordering::Relaxed);
    report.hot_adds = counters.adds.load(Ordering::Relaxed);
    report.dsa_adds = counters.dsa_adds.load(Ordering::Relaxed);
    report.toggles = counters.toggles.load(Ordering::Relaxed);
    report.copybreak_changes = counters.copybreaks.load(Ordering::Relaxed);
    report.cpu_set_changes = counters.cpu_sets.load(Ordering::Relaxed);
    report.stalls = counters.stalls.load(Ordering::Relaxed);
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// One receiver thread: its own stack pair and connections, the shared offload. Odd
/// receivers use the pipelined receive, even ones `NetDma::recv`.
fn receive_loop(
    netdma: &Arc<NetDma>,
    config: &SoakConfig,
    receiver: u64,
    chaos_over: &AtomicBool,
) -> SoakReport {
    let mut pair = StackPair::new(config.mtu);
    let mut conns: Vec<Conn> = (0..config.connections)
        .map(|i| {
            let (server, client) = pair.connect(1 << 20, 1 << 20).expect("in-memory handshake");
            Conn {
                server,
                client,
                seed: config
                    .seed
                    .wrapping_mul(1000)
                    .wrapping_add(receiver * 100 + i as u64),
                sent: 0,
                received: 0,
            }
        })
        .collect();
    let pipelined = receiver % 2 == 1;
    let StackPair {
        server, mut client, ..
    } = pair;
    let mut receiver_side = if pipelined {
        Side::Pipelined(Pipeline::new(server, netdma.clone()))
    } else {
        Side::Direct(server)
    };
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0xA5A5 ^ receiver);
    let mut part = SoakReport::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut chunk = vec![0u8; 256 * 1024];
    let mut expected = vec![0u8; buf.len()];
    let mut drain_until = None;
    loop {
        let chaos_running = !chaos_over.load(Ordering::Relaxed);
        if !chaos_running {
            let until = *drain_until.get_or_insert_with(|| Instant::now() + config.drain_limit);
            if conns.iter().all(|c| c.received == c.sent) || Instant::now() >= until {
                break;
            }
        }
        for conn in &mut conns {
            let sock = client.tcp_mut(conn.client);
            if chaos_running && sock.can_send() {
                let n = (sock.send_capacity() - sock.send_queue()).min(chunk.len());
                pattern::fill(conn.seed, conn.sent, &mut chunk[..n]);
                conn.sent += sock
                    .send_slice(&chunk[..n])
                    .expect("send on an open socket") as u64;
            }
        }
        client.poll();
        for conn in &mut conns {
            let read = 1 + rng.random_range(0..buf.len());
            let read = if rng.random_bool(0.5) {
                read.min(64 * 1024)
            } else {
                read
            };
            let t = Instant::now();
            let got: Option<(Vec<u8>, usize)> = match &mut receiver_side {
                Side::Direct(stack) => {
                    stack.poll();
                    let n = netdma
                        .recv(stack.tcp_mut(conn.server), &mut buf[..read])
                        .expect("the connection stays open");
                    Some((Vec::new(), n))
                }
                Side::Pipelined(pipeline) => {
                    if let Some(done) = pipeline.take_completed(conn.server) {
                        assert_eq!(done.error, None, "the connection stays open");
                        Some((done.buf, done.len))
                    } else {
                        // Keep two reads posted (copies stay in flight across read
                        // boundaries), then poll. Low-water 1: a read ends once its
                        // copies are done, so the drain cannot wait for data that will
                        // never come.
                        if pipeline.posted(conn.server) < 2 {
                            pipeline
                                .post_recv(conn.server, vec![0; read], 1)
                                .expect("a non-empty buffer, under MAX_POSTED");
                        }
                        pipeline.poll();
                        None
                    }
                }
            };
            part.max_stall_ms = part.max_stall_ms.max(t.elapsed().as_secs_f64() * 1e3);
            let Some((owned, n)) = got else { continue };
            let bytes = if owned.is_empty() {
                &buf[..n]
            } else {
                &owned[..n]
            };
            if expected.len() < n {
                expected.resize(n, 0);
            }
            pattern::fill(conn.seed, conn.received, &mut expected[..n]);
            part.corrupt_bytes += bytes
                .iter()
                .zip(&expected[..n])
                .filter(|(got, want)| got != want)
                .count() as u64;
            conn.received += n as u64;
            part.bytes_verified += n as u64;
        }
        netdma.release_if_idle(Instant::now());
    }
    part.lost_bytes = conns.iter().map(|c| c.sent - c.received).sum();
    part
}

/// The server side of one receiver.
enum Side {
    Direct(Stack<MemoryLink>),
    Pipelined(Pipeline<Stack<MemoryLink>>),
}

#[derive(Default)]
struct ChaosCounters {
    faults: AtomicU64,
    removals: AtomicU64,
    adds: AtomicU64,
    dsa_adds: AtomicU64,
    toggles: AtomicU64,
    copybreaks: AtomicU64,
    cpu_sets: AtomicU64,
    stalls: AtomicU64,
}

fn chaos_loop(
    netdma: &NetDma,
    stop: &AtomicBool,
    added: &Mutex<Added>,
    counters: &ChaosCounters,
    seed: u64,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let engine = netdma.engine().clone();
    let all_cpus = dmaengine::cpu::process_affinity();
    let mut original = netdma.device();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_micros(rng.random_range(500..5000)));
        match rng.random_range(0..7) {
            0 => {
                let result = if netdma.is_enabled() {
                    netdma.disable()
                } else {
                    netdma.enable()
                };
                if result.is_ok() {
                    counters.toggles.fetch_add(1, Ordering::Relaxed);
                }
            }
            1 => {
                let value = [
                    Copybreak::Bytes(0),
                    Copybreak::Bytes(512),
                    Copybreak::Bytes(4096),
                    Copybreak::Bytes(65536),
                    Copybreak::Auto,
                    Copybreak::NEVER,
                ][rng.random_range(0..6)];
                netdma
                    .set("net.ipv4.tcp_dma_copybreak", &value.to_string())
                    .expect("valid copybreak");
                counters.copybreaks.fetch_add(1, Ordering::Relaxed);
            }
            // A third of the added devices are the DSA provider on its software portal.
            2 if rng.random_bool(1.0 / 3.0) => {
                let wq = EmulatedWq::builder()
                    .size(rng.random_range(4..=64))
                    .max_transfer_size(netdma::config::MAX_CHUNK_SIZE as u32)
                    .build();
                wq.random_page_faults(if rng.random_bool(0.5) { 0.05 } else { 0.0 }, rng.random());
                let device = DsaDevice::builder()
                    .channels(2)
                    .ring_size(64)
                    .name("soak-dsa")
                    .emulated(wq.clone());
                if let Ok(id) = engine.register_device(device) {
                    added.lock().push((id, AddedDevice::Dsa(wq)));
                    counters.adds.fetch_add(1, Ordering::Relaxed);
                    counters.dsa_adds.fetch_add(1, Ordering::Relaxed);
                }
            }
            2 => {
                let device = FaultInjector::new(
                    SoftwareDevice::builder().channels(2).name("soak").build(),
                    FaultPlan {
                        fail_probability: if rng.random_bool(0.5) { 0.05 } else { 0.0 },
                        seed: rng.random(),
                        ..FaultPlan::default()
                    },
                );
                if let Ok(id) = engine.register_device(device.clone()) {
                    added.lock().push((id, AddedDevice::Software(device)));
                    counters.adds.fetch_add(1, Ordering::Relaxed);
                }
            }
            3 => {
                // Force-remove an added device, or now and then the original one.
                let victim = {
                    let mut list = added.lock();
                    if !list.is_empty() && rng.random_bool(0.8) {
                        let i = rng.random_range(0..list.len());
                        let (id, device) = list.swap_remove(i);
                        counters
                            .faults
                            .fetch_add(device.faults_injected(), Ordering::Relaxed);
                        Some(id)
                    } else {
                        original.take()
                    }
                };
                if let Some(id) = victim {
                    if engine.remove_device(id).is_ok() {
                        counters.removals.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            4 => {
                let mut cpus: Vec<usize> = all_cpus
                    .iter()
                    .copied()
                    .filter(|_| rng.random_bool(0.6))
                    .collect();
                if cpus.is_empty() {
                    cpus.push(all_cpus[0]);
                }
                if engine.set_online_cpus(&cpus).is_ok() {
                    counters.cpu_sets.fetch_add(1, Ordering::Relaxed);
                }
            }
            5 => {
                let list = added.lock();
                if !list.is_empty() {
                    let delay = Duration::from_millis(rng.random_range(1..150));
                    match &list[rng.random_range(0..list.len())].1 {
                        AddedDevice::Software(device) => {
                            let chan = rng.random_range(0..2);
                            device.stall(chan);
                            let device = device.clone();
                            std::thread::spawn(move || {
                                std::thread::sleep(delay);
                                device.unstall(chan);
                            });
                        }
                        AddedDevice::Dsa(wq) => wq.stall(delay),
                    }
                    counters.stalls.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {
                let list = added.lock();
                if !list.is_empty() {
                    match &list[rng.random_range(0..list.len())].1 {
                        AddedDevice::Software(device) => device.set_plan(FaultPlan {
                            fail_probability: rng.random_range(0.0..0.3),
                            fail_every: rng.random_bool(0.3).then(|| rng.random_range(2..10)),
                            seed: rng.random(),
                        }),
                        AddedDevice::Dsa(wq) => {
                            wq.random_page_faults(rng.random_range(0.0..0.3), rng.random())
                        }
                    }
                }
            }
        }
    }
}
