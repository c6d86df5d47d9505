//! [`NetDma`]: the offload's state, its run-time controls (enable/disable, idle release,
//! sysctl-style settings) and its counters.
//!
//! # References and the receive path
//!
//! The engine [`Client`] (the `dmaengine_get` reference that pins DMA devices) lives
//! inside a reader-writer lock. Every offloaded read holds the read side from channel
//! lookup until all of its copies are done, so [`NetDma::disable`] (the write side) first
//! waits for in-flight copies to complete or be cancelled — each is bounded by the wait
//! timeout — and then drops the client: afterwards no device is pinned by netdma. A read
//! that finds the lock being written does not wait: it copies with the CPU (counted as
//! `disabled`).

use crate::adaptive::AdaptivePolicy;
use crate::config::{ConfigError, Copybreak, NetDmaConfig};
use crate::counters::{Counters, RecvStats};
use crate::sync::{AtomicBool, AtomicU64, RwLock};
use dmaengine::{Cap, Client, DeviceId, Engine, EngineSnapshot};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Errors of [`NetDma`]'s controls.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// `enable` while enabled.
    #[error("netdma offload is already enabled")]
    AlreadyEnabled,
    /// `disable` while disabled.
    #[error("netdma offload is already disabled")]
    AlreadyDisabled,
    /// A configuration error (bad key or value); nothing changed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The DMA device could not be registered.
    #[error("registering the DMA device failed: {0}")]
    Register(#[from] dmaengine::RegisterError),
    /// `engine.provider = "dsa"` and no DSA work queue is usable; says exactly why.
    #[cfg(not(loom))]
    #[error("engine.provider = \"dsa\": {0}")]
    Dsa(#[from] dmaengine::dsa::DiscoveryError),
}

/// The per-read parameters, copied out of the configuration once per read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecvParams {
    pub(crate) copybreak: Copybreak,
    pub(crate) low_latency: bool,
    pub(crate) chunk_size: usize,
    pub(crate) max_inflight: usize,
    pub(crate) cpu_fraction: f64,
    pub(crate) timeout: Duration,
}

impl RecvParams {
    fn from_config(c: &NetDmaConfig) -> Self {
        RecvParams {
            copybreak: c.tcp_dma_copybreak,
            low_latency: c.low_latency,
            chunk_size: c.chunk_size,
            max_inflight: c.max_inflight,
            cpu_fraction: c.cpu_fraction,
            timeout: c.wait.timeout(),
        }
    }
}

/// How often a receive call checks for idle release (see [`NetDma::release_if_idle`]).
pub const IDLE_CHECK_EVERY: u32 = 64;

pub(crate) struct DmaState {
    pub(crate) client: Option<Client>,
}

/// TCP receive offload: decides per read whether DMA or the CPU copies, and owns the
/// engine reference. Share it between threads by reference or `Arc`.
pub struct NetDma {
    engine: Engine,
    device: Option<DeviceId>,
    // Plain locks: held only for a copy in or out, never across a loom operation.
    config: parking_lot::RwLock<NetDmaConfig>,
    pub(crate) params: parking_lot::RwLock<RecvParams>,
    /// Mirrors "offload enabled" for a lock-free first check on the receive path.
    pub(crate) enabled: AtomicBool,
    pub(crate) dma: RwLock<DmaState>,
    pub(crate) counters: Counters,
    pub(crate) adaptive: AdaptivePolicy,
    /// Serializes the controls that change the configuration (`set`, `enable`,
    /// `disable`), so two of them never both start from the same old configuration and
    /// one update is lost. Never taken on the receive path.
    /// A plain lock: the loom models never run two controls at once.
    control: parking_lot::Mutex<()>,
    epoch: Instant,
    /// Nanoseconds since `epoch` of the last DMA-eligible read.
    last_eligible: AtomicU64,
}

impl std::fmt::Debug for NetDma {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDma")
            .field("enabled", &self.is_enabled())
            .field("holds_client", &self.holds_client())
            .finish_non_exhaustive()
    }
}

/// Everything about the offload at one moment, serializable to JSON.
#[derive(Clone, Debug, Serialize)]
pub struct NetDmaSnapshot {
    /// Whether offload is enabled.
    pub enabled: bool,
    /// Whether netdma holds its engine client (and so pins devices) right now.
    pub holds_client: bool,
    /// The configuration in force.
    pub config: NetDmaConfig,
    /// Receive counters.
    pub recv: RecvStats,
    /// The engine's devices, channels and table.
    pub engine: EngineSnapshot,
}

/// The DSA provider `config.engine` describes: over the software portal with
/// `engine.dsa.emulate`, else over the work queue `engine.dsa.wq` found on this machine.
#[cfg(not(loom))]
fn dsa_device(
    config: &NetDmaConfig,
) -> Result<std::sync::Arc<dmaengine::dsa::DsaDevice>, dmaengine::dsa::DiscoveryError> {
    use dmaengine::dsa::{CpuFeatures, DsaDevice, DsaPaths, EmulatedWq, WqSelection};
    let e = &config.engine;
    let builder = DsaDevice::builder()
        .channels(e.channels)
        .ring_size(e.ring_size.min(4096))
        .spin(config.wait.spin());
    if e.dsa.emulate {
        // Any chunk the configuration allows fits one descriptor of the software portal.
        let wq = EmulatedWq::builder()
            .max_transfer_size(crate::config::MAX_CHUNK_SIZE as u32)
            .spin(config.wait.spin())
            .build();
        return Ok(builder.emulated(wq));
    }
    let cpu = CpuFeatures::detect();
    let wq =
        dmaengine::dsa::discover::find(&DsaPaths::default(), cpu, &WqSelection::parse(&e.dsa.wq))?;
    builder.open(&wq, cpu)
}

impl NetDma {
    /// Offload over `engine` with `config` (validated). Takes the engine client now if
    /// `config.enabled`.
    pub fn new(engine: Engine, config: NetDmaConfig) -> Result<NetDma, ControlError> {
        Self::build(engine, None, config)
    }

    /// Builds the engine the configuration describes (`engine.provider`, `channels`,
    /// `ring_size`, `pin_workers`; workers spin `wait.spin_us` before parking), registers
    /// its device, and returns offload over it.
    #[cfg(not(loom))]
    pub fn from_config(config: NetDmaConfig) -> Result<NetDma, ControlError> {
        use dmaengine::SoftwareDevice;
        config.validate()?;
        let engine = Engine::new();
        let software = || {
            SoftwareDevice::builder()
                .channels(config.engine.channels)
                .ring_size(config.engine.ring_size)
                .pin_workers(config.engine.pin_workers)
                .spin(config.wait.spin())
                .build()
        };
        let id = match config.engine.provider {
            crate::config::ProviderKind::Software => engine.register_device(software())?,
            crate::config::ProviderKind::Dsa => engine.register_device(dsa_device(&config)?)?,
            crate::config::ProviderKind::Auto => match dsa_device(&config) {
                Ok(dsa) => {
                    tracing::info!(wq = %dsa.wq().name, path = ?dsa.submit_path(), "engine.provider = auto: using DSA");
                    engine.register_device(dsa)?
                }
                Err(e) => {
                    tracing::info!(reason = %e, "engine.provider = auto: no usable DSA work queue, using the software device");
                    engine.register_device(software())?
                }
            },
        };
        Self::build(engine, Some(id), config)
    }

    fn build(
        engine: Engine,
        device: Option<DeviceId>,
        config: NetDmaConfig,
    ) -> Result<NetDma, ControlError> {
        config.validate()?;
        let client = config.enabled.then(|| engine.client(Cap::Memcpy.into()));
        Ok(NetDma {
            device,
            enabled: AtomicBool::new(config.enabled),
            params: parking_lot::RwLock::new(RecvParams::from_config(&config)),
            config: parking_lot::RwLock::new(config),
            dma: RwLock::new(DmaState { client }),
            counters: Counters::default(),
            adaptive: AdaptivePolicy::default(),
            control: parking_lot::Mutex::new(()),
            epoch: Instant::now(),
            last_eligible: AtomicU64::new(0),
            engine,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The device [`from_config`](NetDma::from_config) registered, if any.
    pub fn device(&self) -> Option<DeviceId> {
        self.device
    }

    /// Whether offload is enabled.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Whether netdma holds its engine client now (false when disabled or idle-released).
    pub fn holds_client(&self) -> bool {
        self.dma.read().client.is_some()
    }

    /// Enables offload and takes the engine client (`dmaengine_get`).
    pub fn enable(&self) -> Result<(), ControlError> {
        let _control = self.control.lock();
        self.enable_locked()
    }

    /// [`enable`](Self::enable), with the control lock held by the caller.
    fn enable_locked(&self) -> Result<(), ControlError> {
        let mut dma = self.dma.write();
        if self.enabled.load(Ordering::Acquire) {
            return Err(ControlError::AlreadyEnabled);
        }
        dma.client = Some(self.engine.client(Cap::Memcpy.into()));
        self.enabled.store(true, Ordering::Release);
        self.config.write().enabled = true;
        tracing::info!("netdma offload enabled");
        Ok(())
    }

    /// Disables offload: waits for in-flight copies to complete (or be cancelled at the
    /// wait timeout), then drops the engine client so no device stays pinned. Reads go on,
    /// copied by the CPU.
    pub fn disable(&self) -> Result<(), ControlError> {
        let _control = self.control.lock();
        self.disable_locked()
    }

    /// [`disable`](Self::disable), with the control lock held by the caller.
    fn disable_locked(&self) -> Result<(), ControlError> {
        // Once this thread waits for the write side, new reads fail `try_read` and copy
        // with the CPU; the write side is ours when the last in-flight read is done.
        let mut dma = self.dma.write();
        if !self.enabled.swap(false, Ordering::AcqRel) {
            return Err(ControlError::AlreadyDisabled);
        }
        // No copy starts without a read side, so none starts now. Pipelined copies started
        // before are still in flight: wait for them, as long as one copy may take.
        self.wait_for_copies_in_flight(self.params.read().timeout);
        let client = dma.client.take();
        drop(dma);
        drop(client); // dmaengine_put, outside the lock
        self.config.write().enabled = false;
        tracing::info!("netdma offload disabled; engine references dropped");
        Ok(())
    }

    /// Idle release: after `idle_release_ms` without a DMA-eligible read, drops the
    /// engine client (the network-idle signal: the devices are no longer pinned); the
    /// next eligible read takes it again. Returns whether it released.
    ///
    /// The receive path runs this by itself: every [`IDLE_CHECK_EVERY`]-th call of
    /// [`recv`](Self::recv) on a thread, and every idle wait of the pipelined receive. An
    /// application that stops calling either altogether (no reads at all) and still wants
    /// the devices let go calls this from its poll loop.
    pub fn release_if_idle(&self, now: Instant) -> bool {
        let Some(idle) = self.config.read().idle_release() else {
            return false;
        };
        let last = self.epoch + Duration::from_nanos(self.last_eligible.load(Ordering::Relaxed));
        if now.saturating_duration_since(last) < idle {
            return false;
        }
        let Some(mut dma) = self.dma.try_write() else {
            return false; // a read is in flight: not idle
        };
        if self.counters.in_flight() > 0 {
            return false; // pipelined copies are in flight: not idle
        }
        let Some(client) = dma.client.take() else {
            return false;
        };
        drop(dma);
        drop(client);
        tracing::debug!(?idle, "netdma idle: engine references released");
        true
    }

    /// Waits until no copy is in flight, at most `timeout`. Past it, `disable` goes on: a
    /// copy still in flight is then the device's to finish or fail (a device is only freed
    /// once its work is done), and the pipeline redoes a failed one with the CPU.
    fn wait_for_copies_in_flight(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.counters.in_flight() > 0 {
            if Instant::now() >= deadline {
                tracing::warn!(
                    bytes = self.counters.in_flight(),
                    "netdma disable: copies still in flight after the wait timeout"
                );
                return;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Idle release on the receive path, so the application need not call
    /// [`release_if_idle`](Self::release_if_idle): every [`IDLE_CHECK_EVERY`]-th call on a thread runs
    /// it (a thread-local count, so the check costs no shared cache line and no clock
    /// read on the other calls).
    pub(crate) fn release_if_idle_now_and_then(&self) {
        thread_local!(static CALLS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
        let due = CALLS.with(|calls| {
            let n = calls.get().wrapping_add(1);
            calls.set(n);
            n % IDLE_CHECK_EVERY == 0
        });
        if due {
            self.release_if_idle(Instant::now());
        }
    }

    /// Nanoseconds since this offload was created (the adaptive policy's clock).
    pub(crate) fn clock_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Notes a DMA-eligible read at `now` (for idle release).
    pub(crate) fn note_eligible_read(&self, now: Instant) {
        let ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        self.last_eligible.store(ns, Ordering::Relaxed);
    }

    /// Takes the client again after an idle release. Blocks only behind another control
    /// operation.
    pub(crate) fn reacquire(&self) {
        let mut dma = self.dma.write();
        if dma.client.is_none() && self.enabled.load(Ordering::Acquire) {
            dma.client = Some(self.engine.client(Cap::Memcpy.into()));
            tracing::debug!("netdma busy again: engine references taken");
        }
    }

    /// Reads a setting by its sysctl name (`net.ipv4.tcp_dma_copybreak`, ...).
    pub fn get(&self, key: &str) -> Result<String, ControlError> {
        Ok(self.config.read().get(key)?)
    }

    /// Changes a setting at run time by its sysctl name. A bad key or value is an error
    /// naming the key and the accepted range, and nothing changes. Setting
    /// `net.netdma.enabled` enables or disables offload (no error if already so).
    pub fn set(&self, key: &str, value: &str) -> Result<(), ControlError> {
        let _control = self.control.lock();
        let mut candidate = self.config.read().clone();
        candidate.set(key, value)?;
        let want_enabled = candidate.enabled;
        if want_enabled != self.is_enabled() {
            if want_enabled {
                self.enable_locked().or_else(ignore_already)?;
            } else {
                self.disable_locked().or_else(ignore_already)?;
            }
        }
        *self.params.write() = RecvParams::from_config(&candidate);
        *self.config.write() = candidate;
        Ok(())
    }

    /// The configuration in force.
    pub fn config(&self) -> NetDmaConfig {
        self.config.read().clone()
    }

    /// The receive counters now.
    pub fn stats(&self) -> RecvStats {
        self.counters.snapshot()
    }

    /// Configuration, state, counters and the engine, at one moment.
    pub fn snapshot(&self) -> NetDmaSnapshot {
        NetDmaSnapshot {
            enabled: self.is_enabled(),
            holds_client: self.holds_client(),
            config: self.config(),
            recv: self.stats(),
            engine: self.engine.snapshot(),
        }
    }
}

fn ignore_already(e: ControlError) -> Result<(), ControlError> {
    match e {
        ControlError::AlreadyEnabled | ControlError::AlreadyDisabled => Ok(()),
        other => Err(other),
    }
}

/// Loom models of the control protocol against a read in flight. Run with
/// `RUSTFLAGS="--cfg loom" cargo test -p netdma --lib --release loom`.
#[cfg(all(test, loom))]
#[allow(unsafe_code)] // a test provider implements the unsafe `Provider` trait
mod loom_models {
    use super::*;
    use crate::counters::Fallback;
    use dmaengine::{CapMask, Descriptor, Provider, ProviderError, ProviderSubmitError, TxStatus};
    use loom::thread;
    use std::sync::Arc;

    /// A provider with nothing asynchronous: the model is about references, not copies.
    struct Inert;

    // SAFETY: `submit` accepts nothing, so no memory is ever accessed.
    unsafe impl Provider for Inert {
        fn name(&self) -> &str {
            "inert"
        }
        fn capabilities(&self) -> CapMask {
            Cap::Memcpy.into()
        }
        fn operations(&self) -> CapMask {
            Cap::Memcpy.into()
        }
        fn channel_count(&self) -> usize {
            1
        }
        fn alloc_chan_resources(&self, _: usize) -> Result<(), ProviderError> {
            Ok(())
        }
        fn free_chan_resources(&self, _: usize) {}
        unsafe fn submit(&self, _: usize, _: Descriptor) -> Result<u64, ProviderSubmitError> {
            Err(ProviderSubmitError::NoResources)
        }
        fn issue_pending(&self, _: usize) {}
        fn tx_status(&self, _: usize, _: u64) -> TxStatus {
            TxStatus::Complete
        }
        fn terminate_all(&self, _: usize) {}
        fn error_count(&self, _: usize) -> u64 {
            0
        }
    }

    fn netdma() -> Arc<NetDma> {
        let engine = Engine::new();
        engine.register_device(Arc::new(Inert)).unwrap();
        Arc::new(NetDma::new(engine, NetDmaConfig::default()).unwrap())
    }

    /// A read with its copy "in flight": while it holds the channel, the device must stay
    /// pinned (so it cannot be unregistered under the copy).
    fn read_in_flight(n: &NetDma) -> bool {
        match n.dma_channel() {
            Ok((_guard, _channel)) => {
                assert!(
                    n.engine().total_references() > 0,
                    "device unpinned under an in-flight copy"
                );
                true
            }
            Err(reason) => {
                assert!(matches!(reason, Fallback::Disabled), "{reason:?}");
                false
            }
        }
    }

    #[test]
    fn loom_disable_waits_for_a_read_in_flight() {
        loom::model(|| {
            let n = netdma();
            let reader = {
                let n = n.clone();
                thread::spawn(move || read_in_flight(&n))
            };
            n.disable().unwrap();
            reader.join().unwrap();
            assert_eq!(n.engine().total_references(), 0);
            assert!(!read_in_flight(&n), "no DMA after disable");
        });
    }

    #[test]
    fn loom_idle_release_never_unpins_a_read_in_flight() {
        loom::model(|| {
            let n = netdma();
            n.set("net.netdma.idle_release_ms", "1").unwrap();
            let reader = {
                let n = n.clone();
                thread::spawn(move || read_in_flight(&n))
            };
            let far = std::time::Instant::now() + std::time::Duration::from_secs(3600);
            n.release_if_idle(far);
            assert!(
                reader.join().unwrap(),
                "still enabled: the reader gets a channel"
            );
            // Whatever the order, the next read takes the references again lazily.
            assert!(read_in_flight(&n));
            assert!(n.engine().total_references() > 0);
        });
    }

    #[test]
    fn loom_toggling_against_a_read_leaves_consistent_references() {
        loom::model(|| {
            let n = netdma();
            let toggler = {
                let n = n.clone();
                thread::spawn(move || {
                    n.disable().unwrap();
                    n.enable().unwrap();
                })
            };
            read_in_flight(&n);
            toggler.join().unwrap();
            assert!(n.is_enabled());
            assert!(n.engine().total_references() > 0);
            n.disable().unwrap();
            assert_eq!(n.engine().total_references(), 0);
        });
    }
}
