//! One channel's rings: descriptors and completion records in flight, the WQ entries it
//! holds, and the failures it remembers.

use super::hw::{status, RecordRef};
use super::*;
use crate::TxStatus;
use crossbeam_utils::CachePadded;
use parking_lot::Mutex;
use std::cell::UnsafeCell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

/// Failures whose details are kept exactly; older ones are folded (see `Failures`).
pub(super) const FAILURES_KEPT: usize = 4096;

/// One ring entry: a descriptor (64-byte aligned) or a record (32-byte aligned) that the
/// device reads or writes asynchronously.
pub(super) type Slot<T> = UnsafeCell<T>;

/// A WQ entry this channel holds at the device: the record that frees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) slot: usize,
    pub(super) batch: bool,
}

/// Failed sequence numbers with the bytes done, exact for recent ones; older ones are
/// folded into "failed, nothing known" for every sequence at or below `folded_upto`
/// (conservative: a caller redoes a copy that may have been fine).
#[derive(Default)]
pub(super) struct Failures {
    pub(super) exact: BTreeMap<u64, Option<usize>>,
    pub(super) folded_upto: u64,
}

impl Failures {
    pub(super) fn insert(&mut self, seq: u64, done: Option<usize>) {
        self.exact.insert(seq, done);
        if self.exact.len() > FAILURES_KEPT {
            let keep = self
                .exact
                .split_off(&(seq - (FAILURES_KEPT as u64 / 2).min(seq)));
            if let Some((&max, _)) = self.exact.last_key_value() {
                self.folded_upto = self.folded_upto.max(max);
            }
            self.exact = keep;
        }
    }

    pub(super) fn get(&self, seq: u64) -> Option<Option<usize>> {
        match self.exact.get(&seq) {
            Some(&d) => Some(d),
            None if seq <= self.folded_upto => Some(None),
            None => None,
        }
    }
}

pub(super) struct ChanState {
    pub(super) allocated: bool,
    pub(super) next_seq: u64,
    /// Every sequence up to this one was written to the portal (or completed without it).
    pub(super) issued_upto: u64,
    /// WQ entries at the device (dedicated WQ), freed when their record is written.
    pub(super) entries: VecDeque<Entry>,
    pub(super) failures: Failures,
}

pub(super) struct DsaChannel {
    pub(super) ring_size: usize,
    pub(super) index: usize,
    pub(super) descs: Box<[Slot<WorkDescriptor>]>,
    pub(super) records: Box<[Slot<CompletionRecord>]>,
    pub(super) batch_records: Box<[Slot<CompletionRecord>]>,
    /// Every sequence up to this one is done and its outcome is in `failures`.
    pub(super) harvested: CachePadded<AtomicU64>,
    pub(super) submitted: AtomicU64,
    pub(super) error_count: AtomicU64,
    pub(super) state: Mutex<ChanState>,
}

impl DsaChannel {
    pub(super) fn new(index: usize, ring_size: usize) -> DsaChannel {
        let slots = |_| UnsafeCell::new(CompletionRecord::default());
        DsaChannel {
            ring_size,
            index,
            descs: (0..ring_size)
                .map(|_| UnsafeCell::new(WorkDescriptor::default()))
                .collect(),
            records: (0..ring_size).map(slots).collect(),
            batch_records: (0..ring_size).map(slots).collect(),
            harvested: CachePadded::new(AtomicU64::new(0)),
            submitted: AtomicU64::new(0),
            error_count: AtomicU64::new(0),
            state: Mutex::new(ChanState {
                allocated: false,
                next_seq: 1,
                issued_upto: 0,
                entries: VecDeque::new(),
                failures: Failures::default(),
            }),
        }
    }

    pub(super) fn slot(&self, seq: u64) -> usize {
        (seq as usize) & (self.ring_size - 1)
    }

    pub(super) fn record(&self, seq: u64) -> RecordRef {
        // SAFETY: the ring lives as long as the channel, records are 32-byte aligned
        // (`CompletionRecord`'s alignment, kept by UnsafeCell), and every access to them
        // goes through `RecordRef`'s atomics.
        unsafe { RecordRef::new(self.records[self.slot(seq)].get()) }
    }

    pub(super) fn entry_record(&self, e: Entry) -> RecordRef {
        let ring = if e.batch {
            &self.batch_records
        } else {
            &self.records
        };
        // SAFETY: both record rings live as long as the channel, their records are
        // 32-byte aligned (`CompletionRecord`'s alignment, kept by UnsafeCell), and every
        // access to them goes through `RecordRef`'s atomics.
        unsafe { RecordRef::new(ring[e.slot].get()) }
    }

    /// Moves `harvested` over every done sequence in order, logging failures.
    pub(super) fn harvest(&self, st: &mut ChanState, partial: &AtomicU64) {
        let mut h = self.harvested.load(Ordering::Relaxed);
        while h < st.issued_upto {
            let rec = self.record(h + 1);
            if rec.status() == status::NONE {
                break;
            }
            if let Some(Err(e)) = hw::decode(&rec.read()) {
                let done = self.prefix_done(h + 1, &e);
                if done.is_some() {
                    partial.fetch_add(1, Ordering::Relaxed);
                }
                st.failures.insert(h + 1, done);
                self.error_count.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(chan = self.index, seq = h + 1, error = %e, "DSA descriptor failed");
            }
            h += 1;
        }
        self.harvested.store(h, Ordering::Release);
    }

    /// The bytes a failed descriptor completed, when they are a prefix no longer than the
    /// descriptor (a device reporting more is not believed). Called with the state lock,
    /// while the slot still belongs to `seq`.
    pub(super) fn prefix_done(&self, seq: u64, e: &DsaError) -> Option<usize> {
        // SAFETY: the state lock is held (descriptors are written only under it) and the
        // slot is `seq`'s until `harvested` passes it.
        let len = unsafe { (*self.descs[self.slot(seq)].get()).xfer_size } as usize;
        e.prefix_done().filter(|&d| d <= len)
    }

    /// Frees the WQ entries whose record is written; returns how many.
    pub(super) fn reclaim(&self, st: &mut ChanState) -> usize {
        let before = st.entries.len();
        st.entries
            .retain(|&e| self.entry_record(e).status() == status::NONE);
        before - st.entries.len()
    }

    pub(super) fn status(&self, seq: u64) -> TxStatus {
        if seq == 0 || seq > self.submitted.load(Ordering::Acquire) {
            return TxStatus::Error;
        }
        if seq > self.harvested.load(Ordering::Acquire) {
            let code = self.record(seq).status() & status::MASK;
            // The slot is reused only after `harvested` passed `seq`; a status written
            // for a later occupant would be seen together with that (Acquire chain).
            if seq > self.harvested.load(Ordering::Acquire) {
                return match code {
                    status::NONE => TxStatus::InProgress,
                    status::SUCCESS | status::SUCCESS_PRED => TxStatus::Complete,
                    _ => TxStatus::Error,
                };
            }
        }
        if self.error_count.load(Ordering::Relaxed) == 0 {
            return TxStatus::Complete;
        }
        if self.state.lock().failures.get(seq).is_some() {
            TxStatus::Error
        } else {
            TxStatus::Complete
        }
    }
}
