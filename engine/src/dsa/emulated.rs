//! The descriptor-exact software portal: a work queue served by a thread that consumes
//! exactly the 64-byte descriptors a DSA WQ consumes and writes exactly the completion
//! records a DSA writes, with injectable outcomes (a page fault at a chosen byte, a bad
//! opcode, a transfer size out of range, a stall). Through it the whole provider runs on
//! machines without DSA; only the instruction that writes the portal differs.

use super::discover::{WqInfo, WqMode};
use super::hw::{flags, opcode, status, CompletionRecord, RecordRef, WorkDescriptor};
use parking_lot::{Condvar, Mutex};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An outcome forced on the next work descriptor (MEMMOVE or MEMFILL) the queue executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injection {
    /// A page fault at byte `byte` (clamped to the transfer): the bytes before it are
    /// written, then the record says status 0x03 with `bytes_completed = byte`. With the
    /// descriptor's block-on-fault flag the fault is resolved instead and the transfer
    /// completes.
    PageFaultAt {
        /// Where the fault happens.
        byte: u32,
        /// Whether it faults on the destination (the write) rather than the source.
        write: bool,
    },
    /// Status 0x10, nothing written.
    BadOpcode,
    /// Status 0x13, nothing written.
    TransferSizeOutOfRange,
}

/// What the emulated queue saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EmulatedWqStats {
    /// Portal writes the queue took.
    pub accepted: u64,
    /// Portal writes refused because the queue was full (shared mode: ENQCMD's ZF=1).
    pub refused: u64,
    /// Portal writes to a full dedicated queue: dropped, as hardware would lose them.
    /// A correct submitter never causes one.
    pub overflowed: u64,
    /// Descriptors executed (batch members included).
    pub executed: u64,
    /// BATCH descriptors executed.
    pub batches: u64,
    /// Page faults reported (status 0x03).
    pub page_faults: u64,
    /// Injected faults resolved because the descriptor had block-on-fault set.
    pub faults_resolved: u64,
    /// Descriptors completed with another error status.
    pub errors: u64,
    /// Descriptors the queue could not write a record for (no CRAV or a misaligned
    /// completion address): hardware reports these in its error register.
    pub unreported: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    overflowed: AtomicU64,
    executed: AtomicU64,
    batches: AtomicU64,
    page_faults: AtomicU64,
    faults_resolved: AtomicU64,
    errors: AtomicU64,
    unreported: AtomicU64,
}

struct Control {
    next: VecDeque<Injection>,
    random_faults: Option<(f64, ChaCha8Rng)>,
    stall_until: Option<Instant>,
}

struct Inner {
    mode: WqMode,
    size: usize,
    max_transfer_size: u32,
    max_batch_size: u32,
    spin: Duration,
    queue: Mutex<VecDeque<WorkDescriptor>>,
    /// Descriptors in the queue (WQ entries in use); an entry frees when the descriptor
    /// is dispatched, before its record is written, as on hardware.
    occupancy: AtomicUsize,
    wake: Condvar,
    stop: AtomicBool,
    control: Mutex<Control>,
    counters: Counters,
}

/// Builds an [`EmulatedWq`].
#[derive(Clone, Debug)]
pub struct EmulatedWqBuilder {
    mode: WqMode,
    size: usize,
    max_transfer_size: u32,
    max_batch_size: u32,
    spin: Duration,
}

impl EmulatedWqBuilder {
    /// Dedicated (default) or shared.
    pub fn mode(mut self, mode: WqMode) -> Self {
        self.mode = mode;
        self
    }

    /// Entries the queue holds (default 128, at least 1).
    pub fn size(mut self, size: usize) -> Self {
        self.size = size.max(1);
        self
    }

    /// The largest transfer (default 2 MiB).
    pub fn max_transfer_size(mut self, bytes: u32) -> Self {
        self.max_transfer_size = bytes;
        self
    }

    /// The most descriptors in one BATCH (default 64).
    pub fn max_batch_size(mut self, n: u32) -> Self {
        self.max_batch_size = n;
        self
    }

    /// How long the idle queue thread spins before parking (default 20 us).
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// Starts the queue's thread.
    pub fn build(self) -> Arc<EmulatedWq> {
        let inner = Arc::new(Inner {
            mode: self.mode,
            size: self.size,
            max_transfer_size: self.max_transfer_size,
            max_batch_size: self.max_batch_size,
            spin: self.spin,
            queue: Mutex::new(VecDeque::with_capacity(self.size)),
            occupancy: AtomicUsize::new(0),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            control: Mutex::new(Control {
                next: VecDeque::new(),
                random_faults: None,
                stall_until: None,
            }),
            counters: Counters::default(),
        });
        let worker = inner.clone();
        let thread = std::thread::Builder::new()
            .name("dsa-emulated-wq".into())
            .spawn(move || worker.run())
            .expect("spawning the emulated work queue thread");
        Arc::new(EmulatedWq {
            inner,
            thread: Mutex::new(Some(thread)),
        })
    }
}

/// A software DSA work queue. See the [module documentation](self).
pub struct EmulatedWq {
    inner: Arc<Inner>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for EmulatedWq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedWq")
            .field("mode", &self.inner.mode)
            .field("size", &self.inner.size)
            .finish_non_exhaustive()
    }
}

impl EmulatedWq {
    /// A builder with the defaults: dedicated, 128 entries, 2 MiB transfers, batches of 64.
    pub fn builder() -> EmulatedWqBuilder {
        EmulatedWqBuilder {
            mode: WqMode::Dedicated,
            size: 128,
            max_transfer_size: 2 << 20,
            max_batch_size: 64,
            spin: Duration::from_micros(20),
        }
    }

    /// The queue described as sysfs would describe it (named `emulated`).
    pub fn info(&self) -> WqInfo {
        WqInfo {
            name: "emulated".into(),
            device: "emulated".into(),
            wq_type: "user".into(),
            state: "enabled".into(),
            mode: self.inner.mode,
            size: self.inner.size,
            max_transfer_size: u64::from(self.inner.max_transfer_size),
            max_batch_size: self.inner.max_batch_size as usize,
            memmove: true,
            memfill: true,
            batch: true,
            char_dev: PathBuf::new(),
            char_dev_present: false,
        }
    }

    /// Forces the outcome of the next work descriptor executed (queued in order).
    pub fn inject(&self, injection: Injection) {
        self.inner.control.lock().next.push_back(injection);
    }

    /// Page faults at uniformly random bytes on each work descriptor with `probability`,
    /// drawn from a generator seeded with `seed` (0 switches them off).
    pub fn random_page_faults(&self, probability: f64, seed: u64) {
        self.inner.control.lock().random_faults =
            (probability > 0.0).then(|| (probability.min(1.0), ChaCha8Rng::seed_from_u64(seed)));
    }

    /// Stops executing descriptors for `duration` (they wait in the queue).
    pub fn stall(&self, duration: Duration) {
        self.inner.control.lock().stall_until = Some(Instant::now() + duration);
    }

    /// Ends a stall now.
    pub fn release_stall(&self) {
        self.inner.control.lock().stall_until = None;
        let _guard = self.inner.queue.lock();
        self.inner.wake.notify_all();
    }

    /// Entries in use now.
    pub fn occupancy(&self) -> usize {
        self.inner.occupancy.load(Ordering::Acquire)
    }

    /// What the queue saw so far.
    pub fn stats(&self) -> EmulatedWqStats {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EmulatedWqStats {
            accepted: l(&c.accepted),
            refused: l(&c.refused),
            overflowed: l(&c.overflowed),
            executed: l(&c.executed),
            batches: l(&c.batches),
            page_faults: l(&c.page_faults),
            faults_resolved: l(&c.faults_resolved),
            errors: l(&c.errors),
            unreported: l(&c.unreported),
        }
    }

    /// The portal write (what MOVDIR64B or ENQCMD does): the queue takes a copy of the
    /// 64 bytes. Returns whether it was accepted: a shared queue refuses when full (as
    /// ENQCMD reports ZF=1); a dedicated one accepts and drops the descriptor when full,
    /// counting an overflow, as hardware gives no answer.
    ///
    /// # Safety
    ///
    /// The memory the descriptor names (buffers, completion record, a batch's descriptor
    /// list and its members' memory) stays valid, and is not accessed by others except
    /// atomically for records, until the descriptor's completion record is written.
    pub unsafe fn write_portal(&self, desc: &WorkDescriptor) -> bool {
        let inner = &*self.inner;
        let mut queue = inner.queue.lock();
        if queue.len() >= inner.size {
            return match inner.mode {
                WqMode::Shared => {
                    inner.counters.refused.fetch_add(1, Ordering::Relaxed);
                    false
                }
                WqMode::Dedicated => {
                    inner.counters.overflowed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("emulated dedicated WQ overflowed: descriptor dropped");
                    true
                }
            };
        }
        queue.push_back(*desc);
        inner.occupancy.store(queue.len(), Ordering::Release);
        inner.counters.accepted.fetch_add(1, Ordering::Relaxed);
        inner.wake.notify_one();
        true
    }
}

impl Drop for EmulatedWq {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        {
            let _guard = self.inner.queue.lock();
            self.inner.wake.notify_all();
        }
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Inner {
    fn run(&self) {
        loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            if !stopping {
                let until = self.control.lock().stall_until;
                if let Some(until) = until {
                    if Instant::now() < until {
                        let mut q = self.queue.lock();
                        let slice = (Instant::now() + Duration::from_millis(1)).min(until);
                        self.wake.wait_until(&mut q, slice);
                        continue;
                    }
                    self.control.lock().stall_until = None;
                }
            }
            let next = {
                let mut q = self.queue.lock();
                let d = q.pop_front();
                self.occupancy.store(q.len(), Ordering::Release);
                d
            };
            match next {
                Some(desc) => self.dispatch(&desc),
                None if stopping => return,
                None => self.idle(),
            }
        }
    }

    /// Spins for `spin` watching the occupancy, then parks for a bounded slice.
    fn idle(&self) {
        let until = Instant::now() + self.spin;
        let mut turns = 0u32;
        while Instant::now() < until {
            for _ in 0..64 {
                if self.occupancy.load(Ordering::Acquire) > 0 {
                    return;
                }
                std::hint::spin_loop();
            }
            turns += 1;
            if turns > 4 {
                std::thread::yield_now();
            }
        }
        let mut q = self.queue.lock();
        if q.is_empty() && !self.stop.load(Ordering::SeqCst) {
            let slice = Instant::now() + Duration::from_millis(2);
            self.wake.wait_until(&mut q, slice);
        }
    }

    fn dispatch(&self, desc: &WorkDescriptor) {
        if desc.flags() & flags::CRAV == 0 || !desc.completion_addr.is_multiple_of(32) {
            self.counters.unreported.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let rec = self.execute(desc, false);
        // SAFETY: `write_portal`'s contract: the completion record stays valid until it
        // is written, here, and is otherwise only accessed atomically; CRAV is set and
        // the address is 32-byte aligned (checked above).
        let record = unsafe { RecordRef::new(desc.completion_addr as *mut CompletionRecord) };
        record.complete(&rec);
    }

    fn fail(&self, code: u8) -> CompletionRecord {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        CompletionRecord {
            status: code,
            ..CompletionRecord::default()
        }
    }

    /// Executes one descriptor and returns the record to write (not yet written).
    fn execute(&self, d: &WorkDescriptor, in_batch: bool) -> CompletionRecord {
        self.counters.executed.fetch_add(1, Ordering::Relaxed);
        if d.pasid_priv & 0x8000_0000 != 0 {
            return self.fail(status::PRIV_BAD);
        }
        let unknown = d.flags() & !flags::KNOWN;
        if unknown != 0 {
            let mut rec = self.fail(status::INVALID_FLAGS);
            rec.op_specific[..3].copy_from_slice(&unknown.to_le_bytes()[..3]);
            return rec;
        }
        if d.rsvd1 != 0 || d.pasid_priv & 0x7ff0_0000 != 0 {
            return self.fail(status::NOZERO_RESERVE);
        }
        let ok = CompletionRecord {
            status: status::SUCCESS,
            ..CompletionRecord::default()
        };
        match d.opcode() {
            opcode::NOOP | opcode::DRAIN => ok,
            opcode::MEMMOVE | opcode::MEMFILL => self.work(d),
            opcode::BATCH if !in_batch => self.batch(d),
            _ => self.fail(status::BAD_OPCODE),
        }
    }

    fn batch(&self, d: &WorkDescriptor) -> CompletionRecord {
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        let count = d.xfer_size;
        if count < 2 || count > self.max_batch_size {
            return self.fail(status::DESC_CNT_ERANGE);
        }
        if !d.src_addr.is_multiple_of(64) {
            return self.fail(status::DESCLIST_ALIGN);
        }
        let list = d.src_addr as *const WorkDescriptor;
        let mut completed = 0u32;
        for i in 0..count as usize {
            // SAFETY: `write_portal`'s contract keeps the descriptor list valid until the
            // batch's record is written; it is 64-byte aligned (checked above), and
            // `i < count`, the list's length.
            let member = unsafe { std::ptr::read(list.add(i)) };
            let ok = if member.flags() & flags::CRAV == 0
                || !member.completion_addr.is_multiple_of(32)
            {
                self.counters.unreported.fetch_add(1, Ordering::Relaxed);
                false
            } else {
                let rec = self.execute(&member, true);
                let ok = rec.status == status::SUCCESS;
                // SAFETY: `write_portal`'s contract covers the batch's members too: each
                // member's completion record stays valid until it is written, here, and is
                // otherwise only accessed atomically; CRAV is set and the address is 32-byte
                // aligned (both checked just above).
                let record =
                    unsafe { RecordRef::new(member.completion_addr as *mut CompletionRecord) };
                record.complete(&rec);
                ok
            };
            completed += u32::from(ok);
        }
        CompletionRecord {
            status: if completed == count {
                status::SUCCESS
            } else {
                status::BATCH_FAIL
            },
            bytes_completed: completed,
            ..CompletionRecord::default()
        }
    }

    /// MEMMOVE or MEMFILL, with any injected outcome.
    fn work(&self, d: &WorkDescriptor) -> CompletionRecord {
        let len = d.xfer_size;
        let injection = {
            let mut c = self.control.lock();
            match c.next.pop_front() {
                Some(i) => Some(i),
                None => match &mut c.random_faults {
                    Some((p, rng)) if len > 0 => {
                        let p = *p;
                        rng.random_bool(p).then(|| Injection::PageFaultAt {
                            byte: rng.random_range(0..len),
                            write: rng.random_bool(0.5),
                        })
                    }
                    _ => None,
                },
            }
        };
        match injection {
            Some(Injection::BadOpcode) => return self.fail(status::BAD_OPCODE),
            Some(Injection::TransferSizeOutOfRange) => return self.fail(status::XFER_ERANGE),
            _ => {}
        }
        if len == 0 || len > self.max_transfer_size {
            return self.fail(status::XFER_ERANGE);
        }
        let memmove = d.opcode() == opcode::MEMMOVE;
        if memmove {
            let (s, t, n) = (d.src_addr, d.dst_addr, u64::from(len));
            if s < t.saturating_add(n) && t < s.saturating_add(n) {
                return self.fail(status::OVERLAP_BUFFERS);
            }
        }
        let fault = match injection {
            Some(Injection::PageFaultAt { byte, write }) if d.flags() & flags::BOF != 0 => {
                let _ = (byte, write);
                self.counters
                    .faults_resolved
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
            Some(Injection::PageFaultAt { byte, write }) => Some((byte.min(len - 1), write)),
            _ => None,
        };
        let done = fault.map_or(len, |(byte, _)| byte) as usize;
        let dst = d.dst_addr as *mut u8;
        if memmove {
            // SAFETY: `write_portal`'s contract: source and destination are valid for
            // `len >= done` bytes until the record is written, and do not overlap
            // (checked above).
            unsafe { std::ptr::copy_nonoverlapping(d.src_addr as *const u8, dst, done) };
        } else {
            let pattern = d.src_addr.to_le_bytes();
            // SAFETY: `write_portal`'s contract: the destination is valid for `len >= done`
            // bytes until the record is written, and nothing else accesses it meanwhile
            // (the submitter waits for the record); a fill reads no source.
            let out = unsafe { std::slice::from_raw_parts_mut(dst, done) };
            for (i, b) in out.iter_mut().enumerate() {
                *b = pattern[i % 8];
            }
        }
        match fault {
            None => CompletionRecord {
                status: status::SUCCESS,
                ..CompletionRecord::default()
            },
            Some((byte, write)) => {
                self.counters.page_faults.fetch_add(1, Ordering::Relaxed);
                let base = if write || !memmove {
                    d.dst_addr
                } else {
                    d.src_addr
                };
                CompletionRecord {
                    status: status::PAGE_FAULT_NOBOF | if write { status::WRITE } else { 0 },
                    bytes_completed: byte,
                    fault_addr: base + u64::from(byte),
                    ..CompletionRecord::default()
                }
            }
        }
    }
}
