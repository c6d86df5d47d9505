//! Test helpers shared by the engine's integration tests.
#![allow(dead_code)]

use dmaengine::{CapMask, Descriptor, Provider, ProviderError, ProviderSubmitError, TxStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A provider that performs every copy synchronously at submit and counts resource calls:
/// an obviously correct model to test the engine's bookkeeping against.
pub struct MockDevice {
    pub name: String,
    pub caps: CapMask,
    pub ops: CapMask,
    pub channels: usize,
    pub allocated: Vec<AtomicUsize>,
    pub next: Vec<AtomicUsize>,
    /// `issue_pending` calls, all channels.
    pub doorbells: AtomicUsize,
}

impl MockDevice {
    pub fn new(name: &str, caps: CapMask, channels: usize) -> Arc<Self> {
        Self::with_ops(name, caps, caps.operations(), channels)
    }

    pub fn with_ops(name: &str, caps: CapMask, ops: CapMask, channels: usize) -> Arc<Self> {
        Arc::new(MockDevice {
            name: name.into(),
            caps,
            ops,
            channels,
            allocated: (0..channels).map(|_| AtomicUsize::new(0)).collect(),
            next: (0..channels).map(|_| AtomicUsize::new(0)).collect(),
            doorbells: AtomicUsize::new(0),
        })
    }

    /// Channels with resources allocated now.
    pub fn allocated_channels(&self) -> usize {
        self.allocated
            .iter()
            .filter(|a| a.load(Ordering::SeqCst) > 0)
            .count()
    }
}

// SAFETY: every descriptor is performed to completion inside `submit`, so it is done
// before any status is reported, and nothing touches memory afterwards.
unsafe impl Provider for MockDevice {
    fn name(&self) -> &str {
        &self.name
    }
    fn capabilities(&self) -> CapMask {
        self.caps
    }
    fn operations(&self) -> CapMask {
        self.ops
    }
    fn channel_count(&self) -> usize {
        self.channels
    }
    fn alloc_chan_resources(&self, chan: usize) -> Result<(), ProviderError> {
        assert_eq!(
            self.allocated[chan].fetch_add(1, Ordering::SeqCst),
            0,
            "double alloc"
        );
        Ok(())
    }
    fn free_chan_resources(&self, chan: usize) {
        assert_eq!(
            self.allocated[chan].fetch_sub(1, Ordering::SeqCst),
            1,
            "double free"
        );
    }
    unsafe fn submit(&self, chan: usize, desc: Descriptor) -> Result<u64, ProviderSubmitError> {
        if self.allocated[chan].load(Ordering::SeqCst) == 0 {
            return Err(ProviderSubmitError::NoResources);
        }
        match desc {
            // SAFETY: the caller's contract makes the memory valid for `len` bytes.
            Descriptor::Memcpy { dst, src, len } if len > 0 => unsafe {
                std::ptr::copy_nonoverlapping(src, dst, len)
            },
            // SAFETY: the caller's contract makes `dst` valid for `len` bytes of writes.
            Descriptor::Memset { dst, value, len } if len > 0 => unsafe {
                std::ptr::write_bytes(dst, value, len)
            },
            _ => {}
        }
        Ok(self.next[chan].fetch_add(1, Ordering::SeqCst) as u64 + 1)
    }
    fn issue_pending(&self, _chan: usize) {
        self.doorbells.fetch_add(1, Ordering::SeqCst);
    }
    fn tx_status(&self, _chan: usize, _seq: u64) -> TxStatus {
        TxStatus::Complete
    }
    fn terminate_all(&self, _chan: usize) {}
    fn error_count(&self, _chan: usize) -> u64 {
        0
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
