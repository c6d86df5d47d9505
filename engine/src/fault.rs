//! Fault injection: a provider wrapper that fails, stalls or loses transfers on purpose.
//!
//! For tests and the soak harness. Every fault keeps the [`Provider`] safety rules: a
//! failed transfer is reported as `Error` only after the wrapped device is done with it
//! (it may have written part of the destination, as a real failed DMA may), a stalled
//! channel simply withholds the doorbell, and a vanished device terminates its work.

use crate::provider::{Descriptor, Provider, ProviderError, ProviderSubmitError};
use crate::{CapMask, TxStatus};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Which transfers fail.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultPlan {
    /// Fail every k-th transfer submitted to the device (1-based: `Some(3)` fails the 3rd,
    /// 6th, ...).
    pub fail_every: Option<u64>,
    /// Fail each transfer with this probability, drawn from a generator seeded with `seed`.
    pub fail_probability: f64,
    /// Seed for `fail_probability`.
    pub seed: u64,
}

/// Wraps a provider and injects faults: fails every k-th transfer or each with a seeded
/// probability ([`FaultPlan`]), stalls a channel ([`stall`](Self::stall)) or makes the
/// device vanish mid-flight ([`vanish`](Self::vanish)).
///
/// Every fault keeps the [`Provider`] safety rules: a failed transfer is reported as
/// `Error` only after the wrapped device is done with it (it may have written part of the
/// destination, as a real failed DMA may), a stalled channel withholds the doorbell, and a
/// vanished device terminates its work.
pub struct FaultInjector<P: Provider> {
    inner: Arc<P>,
    plan: Mutex<(FaultPlan, ChaCha8Rng)>,
    submitted: AtomicU64,
    stalled: Box<[AtomicBool]>,
    vanished: AtomicBool,
    failed: Mutex<HashSet<(usize, u64)>>,
    injected: Box<[AtomicU64]>,
}

impl<P: Provider> FaultInjector<P> {
    /// Wraps `inner` with `plan`.
    pub fn new(inner: Arc<P>, plan: FaultPlan) -> Arc<Self> {
        let n = inner.channel_count();
        Arc::new(FaultInjector {
            plan: Mutex::new((plan, ChaCha8Rng::seed_from_u64(plan.seed))),
            inner,
            submitted: AtomicU64::new(0),
            stalled: (0..n).map(|_| AtomicBool::new(false)).collect(),
            vanished: AtomicBool::new(false),
            failed: Mutex::new(HashSet::new()),
            injected: (0..n).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Replaces the plan (and reseeds).
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.plan.lock() = (plan, ChaCha8Rng::seed_from_u64(plan.seed));
    }

    /// Stops starting work on `chan`: doorbells are withheld until [`unstall`](Self::unstall).
    pub fn stall(&self, chan: usize) {
        self.stalled[chan].store(true, Ordering::SeqCst);
    }

    /// Resumes `chan` and rings the withheld doorbell.
    pub fn unstall(&self, chan: usize) {
        self.stalled[chan].store(false, Ordering::SeqCst);
        self.inner.issue_pending(chan);
    }

    /// The device disappears mid-flight: in-flight transfers end (complete or failed) and
    /// every later submission fails as if the hardware were gone.
    pub fn vanish(&self) {
        self.vanished.store(true, Ordering::SeqCst);
        for chan in 0..self.inner.channel_count() {
            self.inner.terminate_all(chan);
        }
    }

    /// Transfers failed on purpose so far.
    pub fn faults_injected(&self) -> u64 {
        self.injected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &Arc<P> {
        &self.inner
    }

    /// Whether transfer number `n` (1-based, counting accepted transfers) fails, and the
    /// generator state after deciding. The caller commits both only if the wrapped device
    /// accepts the descriptor, so a refused submission (ring full, no resources) neither
    /// counts as a transfer nor consumes a random draw.
    fn decide(plan: &FaultPlan, rng: &ChaCha8Rng, n: u64) -> (bool, ChaCha8Rng) {
        let mut rng = rng.clone();
        let every = plan
            .fail_every
            .is_some_and(|k| k > 0 && n.is_multiple_of(k));
        let random = plan.fail_probability > 0.0 && rng.random_bool(plan.fail_probability.min(1.0));
        (every || random, rng)
    }
}

// SAFETY: every rule is inherited from the wrapped provider, whose answers this wrapper
// forwards, except that it reports `Error` for transfers it chose to fail — and only once
// the wrapped provider reports them done (rule 1), or after `terminate_all` forwarded to it
// (rule 2). Failed transfers were submitted with a shorter length, inside the caller's
// buffers, so the wrapped provider never touches memory outside what the caller lent.
unsafe impl<P: Provider> Provider for FaultInjector<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn kind(&self) -> crate::ProviderKind {
        self.inner.kind()
    }

    fn capabilities(&self) -> CapMask {
        self.inner.capabilities()
    }

    fn operations(&self) -> CapMask {
        self.inner.operations()
    }

    fn channel_count(&self) -> usize {
        self.inner.channel_count()
    }

    fn alloc_chan_resources(&self, chan: usize) -> Result<(), ProviderError> {
        if self.vanished.load(Ordering::SeqCst) {
            return Err(ProviderError("device vanished".into()));
        }
        self.inner.alloc_chan_resources(chan)
    }

    fn free_chan_resources(&self, chan: usize) {
        self.inner.free_chan_resources(chan)
    }

    unsafe fn submit(&self, chan: usize, desc: Descriptor) -> Result<u64, ProviderSubmitError> {
        if self.vanished.load(Ordering::SeqCst) {
            return Err(ProviderSubmitError::Gone);
        }
        // Held across the wrapped submit, so that the decision and the transfer count
        // advance together and only for accepted descriptors (serializing this device's
        // submissions, which is fine for a test wrapper).
        let mut guard = self.plan.lock();
        let (plan, rng) = &mut *guard;
        let n = self.submitted.load(Ordering::Relaxed) + 1;
        let (fail, next_rng) = Self::decide(plan, rng, n);
        // A failing transfer writes only its first half, as a DMA that died part way.
        let desc = if fail {
            match desc {
                Descriptor::Memcpy { dst, src, len } => Descriptor::Memcpy {
                    dst,
                    src,
                    len: len / 2,
                },
                Descriptor::Memset { dst, value, len } => Descriptor::Memset {
                    dst,
                    value,
                    len: len / 2,
                },
            }
        } else {
            desc
        };
        // SAFETY: the caller's contract covers `desc`, and a shortened descriptor names a
        // prefix of the same memory.
        let seq = unsafe { self.inner.submit(chan, desc) }?;
        *rng = next_rng;
        self.submitted.store(n, Ordering::Relaxed);
        drop(guard);
        if fail {
            self.failed.lock().insert((chan, seq));
            self.injected[chan].fetch_add(1, Ordering::Relaxed);
        }
        Ok(seq)
    }

    fn issue_pending(&self, chan: usize) {
        if !self.stalled[chan].load(Ordering::SeqCst) {
            self.inner.issue_pending(chan)
        }
    }

    fn tx_status(&self, chan: usize, seq: u64) -> TxStatus {
        self.map_status(chan, seq, self.inner.tx_status(chan, seq))
    }

    fn wait(&self, chan: usize, seq: u64, deadline: Instant) -> TxStatus {
        self.map_status(chan, seq, self.inner.wait(chan, seq, deadline))
    }

    fn terminate_all(&self, chan: usize) {
        self.inner.terminate_all(chan)
    }

    fn terminate_within(
        &self,
        chan: usize,
        what: crate::provider::Cancel<'_>,
        deadline: Instant,
    ) -> crate::provider::Terminated {
        self.inner.terminate_within(chan, what, deadline)
    }

    fn cancels_exactly(&self) -> bool {
        self.inner.cancels_exactly()
    }

    fn error_count(&self, chan: usize) -> u64 {
        self.inner.error_count(chan) + self.injected[chan].load(Ordering::Relaxed)
    }

    fn bytes_done(&self, chan: usize, seq: u64) -> Option<usize> {
        // A transfer failed on purpose reports no prefix: the caller redoes all of it.
        if self.failed.lock().contains(&(chan, seq)) {
            None
        } else {
            self.inner.bytes_done(chan, seq)
        }
    }
}

impl<P: Provider> FaultInjector<P> {
    fn map_status(&self, chan: usize, seq: u64, status: TxStatus) -> TxStatus {
        if status == TxStatus::Complete && self.failed.lock().contains(&(chan, seq)) {
            TxStatus::Error
        } else {
            status
        }
    }
}
