//! The software DMA device: the default provider, usable on any machine.
//!
//! Each channel is a bounded descriptor queue drained by its own worker thread, which
//! performs the copies and publishes completion through a completed-sequence counter
//! (Release by the worker, Acquire by pollers), the way hardware writes a completion
//! record. Submission is batched: descriptors collect under the channel's submit lock and
//! travel to the worker as one recycled `Vec` per doorbell (`issue_pending`); nothing
//! starts before the doorbell. Workers spin briefly when idle, then park: no core is busy
//! at rest. Queues and workers exist only between `alloc_chan_resources` and
//! `free_chan_resources`.
//!
//! # Cancellation
//!
//! `terminate_all` raises the channel's cancel watermark to the last sequence submitted,
//! then waits until the worker has passed it. The worker reads the watermark before each
//! descriptor: one at or below it is skipped (and fails); one it had already started
//! finishes (one memcpy). Either way it is done when `terminate_all` returns, and no
//! per-descriptor state is shared between the submitting and the copying core: the
//! watermark line is written only by cancellations. Status is read from `completed`
//! alone: a descriptor is done once the worker has passed it, and failed if it is in the
//! channel's error log.
//!
//! Cancelling *some* descriptors ([`Cancel::Only`], one read's copies when its wait timed
//! out) lists them instead; the worker looks the list up only while it is not empty (one
//! load of a counter otherwise), skips the listed ones and leaves every other
//! submitter's descriptors alone. The wait for the worker is parked, not spun, and
//! bounded by the caller's deadline ([`Terminated::Pending`] if the worker does not get
//! there in time).

mod errors;
mod worker;

use self::errors::ErrorLog;
use self::worker::{Job, Worker};
use crate::provider::{
    Cancel, Descriptor, Provider, ProviderError, ProviderSubmitError, Terminated,
};
use crate::{Cap, CapMask, TxStatus};
use crossbeam_channel::{Receiver, Sender};
use crossbeam_utils::CachePadded;
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an idle worker or a waiter spins before parking, by default. A completion
/// seen while spinning costs a cross-core round trip; one seen after parking costs a
/// wake-up, microseconds (the report's completion latency measures the first).
pub const DEFAULT_SPIN: Duration = Duration::from_micros(20);

/// How long a waiter spins without yielding before it starts yielding between polls.
pub(crate) const PURE_SPIN: Duration = Duration::from_micros(2);

/// Builds a [`SoftwareDevice`].
#[derive(Clone, Debug)]
pub struct SoftwareDeviceBuilder {
    name: String,
    channels: usize,
    ring_size: usize,
    spin: Duration,
    pin_workers: bool,
    memset: bool,
}

impl SoftwareDeviceBuilder {
    /// The device's name (default `"swdma"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Number of channels (default 4; at least 1 is needed to register).
    pub fn channels(mut self, n: usize) -> Self {
        self.channels = n;
        self
    }

    /// Descriptors each ring holds (default 1024, rounded up to a power of two, at least 2).
    pub fn ring_size(mut self, n: usize) -> Self {
        self.ring_size = n.max(2).next_power_of_two();
        self
    }

    /// How long idle workers and waiters spin before parking (default [`DEFAULT_SPIN`]).
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// Pins channel `i`'s worker to the `(i + 1)`-th CPU of the process's affinity set,
    /// round robin (default off). The per-CPU channel table gives the `i`-th CPU the
    /// `i`-th channel, so the shift puts every CPU's copies on another core: an offload
    /// that shared its submitter's core would only take turns with it.
    pub fn pin_workers(mut self, pin: bool) -> Self {
        self.pin_workers = pin;
        self
    }

    /// Whether to advertise `DMA_MEMSET` too (default on).
    pub fn memset(mut self, memset: bool) -> Self {
        self.memset = memset;
        self
    }

    /// The device, ready for [`Engine::register_device`](crate::Engine::register_device).
    pub fn build(self) -> Arc<SoftwareDevice> {
        let cpus = crate::cpu::process_affinity();
        Arc::new(SoftwareDevice {
            channels: (0..self.channels)
                .map(|index| SwChannel::new(index, self.ring_size))
                .collect(),
            pin_cpus: self.pin_workers.then_some(cpus),
            name: self.name,
            spin: self.spin,
            memset: self.memset,
        })
    }
}

/// The software DMA device, the default provider.
///
/// Each channel is a bounded descriptor queue drained by its own worker thread, which
/// performs the copies and publishes completion through a completed-sequence counter
/// (Release by the worker, Acquire by pollers). Submissions are batched and handed to the
/// worker by [`Channel::issue_pending`](crate::Channel::issue_pending) (the doorbell);
/// nothing starts before it. Idle workers spin briefly ([`DEFAULT_SPIN`]), then park.
/// Queues and workers exist only while the engine has allocated the channel's resources.
pub struct SoftwareDevice {
    name: String,
    channels: Box<[SwChannel]>,
    spin: Duration,
    pin_cpus: Option<Vec<usize>>,
    memset: bool,
}

impl std::fmt::Debug for SoftwareDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareDevice")
            .field("name", &self.name)
            .field("channels", &self.channels.len())
            .finish()
    }
}

impl SoftwareDevice {
    /// A builder with the defaults.
    pub fn builder() -> SoftwareDeviceBuilder {
        SoftwareDeviceBuilder {
            name: "swdma".to_owned(),
            channels: 4,
            ring_size: 1024,
            spin: DEFAULT_SPIN,
            pin_workers: false,
            memset: true,
        }
    }

    /// Worker threads running now (one per channel with resources).
    pub fn running_workers(&self) -> usize {
        self.channels
            .iter()
            .filter(|c| c.submit.lock().running.is_some())
            .count()
    }

    fn chan(&self, chan: usize) -> &SwChannel {
        &self.channels[chan]
    }
}

/// The worker's two cancellation checks, read before every descriptor.
struct CancelMarks {
    /// Descriptors up to this sequence that have not started are skipped
    /// (`terminate_all`); only ever raised.
    upto: AtomicU64,
    /// `Shared::cancelled.len()`, written under its lock: zero (the usual case) means
    /// no listed cancellation to look up.
    listed: AtomicUsize,
}

/// Per-channel state shared by submitters, pollers and the worker.
pub(crate) struct Shared {
    /// Highest sequence number the worker has passed (copied, failed or skipped).
    completed: CachePadded<AtomicU64>,
    /// What the worker must skip, on a line written only by cancellations.
    cancel: CachePadded<CancelMarks>,
    /// Highest sequence number handed out.
    submitted: AtomicU64,
    /// Sequences cancelled one by one (`Cancel::Only`) that the worker has not passed
    /// yet (a few stale ones, already passed, are swept by the canceller).
    cancelled: Mutex<Vec<u64>>,
    /// Test hook: the worker holds this shared while it processes a descriptor, so a test
    /// holding it exclusively makes the device unresponsive.
    #[cfg(test)]
    pub(crate) freeze: parking_lot::RwLock<()>,
    errors: Mutex<ErrorLog>,
    error_count: AtomicU64,
    waiters: AtomicUsize,
    park_lock: Mutex<()>,
    park: Condvar,
}

impl Shared {
    /// Called by the worker after passing `seq`; wakes parked waiters.
    fn publish(&self, seq: u64) {
        self.completed.store(seq, Ordering::Release);
        // Pairs with the fence in `SwChannel::wait`: either we see its waiter count, or it
        // sees our `completed`.
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::Relaxed) > 0 {
            let _guard = self.park_lock.lock();
            self.park.notify_all();
        }
    }

    /// Whether the worker must skip `seq` (cancelled by watermark or by list). Called by
    /// the worker only, before it starts `seq`.
    fn take_cancelled(&self, seq: u64) -> bool {
        if seq <= self.cancel.upto.load(Ordering::Acquire) {
            return true;
        }
        if self.cancel.listed.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut list = self.cancelled.lock();
        match list.iter().position(|&s| s == seq) {
            Some(i) => {
                list.swap_remove(i);
                self.cancel.listed.store(list.len(), Ordering::Release);
                true
            }
            None => false,
        }
    }

    fn record_error(&self, seq: u64) {
        self.errors.lock().insert(seq);
        self.error_count.fetch_add(1, Ordering::Relaxed);
    }
}

struct Submit {
    next_seq: u64,
    pending: Vec<Job>,
    running: Option<Running>,
}

struct Running {
    batches: Sender<Vec<Job>>,
    recycled: Receiver<Vec<Job>>,
    worker: std::thread::JoinHandle<()>,
}

struct SwChannel {
    index: usize,
    ring_size: usize,
    shared: Arc<Shared>,
    submit: Mutex<Submit>,
}

impl SwChannel {
    fn new(index: usize, ring_size: usize) -> SwChannel {
        SwChannel {
            index,
            ring_size,
            shared: Arc::new(Shared {
                completed: CachePadded::new(AtomicU64::new(0)),
                cancel: CachePadded::new(CancelMarks {
                    upto: AtomicU64::new(0),
                    listed: AtomicUsize::new(0),
                }),
                submitted: AtomicU64::new(0),
                cancelled: Mutex::new(Vec::new()),
                #[cfg(test)]
                freeze: parking_lot::RwLock::new(()),
                errors: Mutex::new(ErrorLog::default()),
                error_count: AtomicU64::new(0),
                waiters: AtomicUsize::new(0),
                park_lock: Mutex::new(()),
                park: Condvar::new(),
            }),
            submit: Mutex::new(Submit {
                next_seq: 1,
                pending: Vec::new(),
                running: None,
            }),
        }
    }

    /// Sends the pending batch to the worker (the doorbell). Called with the submit lock.
    fn flush(submit: &mut Submit) {
        if submit.pending.is_empty() {
            return;
        }
        let Some(running) = &submit.running else {
            return;
        };
        let mut batch = running.recycled.try_recv().unwrap_or_default();
        std::mem::swap(&mut batch, &mut submit.pending);
        // The worker holds the receiver until `free` drops our sender, so this cannot fail.
        let _ = running.batches.send(batch);
    }

    /// Lock-free unless the channel has ever failed a transfer.
    fn status(&self, seq: u64) -> TxStatus {
        let shared = &*self.shared;
        if seq == 0 || seq > shared.submitted.load(Ordering::Acquire) {
            return TxStatus::Error; // never handed out: nobody can be waiting for it
        }
        if seq > shared.completed.load(Ordering::Acquire) {
            return TxStatus::InProgress;
        }
        // The worker records a failure (and counts it) before publishing `completed`, so
        // the Acquire above makes both visible.
        if shared.error_count.load(Ordering::Relaxed) > 0 && shared.errors.lock().contains(seq) {
            TxStatus::Error
        } else {
            TxStatus::Complete
        }
    }

    fn wait(&self, seq: u64, deadline: Instant, spin: Duration) -> TxStatus {
        let start = Instant::now();
        let spin_until = start + spin;
        loop {
            let status = self.status(seq);
            if status.is_done() {
                return status;
            }
            let now = Instant::now();
            if now >= deadline {
                return status;
            }
            if now >= spin_until {
                break;
            }
            // Spin the first couple of microseconds (a completion seen while spinning
            // costs ~200 ns); after that yield between polls, so that a worker the
            // scheduler put on this very core gets to run instead of being starved by us.
            if now - start < PURE_SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        let shared = &*self.shared;
        shared.waiters.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let status = loop {
            let mut guard = shared.park_lock.lock();
            let status = self.status(seq);
            if status.is_done() || Instant::now() >= deadline {
                break status;
            }
            // Bounded slices: a cancellation by another thread does not notify.
            let slice = (Instant::now() + Duration::from_millis(1)).min(deadline);
            shared.park.wait_until(&mut guard, slice);
        };
        shared.waiters.fetch_sub(1, Ordering::Relaxed);
        status
    }

    /// Cancels `what` and waits, parked, until the worker has passed every descriptor
    /// concerned or `deadline` passes.
    fn terminate(&self, what: Cancel<'_>, deadline: Instant, spin: Duration) -> Terminated {
        let shared = &*self.shared;
        let mut submit = self.submit.lock();
        if submit.running.is_none() {
            return Terminated::Exact; // no resources: nothing in flight (free drained it)
        }
        let last = submit.next_seq - 1;
        let upto = match what {
            Cancel::All => {
                // Raised before the pending batch goes out: what was never issued is
                // never run.
                shared.cancel.upto.fetch_max(last, Ordering::AcqRel);
                last
            }
            Cancel::Only(seqs) => {
                let passed = shared.completed.load(Ordering::Acquire);
                let mut list = shared.cancelled.lock();
                let mut upto = 0;
                for &seq in seqs.iter().filter(|&&s| s > passed && s <= last) {
                    list.push(seq);
                    upto = upto.max(seq);
                }
                shared.cancel.listed.store(list.len(), Ordering::Release);
                upto
            }
        };
        // The worker must pass them to confirm: ring the doorbell (listed descriptors are
        // skipped; others' pending ones merely start early).
        Self::flush(&mut submit);
        drop(submit);
        let confirmed = upto == 0 || self.wait(upto, deadline, spin).is_done();
        if let Cancel::Only(_) = what {
            // Sweep entries the worker passed before they were listed (it had started
            // them): they would never be taken.
            let passed = shared.completed.load(Ordering::Acquire);
            let mut list = shared.cancelled.lock();
            list.retain(|&s| s > passed);
            shared.cancel.listed.store(list.len(), Ordering::Release);
        }
        if confirmed {
            Terminated::Exact
        } else {
            Terminated::Pending
        }
    }

    /// `terminate_all` as rule 2 wants it: returns only once everything submitted is
    /// done. Parks in bounded slices, warning while the worker does not answer.
    fn terminate_all(&self, spin: Duration) {
        let started = Instant::now();
        loop {
            let slice = Instant::now() + Duration::from_secs(1);
            if self.terminate(Cancel::All, slice, spin) != Terminated::Pending {
                return;
            }
            tracing::warn!(
                chan = self.index,
                waited = ?started.elapsed(),
                "DMA worker does not answer terminate_all; still waiting"
            );
        }
    }
}

// SAFETY: rule by rule (see `Provider`):
// 1. `Complete` and `Error` are reported only for sequences the worker has passed
//    (`completed`, published with Release after the copy or the skip), and the worker
//    never returns to a sequence it passed.
// 2. `terminate_all` raises the cancel watermark to the last sequence submitted before
//    the call, then waits until the worker has passed that sequence (skipped or copied).
// 3. `free_chan_resources` flushes pending work, closes the queue and joins the worker,
//    which drains the queue before exiting.
// 4. The worker publishes a copied sequence only after copying every byte, and records a
//    skipped one as failed before publishing it.
// 5. `terminate_within` reports `Exact` only once the worker has passed the highest
//    sequence concerned (the watermark, or the highest listed one), so every listed
//    descriptor is done (rule 1); otherwise it reports `Pending`.
unsafe impl Provider for SoftwareDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> crate::ProviderKind {
        crate::ProviderKind::Software
    }

    fn capabilities(&self) -> CapMask {
        if self.memset {
            CapMask::of(&[Cap::Memcpy, Cap::Memset])
        } else {
            CapMask::from(Cap::Memcpy)
        }
    }

    fn operations(&self) -> CapMask {
        self.capabilities()
    }

    fn channel_count(&self) -> usize {
        self.channels.len()
    }

    fn alloc_chan_resources(&self, chan: usize) -> Result<(), ProviderError> {
        let c = self.chan(chan);
        let mut submit = c.submit.lock();
        if submit.running.is_some() {
            return Ok(());
        }
        // Unbounded (a list of blocks, one allocated per 31 doorbells): measured against
        // a channel bounded by the ring, which allocates nothing after this, it completes
        // a copy 70-100 ns sooner (the report's completion latency), which outweighs one
        // allocation per 31 batches.
        let (batches, batch_rx) = crossbeam_channel::unbounded();
        let (recycle_tx, recycled) = crossbeam_channel::bounded(64);
        let pin = self
            .pin_cpus
            .as_ref()
            // One CPU over from the CPU the table gives this channel (`pin_workers`).
            .map(|cpus| cpus[(c.index + 1) % cpus.len()]);
        let worker = Worker {
            shared: c.shared.clone(),
            batches: batch_rx,
            recycle: recycle_tx,
            spin: self.spin,
            pin,
        };
        let handle = std::thread::Builder::new()
            .name(format!("{}-ch{}", self.name, c.index))
            .spawn(move || worker.run())
            .map_err(|e| ProviderError(format!("spawning worker: {e}")))?;
        submit.running = Some(Running {
            batches,
            recycled,
            worker: handle,
        });
        tracing::debug!(device = %self.name, chan, "channel resources allocated");
        Ok(())
    }

    fn free_chan_resources(&self, chan: usize) {
        let c = self.chan(chan);
        let running = {
            let mut submit = c.submit.lock();
            Self::flush_locked(&mut submit);
            submit.running.take()
        };
        if let Some(running) = running {
            drop(running.batches); // the worker drains the queue, then exits
            if running.worker.join().is_err() {
                tracing::error!(device = %self.name, chan, "DMA worker panicked");
            }
            tracing::debug!(device = %self.name, chan, "channel resources freed");
        }
    }

    unsafe fn submit(&self, chan: usize, desc: Descriptor) -> Result<u64, ProviderSubmitError> {
        let c = self.chan(chan);
        let mut submit = c.submit.lock();
        if submit.running.is_none() {
            return Err(ProviderSubmitError::NoResources);
        }
        let seq = submit.next_seq;
        let outstanding = seq - 1 - c.shared.completed.load(Ordering::Acquire);
        if outstanding >= c.ring_size as u64 {
            return Err(ProviderSubmitError::RingFull {
                capacity: c.ring_size,
            });
        }
        submit.next_seq += 1;
        submit.pending.push(Job { seq, desc });
        c.shared.submitted.store(seq, Ordering::Release);
        Ok(seq)
    }

    fn issue_pending(&self, chan: usize) {
        Self::flush_locked(&mut self.chan(chan).submit.lock());
    }

    fn tx_status(&self, chan: usize, seq: u64) -> TxStatus {
        self.chan(chan).status(seq)
    }

    fn wait(&self, chan: usize, seq: u64, deadline: Instant) -> TxStatus {
        self.chan(chan).wait(seq, deadline, self.spin)
    }

    fn terminate_all(&self, chan: usize) {
        self.chan(chan).terminate_all(self.spin)
    }

    fn terminate_within(&self, chan: usize, what: Cancel<'_>, deadline: Instant) -> Terminated {
        self.chan(chan).terminate(what, deadline, self.spin)
    }

    fn cancels_exactly(&self) -> bool {
        true
    }

    fn error_count(&self, chan: usize) -> u64 {
        self.chan(chan).shared.error_count.load(Ordering::Relaxed)
    }
}

impl SoftwareDevice {
    fn flush_locked(submit: &mut Submit) {
        SwChannel::flush(submit)
    }
}

impl Drop for SoftwareDevice {
    fn drop(&mut self) {
        for chan in 0..self.channels.len() {
            self.free_chan_resources(chan);
        }
    }
}

#[cfg(test)]
mod tests;
