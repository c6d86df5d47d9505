//! [`DsaDeviceBuilder`]: what a [`DsaDevice`] is built from, checked before anything is
//! opened.

use super::channel::DsaChannel;
use super::hw::flags;
use super::portal::Portal;
use super::{
    CpuFeatures, DiscoveryError, DsaDevice, EmulatedWq, Stats, SubmitPath, WqInfo, WqMode,
};
use crate::provider::ProviderKind;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

/// Builds a [`DsaDevice`].
#[derive(Clone, Debug)]
pub struct DsaDeviceBuilder {
    name: Option<String>,
    channels: usize,
    ring_size: usize,
    batch: bool,
    cache_control: bool,
    block_on_fault: bool,
    enqcmd_retries: u32,
    spin: Duration,
}

impl DsaDeviceBuilder {
    /// The defaults ([`DsaDevice::builder`]).
    pub(super) fn new() -> Self {
        DsaDeviceBuilder {
            name: None,
            channels: 1,
            ring_size: 256,
            batch: true,
            cache_control: true,
            block_on_fault: false,
            enqcmd_retries: 8,
            spin: Duration::from_micros(20),
        }
    }

    /// The device's name (default `dsa-<wq>`, or `dsa-emulated`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Channels sharing the WQ (default 1).
    pub fn channels(mut self, n: usize) -> Self {
        self.channels = n;
        self
    }

    /// Descriptors and completion records per channel ring (default 256, a power of two,
    /// at least 2).
    pub fn ring_size(mut self, n: usize) -> Self {
        self.ring_size = n.max(2).next_power_of_two();
        self
    }

    /// Send each doorbell's run of descriptors as one BATCH descriptor where the device
    /// and the submission path allow it (default on).
    pub fn batch(mut self, on: bool) -> Self {
        self.batch = on;
        self
    }

    /// Set the cache-control flag: the device writes destinations into the cache, which
    /// the receiver reads next (default on).
    pub fn cache_control(mut self, on: bool) -> Self {
        self.cache_control = on;
        self
    }

    /// Set block-on-fault: the device waits for page faults to be resolved instead of
    /// stopping with a partial completion (default off: the CPU finishes the rest).
    pub fn block_on_fault(mut self, on: bool) -> Self {
        self.block_on_fault = on;
        self
    }

    /// ENQCMD attempts after the first refusal before `RingFull` (default 8).
    pub fn enqcmd_retries(mut self, n: u32) -> Self {
        self.enqcmd_retries = n;
        self
    }

    /// How long a waiter spins before it starts yielding (default 20 us).
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// The provider over the software portal `wq`.
    pub fn emulated(self, wq: Arc<EmulatedWq>) -> Arc<DsaDevice> {
        let info = wq.info();
        let name = self.name.clone().unwrap_or_else(|| "dsa-emulated".into());
        self.build(name, info, Portal::Emulated(wq))
    }

    /// The provider over the hardware WQ `wq`: opens its character device and maps its
    /// portal (or uses `write()` where that is refused or the CPU lacks the instruction).
    pub fn open(self, wq: &WqInfo, cpu: CpuFeatures) -> Result<Arc<DsaDevice>, DiscoveryError> {
        let portal = Portal::open(wq, cpu)?;
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| format!("dsa-{}", wq.name));
        Ok(self.build(name, wq.clone(), portal))
    }

    fn build(self, name: String, wq: WqInfo, portal: Portal) -> Arc<DsaDevice> {
        let path = portal.path();
        let emulated = matches!(portal, Portal::Emulated(_));
        // BATCH through write() is refused on DSA 1.0; keep it to the portal instructions.
        let batch = self.batch && wq.batch && wq.max_batch_size >= 2 && path != SubmitPath::Write;
        let mut base_flags = flags::CRAV | flags::RCR;
        if self.cache_control {
            base_flags |= flags::CC;
        }
        if self.block_on_fault {
            base_flags |= flags::BOF;
        }
        let max_transfer =
            usize::try_from(wq.max_transfer_size.min(u64::from(u32::MAX))).unwrap_or(usize::MAX);
        Arc::new(DsaDevice {
            channels: (0..self.channels)
                .map(|i| DsaChannel::new(i, self.ring_size))
                .collect(),
            kind: if emulated {
                ProviderKind::DsaEmulated
            } else {
                ProviderKind::Dsa
            },
            shared: wq.mode == WqMode::Shared,
            wq_size: wq.size.max(1),
            max_transfer,
            max_batch: wq.max_batch_size.min(self.ring_size),
            batch,
            memset: wq.memfill,
            base_flags,
            enqcmd_retries: self.enqcmd_retries,
            spin: self.spin,
            occupancy: AtomicUsize::new(0),
            stats: Stats::default(),
            name,
            wq,
            portal,
        })
    }
}
