//! The receive path: `tcp_recvmsg` with NET_DMA's routing, over a smoltcp socket.
//!
//! Each read is routed once (the crate's `route` module): to this CPU's DMA channel, or to the CPU
//! with the reason counted. A peek always goes to the CPU.
//!
//! # Why the socket's ring may be read by DMA in place
//!
//! An offloaded read copies straight out of the socket's receive ring, which plays
//! `sk_async_wait_queue`: the bytes stay *unconsumed* in the ring until their copies are
//! done, and only then are they released (`tcp::Socket::recv` with the copied length).
//! This is sound because:
//!
//! - smoltcp writes incoming data only into the ring's *free* space, never into
//!   unconsumed bytes, so the region under copy does not change;
//! - everything that could clear or free the ring (a reset, `abort`, `close` followed by
//!   a re-`listen`, removing the socket from its set) needs `&mut` access to the socket,
//!   and the read holds that `&mut` for its whole duration, including the wait for its
//!   copies ([`dmaengine::scope`] does not return before every copy is done or cancelled);
//! - the destination is the caller's `&mut [u8]`, likewise held throughout.
//!
//! So no copy is ever in flight when the ring could change, and this module needs no
//! `unsafe` at all. The ring wraps around: a read loops over its contiguous regions until
//! the request is satisfied or no data is left.

use crate::control::{NetDma, RecvParams};
use crate::counters::Fallback;
use crate::route::{Route, Routed};
use dmaengine::{Channel, SubmitError, WaitError};
use smoltcp::socket::tcp;
use std::collections::VecDeque;

pub use crate::route::AUTO_MIN_READ;

/// Why a read returned no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// The socket is not in a state that receives (closed, listening, reset, aborted).
    #[error("the socket cannot receive in its current state (closed, reset or aborted)")]
    InvalidState,
    /// The peer closed the connection and every byte has been read.
    #[error("the peer closed the connection and all data has been read")]
    Finished,
}

impl From<tcp::RecvError> for RecvError {
    fn from(e: tcp::RecvError) -> Self {
        match e {
            tcp::RecvError::InvalidState => RecvError::InvalidState,
            tcp::RecvError::Finished => RecvError::Finished,
        }
    }
}

impl NetDma {
    /// Reads up to `buf.len()` bytes from `socket` into `buf` (`tcp_recvmsg`), by DMA or
    /// by the CPU as the routing rules decide; returns the number of bytes read (0 if none
    /// is waiting). The data is always correct: a copy DMA could not do is redone by the
    /// CPU for exactly the affected bytes, and no wait is unbounded.
    pub fn recv(&self, socket: &mut tcp::Socket<'_>, buf: &mut [u8]) -> Result<usize, RecvError> {
        self.release_if_idle_now_and_then();
        if socket.recv_queue() == 0 {
            // Nothing waiting: no routing, no counting (end of stream and errors included).
            return Ok(socket.recv_slice(buf)?);
        }
        let params = *self.params.read();
        let Routed {
            route,
            side,
            sample,
        } = self.route(buf.len(), &params);
        let start = if sample { self.clock_ns() } else { 0 };
        let (n, clean) = match &route {
            Route::Cpu(reason) => (self.recv_cpu(socket, buf, *reason)?, true),
            Route::Dma(channel) => self.recv_dma(socket, buf, channel, &params)?,
        };
        // The copies are done: `disable` may go on.
        drop(side);
        // Failed DMA copies are no sample of what DMA costs.
        if sample && clean {
            let spent = self.clock_ns().saturating_sub(start);
            self.adaptive
                .record(matches!(route, Route::Dma(_)), n, spent);
        }
        Ok(n)
    }

    /// Reads without consuming (`MSG_PEEK`): always by the CPU, since nothing may be left
    /// in flight over bytes that stay in the ring for the next read.
    pub fn peek(&self, socket: &mut tcp::Socket<'_>, buf: &mut [u8]) -> Result<usize, RecvError> {
        let n = socket.peek_slice(buf)?;
        self.counters.cpu(n);
        self.counters.cpu_read();
        self.counters.fallback(Fallback::Peek, n);
        Ok(n)
    }

    fn recv_cpu(
        &self,
        socket: &mut tcp::Socket<'_>,
        buf: &mut [u8],
        reason: Option<Fallback>,
    ) -> Result<usize, RecvError> {
        let n = socket.recv_slice(buf)?;
        if n > 0 {
            self.counters.cpu(n);
            self.counters.cpu_read();
            if let Some(reason) = reason {
                self.counters.fallback(reason, n);
            }
        }
        Ok(n)
    }

    /// The offloaded read; returns the bytes read and whether every DMA copy succeeded.
    fn recv_dma(
        &self,
        socket: &mut tcp::Socket<'_>,
        buf: &mut [u8],
        channel: &Channel,
        p: &RecvParams,
    ) -> Result<(usize, bool), RecvError> {
        let mut done = 0;
        let mut clean = true;
        while done < buf.len() {
            let region = match socket.peek(buf.len() - done) {
                Ok(region) if !region.is_empty() => region,
                Ok(_) => break,
                Err(_) if done > 0 => break,
                Err(e) => return Err(e.into()),
            };
            let n = region.len();
            let outcome = copy_region(channel, &mut buf[done..done + n], region, p, self);
            clean &= outcome;
            // The copies are done: release the ring space (`tcp_service_net_dma`).
            let released = socket.recv(|_| (n, ()));
            debug_assert!(released.is_ok(), "peeked bytes are consumable");
            done += n;
        }
        if done > 0 {
            self.counters.dma_read();
        }
        Ok((done, clean))
    }
}

/// Cancels one timed-out copy (only it, where the device can; see
/// [`Channel::terminate`]).
pub(crate) fn cancel_copy(
    channel: &Channel,
    cookie: dmaengine::Cookie,
    timeout: std::time::Duration,
) -> dmaengine::Terminated {
    let outcome = channel.terminate(&[cookie], timeout);
    if outcome == dmaengine::Terminated::Pending {
        tracing::warn!(%cookie, "DMA device did not confirm a cancellation in time");
    }
    outcome
}

/// Why a copy that ended in error failed: its own fault, or a whole-channel abort caused
/// by another read's timeout.
pub(crate) fn failure(channel: &Channel, cookie: dmaengine::Cookie) -> Fallback {
    if channel.aborted_for_others(cookie) {
        Fallback::Aborted
    } else {
        Fallback::ChannelError
    }
}

thread_local! {
    /// `copy_region`'s list of copies in flight, kept between reads on this thread.
    static WINDOW: std::cell::RefCell<VecDeque<(usize, usize, dmaengine::Cookie)>> =
        const { std::cell::RefCell::new(VecDeque::new()) };
}

/// Copies `src` into `dst` (equal lengths): the head by DMA in `chunk_size` descriptors
/// with at most `max_inflight` in flight, the tail share `cpu_fraction` by the CPU at the
/// same time; then the CPU redoes every descriptor that failed. Returns whether all DMA
/// copies succeeded.
fn copy_region(
    channel: &Channel,
    dst: &mut [u8],
    src: &[u8],
    p: &RecvParams,
    netdma: &NetDma,
) -> bool {
    let counters = &netdma.counters;
    let len = src.len();
    let cpu_len = ((len as f64 * p.cpu_fraction) as usize).min(len);
    let dma_len = len - cpu_len;
    let failed = {
        let (dma_dst, cpu_dst) = dst.split_at_mut(dma_len);
        let (dma_src, cpu_src) = src.split_at(dma_len);
        dmaengine::scope_with_timeout(p.timeout, move |s| {
            let mut failed: Vec<(usize, usize, Fallback)> = Vec::new();
            // The copies in flight, oldest first, in this thread's reused list: a warm read
            // allocates nothing. (The scope keeps the copies' buffers borrowed until every
            // one is done, whatever happens to this list.)
            let mut window = WINDOW.with(|w| std::mem::take(&mut *w.borrow_mut()));
            let mut timed_out = false;
            let mut retire =
                |off: usize, n: usize, cookie: dmaengine::Cookie, failed: &mut Vec<_>| {
                    // Once one copy of this read timed out, the rest are not waited for
                    // again: each still in flight is cancelled at once.
                    let done = channel.status(cookie).is_ok_and(|s| s.is_done());
                    let result = if timed_out && !done {
                        Err(WaitError::Timeout {
                            cookie,
                            timeout: p.timeout,
                        })
                    } else {
                        channel.wait(cookie, p.timeout)
                    };
                    counters.in_flight_sub(n);
                    match result {
                        Ok(()) => counters.dma(n),
                        // A partial completion: the prefix is final, the CPU copies the rest.
                        Err(WaitError::Partial { bytes_done, .. }) if bytes_done <= n => {
                            counters.dma(bytes_done);
                            failed.push((off + bytes_done, n - bytes_done, Fallback::Partial));
                        }
                        Err(WaitError::Timeout { .. }) => {
                            // Cancel this copy alone: other reads' copies on the channel
                            // go on. Not confirmed in time (`Pending`), the scope still
                            // waits for it before the CPU redoes the bytes.
                            cancel_copy(channel, cookie, p.timeout);
                            timed_out = true;
                            failed.push((off, n, Fallback::Timeout));
                        }
                        // Failed after this read's own cancellation (a device that aborts
                        // the whole channel): part of the timeout.
                        Err(_) if timed_out => failed.push((off, n, Fallback::Timeout)),
                        Err(_) => failed.push((off, n, failure(channel, cookie))),
                    }
                };
            let mut off = 0;
            for (d, sr) in dma_dst
                .chunks_mut(p.chunk_size)
                .zip(dma_src.chunks(p.chunk_size))
            {
                let n = d.len();
                if window.len() >= p.max_inflight {
                    let (o, l, t) = window.pop_front().expect("window is full");
                    retire(o, l, t, &mut failed);
                }
                match s.memcpy(channel, d, sr) {
                    Ok(t) => {
                        counters.in_flight_add(n);
                        window.push_back((off, n, t.cookie()));
                    }
                    Err(SubmitError::RingFull { .. }) => failed.push((off, n, Fallback::RingFull)),
                    Err(_) => failed.push((off, n, Fallback::ChannelError)),
                }
                off += n;
            }
            channel.issue_pending();
            // The CPU share runs while the engine copies the rest.
            cpu_dst.copy_from_slice(cpu_src);
            while let Some((o, l, t)) = window.pop_front() {
                retire(o, l, t, &mut failed);
            }
            WINDOW.with(|w| *w.borrow_mut() = window);
            failed
        })
    };
    counters.cpu(cpu_len);
    let clean = failed.is_empty();
    for (off, n, reason) in failed {
        dst[off..off + n].copy_from_slice(&src[off..off + n]);
        counters.cpu(n);
        counters.fallback(reason, n);
    }
    clean
}
