//! The worker thread of one software DMA channel.

use super::Shared;
use crate::provider::Descriptor;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One submitted descriptor.
pub(crate) struct Job {
    pub(crate) seq: u64,
    pub(crate) desc: Descriptor,
}

pub(crate) struct Worker {
    pub(crate) shared: Arc<Shared>,
    pub(crate) batches: Receiver<Vec<Job>>,
    pub(crate) recycle: Sender<Vec<Job>>,
    pub(crate) spin: Duration,
    pub(crate) pin: Option<usize>,
}

impl Worker {
    pub(crate) fn run(self) {
        if let Some(cpu) = self.pin {
            if let Err(e) = crate::cpu::pin_current_thread(cpu) {
                tracing::warn!(cpu, error = %e, "could not pin DMA worker");
            }
        }
        while let Some(mut batch) = self.next_batch() {
            for job in batch.drain(..) {
                self.process(job);
            }
            let _ = self.recycle.try_send(batch);
        }
    }

    /// Spin for `spin`, then park in `recv`; `None` once the channel is freed and drained.
    fn next_batch(&self) -> Option<Vec<Job>> {
        match self.batches.try_recv() {
            Ok(batch) => return Some(batch),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {}
        }
        // Poll the queue on every turn (an empty `try_recv` is a couple of loads) and the
        // clock only every 64: one `pause` is ~140 cycles on recent x86, so checking the
        // queue once per 64 of them would add ~3 us to every hand-off.
        // After the first couple of microseconds, yield between polls: on a busy machine
        // the scheduler may put us on the submitter's core, which we must not starve.
        let start = Instant::now();
        let until = start + self.spin;
        let mut turns = 0u32;
        let mut yielding = false;
        loop {
            match self.batches.try_recv() {
                Ok(batch) => return Some(batch),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            if yielding {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            turns = turns.wrapping_add(1);
            if yielding || turns.is_multiple_of(64) {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                yielding = now - start >= super::PURE_SPIN;
            }
        }
        self.batches.recv().ok()
    }

    fn process(&self, job: Job) {
        #[cfg(test)]
        let _frozen = self.shared.freeze.read();
        if !self.shared.take_cancelled(job.seq) {
            // SAFETY: the submitter promised (Provider::submit) that the memory stays
            // valid and unaliased until this descriptor is done, and it is not done before
            // `publish` below: neither `tx_status` nor `terminate_all` (which waits for
            // `completed`) reports it done earlier. Zero-length descriptors are skipped so
            // null or dangling pointers never reach the copy.
            unsafe { execute(job.desc) };
        } else {
            // Cancelled (terminate_all or a listed cancel): never touched. Recorded before publishing, so a
            // poller that sees `completed >= seq` also sees the failure.
            self.shared.record_error(job.seq);
        }
        self.shared.publish(job.seq);
    }
}

/// Performs one descriptor.
///
/// # Safety
///
/// The descriptor's memory obeys `Provider::submit`'s contract.
unsafe fn execute(desc: Descriptor) {
    match desc {
        Descriptor::Memcpy { len: 0, .. } | Descriptor::Memset { len: 0, .. } => {}
        // SAFETY: src/dst valid for `len` bytes and non-overlapping, by the contract.
        Descriptor::Memcpy { dst, src, len } => unsafe {
            std::ptr::copy_nonoverlapping(src, dst, len)
        },
        // SAFETY: dst valid for writes of `len` bytes, by the contract.
        Descriptor::Memset { dst, value, len } => unsafe { std::ptr::write_bytes(dst, value, len) },
    }
}
