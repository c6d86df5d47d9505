//! A posted read's state: its buffer, its copies in flight (chunks, in ring order), and
//! the queue of reads posted on one socket.

use crate::recv::RecvError;
use crate::route::Route;
use dmaengine::Cookie;
use smoltcp::iface::SocketHandle;
use std::collections::VecDeque;
use std::time::Instant;

/// One copy, in ring order: a DMA transfer or bytes the CPU already copied.
pub(super) struct Chunk {
    pub(super) cookie: Option<Cookie>,
    /// Ring bytes the chunk covers.
    pub(super) len: usize,
    /// Of which DMA copies the first `dma_len` (the CPU copied the rest at submission:
    /// the `cpu_fraction` split).
    pub(super) dma_len: usize,
    /// When it was submitted: a copy in flight longer than the wait timeout is cancelled.
    pub(super) submitted_at: Instant,
}

/// One posted read.
pub(super) struct Posted {
    pub(super) buf: Vec<u8>,
    pub(super) low_water: usize,
    /// Bytes copied and released from the ring.
    pub(super) filled: usize,
    pub(super) inflight: VecDeque<Chunk>,
    pub(super) inflight_bytes: usize,
    pub(super) route: Route,
    pub(super) error: Option<RecvError>,
    /// The adaptive policy measures this read (see [`Meter`]); cleared if the read
    /// changes path, since its cost is then no sample of either.
    pub(super) sampled: bool,
    pub(super) dma_failed: bool,
    /// Bytes the engine copied (the rest went through the CPU).
    pub(super) dma_bytes: usize,
}

impl Posted {
    /// Bytes of the buffer no copy has claimed yet.
    pub(super) fn unclaimed(&self) -> usize {
        self.buf.len() - self.filled - self.inflight_bytes
    }

    pub(super) fn is_complete(&self) -> bool {
        self.inflight.is_empty()
            && (self.filled == self.buf.len()
                || self.filled >= self.low_water
                || self.error.is_some())
    }
}

/// The reads posted on one socket, oldest first. They fill in ring order: a read claims
/// data only once every read before it has claimed its whole buffer, so the ring bytes
/// under copy are the reads' in-flight chunks, in queue order, from the ring's front.
pub(super) struct SocketReads {
    pub(super) handle: SocketHandle,
    pub(super) reads: VecDeque<Posted>,
}

impl SocketReads {
    pub(super) fn inflight_bytes(&self) -> usize {
        self.reads.iter().map(|p| p.inflight_bytes).sum()
    }

    pub(super) fn inflight_chunks(&self) -> usize {
        self.reads.iter().map(|p| p.inflight.len()).sum()
    }
}
