//! The Intel DSA provider: an idxd user work queue driven with its real descriptor
//! formats, detected at run time, and a descriptor-exact software portal that runs the
//! same provider on machines without DSA.
//!
//! - [`hw`]: the 64-byte work descriptor and 32-byte completion record of Linux's uapi
//!   `idxd.h`, opcodes, flags, and every completion status decoded into [`DsaError`].
//! - [`discover`]: CPUID (MOVDIR64B, ENQCMD), the `dsa` bus in sysfs and `/dev/dsa`,
//!   each root configurable ([`DsaPaths`]); [`DiscoveryError`] says what is missing.
//! - [`DsaDevice`]: a [`Provider`] over one WQ. Each channel owns a ring of work
//!   descriptors and a ring of 32-byte aligned completion records. On a **dedicated** WQ,
//!   descriptors wait for the doorbell ([`Provider::issue_pending`]) and go out as one
//!   BATCH descriptor per contiguous run (where the device has BATCH and the path allows
//!   it), by MOVDIR64B; the provider counts the WQ entries it has outstanding, and a
//!   submission that would overflow the queue is refused with `RingFull`, the caller's
//!   CPU fallback. On a **shared** WQ each descriptor goes out as it is submitted, by
//!   ENQCMD, retried a bounded number of times while the queue refuses, then `RingFull`.
//!   Where the kernel refuses to map the portal (Linux 6.9.1 and later on current parts,
//!   without CAP_SYS_RAWIO) descriptors go through `write()` on the WQ's file instead.
//! - Completion: each record's status byte is polled with Acquire, every wait bounded by
//!   its deadline. A page fault with block-on-fault clear (status 0x03) ends the transfer
//!   in `Error` with [`Provider::bytes_done`] reporting the bytes done, so that the caller
//!   finishes exactly the rest with the CPU.
//! - [`EmulatedWq`]: the software portal, with injectable page faults, bad opcodes,
//!   out-of-range sizes and stalls.
//!
//! Only the instruction that writes the portal needs the hardware; it is used only when
//! CPUID reports it.

mod builder;
mod channel;
pub mod discover;
pub mod emulated;
pub mod hw;
mod portal;

pub use builder::DsaDeviceBuilder;
pub use discover::{
    CpuFeatures, DiscoveryError, DsaPaths, WqInfo, WqMode, WqRejection, WqSelection,
};
pub use emulated::{EmulatedWq, EmulatedWqBuilder, EmulatedWqStats, Injection};
pub use hw::{CompletionRecord, DsaError, WorkDescriptor};
pub use portal::SubmitPath;

use self::channel::{ChanState, DsaChannel, Entry};
use self::hw::{flags, opcode, status, RecordRef};
use self::portal::Portal;
use crate::provider::{
    Cancel, Descriptor, Provider, ProviderError, ProviderKind, ProviderSubmitError, Terminated,
};
use crate::{Cap, CapMask, TxStatus};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Stats {
    descriptors: AtomicU64,
    portal_writes: AtomicU64,
    batches: AtomicU64,
    refusals: AtomicU64,
    ring_full: AtomicU64,
    partial: AtomicU64,
}

/// What the provider did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DsaStats {
    /// Descriptors accepted from callers.
    pub descriptors: u64,
    /// Portal writes (MOVDIR64B, ENQCMD, `write()` or the software portal).
    pub portal_writes: u64,
    /// BATCH descriptors among them.
    pub batches: u64,
    /// Portal writes the WQ refused (shared WQ full), retries included.
    pub refusals: u64,
    /// Submissions refused with `RingFull` (occupancy or ring exhausted, or ENQCMD
    /// refused after its retries).
    pub ring_full: u64,
    /// Transfers that ended in a partial completion (page fault).
    pub partial_completions: u64,
}

/// The Intel DSA provider over one work queue. See the [module documentation](self).
pub struct DsaDevice {
    name: String,
    wq: WqInfo,
    portal: Portal,
    kind: ProviderKind,
    shared: bool,
    wq_size: usize,
    max_transfer: usize,
    max_batch: usize,
    batch: bool,
    memset: bool,
    base_flags: u32,
    enqcmd_retries: u32,
    spin: Duration,
    /// WQ entries this device holds (dedicated WQ): reserved by submissions, held by
    /// descriptors at the device until their record is written.
    occupancy: AtomicUsize,
    stats: Stats,
    channels: Box<[DsaChannel]>,
}

impl std::fmt::Debug for DsaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DsaDevice")
            .field("name", &self.name)
            .field("wq", &self.wq.name)
            .field("path", &self.portal.path())
            .finish_non_exhaustive()
    }
}

impl DsaDevice {
    /// A builder with the defaults.
    pub fn builder() -> DsaDeviceBuilder {
        DsaDeviceBuilder::new()
    }

    /// The WQ it drives.
    pub fn wq(&self) -> &WqInfo {
        &self.wq
    }

    /// How descriptors reach the WQ.
    pub fn submit_path(&self) -> SubmitPath {
        self.portal.path()
    }

    /// Whether doorbells send BATCH descriptors.
    pub fn batching(&self) -> bool {
        self.batch
    }

    /// WQ entries held now (dedicated WQ).
    pub fn occupancy(&self) -> usize {
        self.occupancy.load(Ordering::Acquire)
    }

    /// What the provider did so far.
    pub fn stats(&self) -> DsaStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = &self.stats;
        DsaStats {
            descriptors: l(&s.descriptors),
            portal_writes: l(&s.portal_writes),
            batches: l(&s.batches),
            refusals: l(&s.refusals),
            ring_full: l(&s.ring_full),
            partial_completions: l(&s.partial),
        }
    }

    fn release(&self, n: usize) {
        if n > 0 && !self.shared {
            self.occupancy.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Reserves one WQ entry (dedicated WQ), reclaiming this channel's finished ones
    /// first when the queue looks full.
    fn reserve(&self, c: &DsaChannel, st: &mut ChanState) -> bool {
        if self.shared {
            return true;
        }
        let mut reclaimed = false;
        loop {
            let cur = self.occupancy.load(Ordering::Acquire);
            if cur >= self.wq_size {
                if reclaimed {
                    return false;
                }
                let n = c.reclaim(st);
                self.release(n);
                // Entries other channels hold may be done too; look at those whose lock
                // is free (never wait for another channel's lock while holding ours).
                for other in self.channels.iter().filter(|o| o.index != c.index) {
                    if let Some(mut ost) = other.state.try_lock() {
                        let n = other.reclaim(&mut ost);
                        self.release(n);
                    }
                }
                reclaimed = true;
                continue;
            }
            if self
                .occupancy
                .compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return true;
            }
        }
    }

    fn hw_descriptor(&self, desc: Descriptor, record: u64) -> WorkDescriptor {
        let mut d = match desc {
            Descriptor::Memcpy { len: 0, .. } | Descriptor::Memset { len: 0, .. } => {
                WorkDescriptor::new(opcode::NOOP, flags::CRAV | flags::RCR)
            }
            Descriptor::Memcpy { dst, src, len } => {
                let mut d = WorkDescriptor::new(opcode::MEMMOVE, self.base_flags);
                d.src_addr = src as u64;
                d.dst_addr = dst as u64;
                d.xfer_size = len as u32;
                d
            }
            Descriptor::Memset { dst, value, len } => {
                let mut d = WorkDescriptor::new(opcode::MEMFILL, self.base_flags);
                d.src_addr = u64::from_le_bytes([value; 8]);
                d.dst_addr = dst as u64;
                d.xfer_size = len as u32;
                d
            }
        };
        d.completion_addr = record;
        d
    }

    /// Writes the descriptors `from..=to` of channel `c` to the portal: runs that are
    /// contiguous in the ring as BATCH descriptors where enabled, others one by one.
    fn flush(&self, c: &DsaChannel, st: &mut ChanState) {
        let to = st.next_seq - 1;
        if st.issued_upto >= to {
            return;
        }
        if self.batch {
            let n = c.reclaim(st);
            self.release(n);
        }
        let mut seq = st.issued_upto + 1;
        while seq <= to {
            let slot = c.slot(seq);
            let left = (to - seq + 1) as usize;
            let run = left.min(c.ring_size - slot).min(self.max_batch.max(1));
            let batch_free = !st.entries.iter().any(|e| e.batch && e.slot == slot);
            let (desc, entry, count) = if self.batch && run >= 2 && batch_free {
                // SAFETY: the batch record ring lives as long as the channel, its records
                // are 32-byte aligned (`CompletionRecord`'s alignment, kept by
                // UnsafeCell), and every access to them goes through `RecordRef`'s
                // atomics.
                let rec = unsafe { RecordRef::new(c.batch_records[slot].get()) };
                rec.clear();
                let mut d = WorkDescriptor::new(opcode::BATCH, flags::CRAV | flags::RCR);
                d.completion_addr = rec.addr();
                d.src_addr = c.descs[slot].get() as u64;
                d.xfer_size = run as u32;
                (d, Entry { slot, batch: true }, run)
            } else {
                // SAFETY: the slot's descriptor was written under the state lock (held)
                // by `submit`; the device reads copies only.
                let d = unsafe { *c.descs[slot].get() };
                (d, Entry { slot, batch: false }, 1)
            };
            // SAFETY: `Provider::submit`'s caller keeps the buffers valid until the
            // cookies are done; records and descriptor lists live in this channel's
            // rings, which outlive every descriptor (Drop waits for all records).
            let result = unsafe { self.portal.write(&desc) };
            self.stats.portal_writes.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(_) => {
                    if entry.batch {
                        self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    }
                    // A batch holds one WQ entry for its `count` reservations.
                    self.release(count - 1);
                    st.entries.push_back(entry);
                }
                Err(e) => {
                    tracing::warn!(device = %self.name, error = %e, "portal write failed");
                    for s in seq..seq + count as u64 {
                        c.record(s).complete(&CompletionRecord {
                            status: status::NOT_SUBMITTED,
                            ..CompletionRecord::default()
                        });
                    }
                    self.release(count);
                }
            }
            seq += count as u64;
        }
        st.issued_upto = to;
    }

    /// Waits until every issued descriptor of `c` is done (and, with `entries`, every WQ
    /// entry freed). Hardware completes every accepted descriptor; the wait logs while it
    /// lasts.
    /// Cancels what was submitted on `c` but never sent to the device (its records say
    /// so at once); what was sent cannot be recalled from user space.
    fn cancel_unissued(&self, c: &DsaChannel) {
        let mut st = c.state.lock();
        let to = st.next_seq - 1;
        let pending = to.saturating_sub(st.issued_upto);
        for seq in st.issued_upto + 1..=to {
            c.record(seq).complete(&CompletionRecord {
                status: status::CANCELLED,
                ..CompletionRecord::default()
            });
        }
        self.release(pending as usize);
        st.issued_upto = to;
    }

    /// Whether every descriptor sent on `c` is done (one pass of [`drain`](Self::drain),
    /// without waiting).
    fn drained(&self, c: &DsaChannel) -> bool {
        let mut st = c.state.lock();
        c.harvest(&mut st, &self.stats.partial);
        let n = c.reclaim(&mut st);
        self.release(n);
        c.harvested.load(Ordering::Acquire) >= st.issued_upto
    }

    fn drain(&self, c: &DsaChannel, entries: bool) {
        let start = Instant::now();
        let mut warned = start;
        let mut spins = 0u32;
        loop {
            {
                let mut st = c.state.lock();
                c.harvest(&mut st, &self.stats.partial);
                let n = c.reclaim(&mut st);
                self.release(n);
                let done = c.harvested.load(Ordering::Acquire) >= st.issued_upto
                    && (!entries || st.entries.is_empty());
                if done {
                    return;
                }
            }
            spins += 1;
            if spins < 100 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
            if warned.elapsed() >= Duration::from_secs(1) {
                warned = Instant::now();
                tracing::warn!(device = %self.name, chan = c.index, waited = ?start.elapsed(), "waiting for DSA completions");
            }
        }
    }
}

// SAFETY: the rings are accessed under each channel's state lock (descriptors) or
// through atomics (records); the portal is Send + Sync; everything else is atomics or
// immutable after construction.
unsafe impl Sync for DsaDevice {}
// SAFETY: moving the device to another thread moves rings guarded by locks and atomics,
// a portal that is Send, and immutable settings; nothing in it is tied to the thread that
// created it (no thread-locals, no thread-affine handles).
unsafe impl Send for DsaDevice {}

// SAFETY: rule by rule (see `Provider`):
// 1. `Complete`/`Error` is reported from a sequence's record only once the device (or the
//    software portal) wrote its status, after it finished with the memory; a descriptor
//    cancelled before reaching the portal never reaches the device.
// 2. `terminate_all` cancels what was not written to the portal, then waits until every
//    written descriptor's record is written.
// 3. `free_chan_resources` writes the pending descriptors, then waits for all records.
// 4. Status SUCCESS is written only after every byte was moved (the device's contract;
//    the software portal writes it after the copy).
// 5. `bytes_done` answers only from a page-fault record with `result` 0, whose
//    `bytes_completed` leading bytes the device wrote; the software portal writes exactly
//    that prefix, and it never exceeds `xfer_size`, the descriptor's length.
unsafe impl Provider for DsaDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ProviderKind {
        self.kind
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
        let c = &self.channels[chan];
        c.state.lock().allocated = true;
        tracing::debug!(device = %self.name, chan, "DSA channel ready");
        Ok(())
    }

    fn free_chan_resources(&self, chan: usize) {
        let c = &self.channels[chan];
        {
            let mut st = c.state.lock();
            if !st.allocated && st.entries.is_empty() && st.issued_upto + 1 == st.next_seq {
                return;
            }
            self.flush(c, &mut st);
            st.allocated = false;
        }
        self.drain(c, true);
    }

    unsafe fn submit(&self, chan: usize, desc: Descriptor) -> Result<u64, ProviderSubmitError> {
        let c = &self.channels[chan];
        let mut st = c.state.lock();
        if !st.allocated {
            return Err(ProviderSubmitError::NoResources);
        }
        if desc.len() > self.max_transfer {
            return Err(ProviderSubmitError::TooLarge {
                max: self.max_transfer,
            });
        }
        let seq = st.next_seq;
        if seq - 1 - c.harvested.load(Ordering::Acquire) >= c.ring_size as u64 {
            c.harvest(&mut st, &self.stats.partial);
            if seq - 1 - c.harvested.load(Ordering::Acquire) >= c.ring_size as u64 {
                self.stats.ring_full.fetch_add(1, Ordering::Relaxed);
                return Err(ProviderSubmitError::RingFull {
                    capacity: c.ring_size,
                });
            }
        }
        if !self.reserve(c, &mut st) {
            self.stats.ring_full.fetch_add(1, Ordering::Relaxed);
            return Err(ProviderSubmitError::RingFull {
                capacity: self.wq_size,
            });
        }
        let record = c.record(seq);
        record.clear();
        let hw = self.hw_descriptor(desc, record.addr());
        let slot = c.slot(seq);
        // SAFETY: the slot belongs to `seq` (its previous occupant was harvested: the
        // ring check above), the device has finished reading it (its record was
        // written), and the state lock is held.
        unsafe { *c.descs[slot].get() = hw };
        if self.shared {
            let mut accepted = false;
            for _ in 0..=self.enqcmd_retries {
                // SAFETY: the caller's contract keeps the buffers valid until done; the
                // record lives in the channel's ring.
                match unsafe { self.portal.write(&hw) } {
                    Ok(true) => {
                        accepted = true;
                        break;
                    }
                    Ok(false) => {
                        self.stats.refusals.fetch_add(1, Ordering::Relaxed);
                        std::hint::spin_loop();
                    }
                    Err(e) => {
                        tracing::warn!(device = %self.name, error = %e, "portal write failed");
                        return Err(ProviderSubmitError::Gone);
                    }
                }
            }
            self.stats.portal_writes.fetch_add(1, Ordering::Relaxed);
            if !accepted {
                self.stats.ring_full.fetch_add(1, Ordering::Relaxed);
                return Err(ProviderSubmitError::RingFull {
                    capacity: self.wq_size,
                });
            }
            st.issued_upto = seq;
        }
        st.next_seq += 1;
        c.submitted.store(seq, Ordering::Release);
        self.stats.descriptors.fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    fn issue_pending(&self, chan: usize) {
        if self.shared {
            return; // every descriptor went out at submission
        }
        let c = &self.channels[chan];
        let mut st = c.state.lock();
        self.flush(c, &mut st);
    }

    fn tx_status(&self, chan: usize, seq: u64) -> TxStatus {
        self.channels[chan].status(seq)
    }

    fn wait(&self, chan: usize, seq: u64, deadline: Instant) -> TxStatus {
        let c = &self.channels[chan];
        let start = Instant::now();
        let mut polls = 0u32;
        loop {
            let status = c.status(seq);
            if status.is_done() {
                if status == TxStatus::Error {
                    let mut st = c.state.lock();
                    c.harvest(&mut st, &self.stats.partial);
                }
                return status;
            }
            polls = polls.wrapping_add(1);
            if !polls.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return status;
            }
            let waited = now - start;
            if waited < self.spin {
                std::hint::spin_loop();
            } else if waited < Duration::from_millis(1) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    }

    fn terminate_all(&self, chan: usize) {
        let c = &self.channels[chan];
        self.cancel_unissued(c);
        // What reached the device cannot be recalled from user space: wait for it.
        self.drain(c, false);
    }

    fn terminate_within(&self, chan: usize, what: Cancel<'_>, deadline: Instant) -> Terminated {
        let c = &self.channels[chan];
        self.cancel_unissued(c);
        // What reached the device cannot be recalled: wait for it, but only until the
        // deadline, so that a device that never answers cannot hold the caller.
        let wanted_done = || match what {
            Cancel::All => self.drained(c),
            Cancel::Only(seqs) => seqs.iter().all(|&seq| c.status(seq).is_done()),
        };
        while !wanted_done() {
            if Instant::now() >= deadline {
                return Terminated::Pending;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        match what {
            Cancel::All => Terminated::Exact,
            // Others' descriptors not yet sent were cancelled with the asked ones.
            Cancel::Only(_) => Terminated::WholeChannel,
        }
    }

    fn error_count(&self, chan: usize) -> u64 {
        let c = &self.channels[chan];
        c.harvest(&mut c.state.lock(), &self.stats.partial);
        c.error_count.load(Ordering::Relaxed)
    }

    fn bytes_done(&self, chan: usize, seq: u64) -> Option<usize> {
        let c = &self.channels[chan];
        let mut st = c.state.lock();
        c.harvest(&mut st, &self.stats.partial);
        if seq <= c.harvested.load(Ordering::Acquire) {
            return st.failures.get(seq).flatten();
        }
        if seq > st.issued_upto {
            return None;
        }
        // Done out of order: the slot is still `seq`'s (it is reused only after harvest).
        match hw::decode(&c.record(seq).read()) {
            Some(Err(e)) => c.prefix_done(seq, &e),
            _ => None,
        }
    }
}

impl Drop for DsaDevice {
    fn drop(&mut self) {
        // The device writes records into the rings: wait for all of them before the
        // rings (and the portal) go.
        for chan in 0..self.channels.len() {
            self.free_chan_resources(chan);
        }
    }
}

/// What [`probe`] found.
#[derive(Debug)]
pub enum Probe {
    /// A usable WQ.
    Found(WqInfo),
    /// None, and why.
    Absent(DiscoveryError),
}

/// Looks for a usable WQ under the default paths with this CPU's features.
pub fn probe(selection: &WqSelection) -> Probe {
    match discover::find(&DsaPaths::default(), CpuFeatures::detect(), selection) {
        Ok(wq) => Probe::Found(wq),
        Err(e) => Probe::Absent(e),
    }
}

#[cfg(test)]
mod tests;
