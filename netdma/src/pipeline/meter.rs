//! The adaptive policy's view of the pipelined receive: what each path costs the
//! receiving thread.

use super::read::Posted;
use crate::control::NetDma;
use crate::route::Route;

/// What pipelined reads cost the receiving thread, per path, for the adaptive policy. A
/// read's own wall time says little here (it waits in the queue and overlaps with
/// others), so the meter charges the thread's time in [`Pipeline::poll`] (the stack's
/// processing included: offload makes smoltcp's ring writes dearer, see
/// `bench/src/handoff.rs`) and divides each path's time by the bytes its reads delivered.
/// A poll that moved bytes (CPU copies, DMA submissions) is split between the paths in
/// proportion to the bytes each moved in it, so a CPU read that copies while other reads'
/// DMA copies are in flight is charged its copy; a poll that moved nothing is charged to
/// DMA when copies were in flight or retired in it (waiting for and retiring copies is
/// the offload's cost), to the CPU otherwise. A sampled read records its path's cost per
/// byte since that path's previous sample. Polls with nothing in flight and nothing done
/// (waiting for the network) count for neither path.
#[derive(Debug, Default)]
pub(super) struct Meter {
    /// Busy nanoseconds per path (`[cpu, dma]`) since its last sample.
    pub(super) busy_ns: [u64; 2],
    /// Bytes delivered per path since its last sample.
    pub(super) bytes: [usize; 2],
    /// The sampled reads finished by this poll: (by DMA, bytes).
    pub(super) samples: Vec<(bool, usize)>,
    /// A DMA read finished in this poll.
    pub(super) dma_finished: bool,
    /// Bytes this poll moved per path (`[cpu, dma]`): copied by the CPU for CPU-routed
    /// reads, submitted (with their CPU share) for DMA-routed ones.
    pub(super) moved: [usize; 2],
}

impl Meter {
    /// Notes a read this poll finished.
    pub(super) fn finished(&mut self, p: &Posted) {
        let dma = matches!(p.route, Route::Dma(_));
        self.bytes[usize::from(dma)] += p.filled;
        self.dma_finished |= dma;
        if p.sampled && !p.dma_failed {
            // Failed DMA copies are not samples of what DMA costs.
            self.samples.push((dma, p.filled));
        }
    }

    /// Charges a poll that started at `start` (the policy's clock) and records the
    /// samples of the reads it finished. `in_flight`: copies are still in flight.
    pub(super) fn charge(&mut self, netdma: &NetDma, start: u64, progress: bool, in_flight: bool) {
        let spent = netdma.clock_ns().saturating_sub(start);
        let moved = std::mem::take(&mut self.moved);
        let total = moved[0] + moved[1];
        if total > 0 {
            let cpu = (spent as u128 * moved[0] as u128 / total as u128) as u64;
            self.busy_ns[0] += cpu;
            self.busy_ns[1] += spent - cpu;
        } else if progress || in_flight {
            let path = usize::from(in_flight || self.dma_finished);
            self.busy_ns[path] += spent;
        }
        self.dma_finished = false;
        for (dma, bytes) in self.samples.drain(..) {
            let path = usize::from(dma);
            if self.bytes[path] == 0 {
                continue;
            }
            let per_byte = self.busy_ns[path] as f64 / self.bytes[path] as f64;
            netdma
                .adaptive
                .record(dma, bytes, (per_byte * bytes as f64) as u64);
            self.busy_ns[path] = 0;
            self.bytes[path] = 0;
        }
    }
}
