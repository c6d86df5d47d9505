//! The pipelined receive (NET_DMA's early copy, `tcp_dma_try_early_copy`): the caller
//! posts a buffer, and the pipeline fills it while it polls the stack, keeping several
//! DMA copies in flight that overlap with the protocol processing of the next segments.
//!
//! A synchronous hand-off never pays on this machine (DESIGN.md: the waiter burns what the
//! copy would have cost); only overlap does. [`Pipeline::poll`] therefore never waits for
//! a copy: it retires the ones that are done, releases their ring space, submits copies of
//! newly arrived data with one doorbell, and returns to packet processing.
//!
//! # Buffer ownership while copies are in flight
//!
//! | memory | owner while a copy is in flight | why nobody else touches it |
//! | --- | --- | --- |
//! | the posted buffer (a `Vec<u8>`) | the pipeline | moved in by [`post_recv`](Pipeline::post_recv), handed back only when its copies are done; written by the CPU only through raw pointers to bytes no copy targets |
//! | the socket's receive-ring bytes under copy | the pipeline | unconsumed: smoltcp writes only *free* ring space, and they are released (`recv(|_| (n, ()))`) only after their copy is done |
//! | the socket itself | the pipeline's `SocketSet` | the pipeline never hands out `&mut` to a socket or the set, so nothing can remove a socket, `listen`/`connect` it anew (which clears the ring) or drop it while its copies are in flight; [`abort`](Pipeline::abort), [`cancel`](Pipeline::cancel), [`into_stack`](Pipeline::into_stack) and `Drop` finish or cancel the copies first |
//!
//! A reset from the peer (RST) clears the ring's indices but not its bytes, and no new
//! data can land there until the socket is set up again, which only the pipeline can do,
//! after its copies are done; the bytes copied were received before the reset.
//!
//! The copies read ring bytes through pointers taken from a `peek` while, between polls,
//! smoltcp writes *other* bytes of the same storage through a fresh `&mut` to it. The two
//! never touch the same byte, so there is no data race; in Rust's aliasing model this is
//! accepted by Tree Borrows (a reborrow that writes none of our bytes leaves them
//! readable) though not by the older Stacked Borrows, which smoltcp's ring API gives no way
//! to avoid short of copying. This is the one place netdma relies on it.

use crate::control::NetDma;
use crate::counters::Fallback;
use crate::link::Link;
use crate::recv::{RecvError, Route};
use crate::stack::Stack;
use dmaengine::{Channel, Cookie, SubmitError, TxStatus};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why [`Pipeline::post_recv`] refused a buffer (handed back inside).
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// A read is already posted on this socket.
    #[error("a read is already posted on this socket")]
    AlreadyPosted(Vec<u8>),
    /// The buffer is empty.
    #[error("the posted buffer is empty")]
    Empty(Vec<u8>),
}

/// A finished posted read.
#[derive(Debug)]
pub struct Completed {
    /// The buffer, as posted; its first `len` bytes hold the data.
    pub buf: Vec<u8>,
    /// Bytes received.
    pub len: usize,
    /// Set when the read ended early because the connection did (`len` may be > 0).
    pub error: Option<RecvError>,
}

/// One copy, in ring order: a DMA transfer or bytes the CPU already copied.
struct Chunk {
    cookie: Option<Cookie>,
    len: usize,
    /// When it was submitted: a copy in flight longer than the wait timeout is cancelled.
    submitted_at: Instant,
}

enum Mode {
    Dma(Channel),
    Cpu(Option<Fallback>),
}

struct Posted {
    handle: SocketHandle,
    buf: Vec<u8>,
    low_water: usize,
    /// Bytes copied and released from the ring.
    filled: usize,
    inflight: VecDeque<Chunk>,
    inflight_bytes: usize,
    mode: Mode,
    error: Option<RecvError>,
    /// Thread CPU time spent in the pipeline for this read (adaptive samples only).
    sample_start: Option<u64>,
    dma_failed: bool,
}

/// A [`Stack`] whose TCP reads are posted and filled by DMA while it polls.
pub struct Pipeline<L: Link> {
    /// Always `Some`, except inside `into_stack`.
    stack: Option<Stack<L>>,
    netdma: Arc<NetDma>,
    posted: Vec<Posted>,
    done: Vec<(SocketHandle, Completed)>,
}

impl<L: Link> Pipeline<L> {
    /// A pipeline over `stack` routing through `netdma`.
    pub fn new(stack: Stack<L>, netdma: Arc<NetDma>) -> Self {
        Pipeline {
            stack: Some(stack),
            netdma,
            posted: Vec::new(),
            done: Vec::new(),
        }
    }

    /// The stack, read-only (mutable access would let a socket be removed under a copy).
    pub fn stack(&self) -> &Stack<L> {
        self.stack.as_ref().expect("stack present until into_stack")
    }

    fn stack_mut(&mut self) -> &mut Stack<L> {
        self.stack.as_mut().expect("stack present until into_stack")
    }

    /// Finishes every posted read (waiting for, or at the timeout cancelling, its copies;
    /// finished reads are dropped) and returns the stack.
    pub fn into_stack(mut self) -> Stack<L> {
        self.drain();
        self.stack.take().expect("stack present until into_stack")
    }

    /// The offload.
    pub fn netdma(&self) -> &Arc<NetDma> {
        &self.netdma
    }

    /// Adds a TCP socket with the given buffer sizes.
    pub fn add_tcp_socket(&mut self, rx_bytes: usize, tx_bytes: usize) -> SocketHandle {
        self.stack_mut().add_tcp_socket(rx_bytes, tx_bytes)
    }

    /// Runs `f` on a socket that has no posted read (listen, connect, send, close...).
    /// Returns `None` while a read is posted on it: finish or [`abort`](Self::abort) it
    /// first.
    pub fn with_socket<R>(
        &mut self,
        handle: SocketHandle,
        f: impl FnOnce(&mut tcp::Socket<'static>) -> R,
    ) -> Option<R> {
        if self.posted.iter().any(|p| p.handle == handle) {
            return None;
        }
        Some(f(self.stack_mut().tcp_mut(handle)))
    }

    /// Queues data to send on `handle` (safe with a read posted: sending never touches
    /// the receive ring).
    pub fn send(&mut self, handle: SocketHandle, data: &[u8]) -> Result<usize, tcp::SendError> {
        self.stack_mut().tcp_mut(handle).send_slice(data)
    }

    /// The socket's TCP state.
    pub fn state(&mut self, handle: SocketHandle) -> tcp::State {
        self.stack_mut().tcp_mut(handle).state()
    }

    /// Posts `buf` to be filled from `handle`. The read completes when `buf` is full, or
    /// once at least `low_water` bytes are in and no copy is in flight (`low_water` is
    /// clamped to `1..=buf.len()`), or when the connection ends.
    pub fn post_recv(
        &mut self,
        handle: SocketHandle,
        buf: Vec<u8>,
        low_water: usize,
    ) -> Result<(), PostError> {
        if buf.is_empty() {
            return Err(PostError::Empty(buf));
        }
        if self.posted.iter().any(|p| p.handle == handle)
            || self.done.iter().any(|(h, _)| *h == handle)
        {
            return Err(PostError::AlreadyPosted(buf));
        }
        let netdma = &*self.netdma;
        let params = *netdma.params.read();
        let mut mode = match netdma.route_static(buf.len(), &params) {
            Route::Cpu(reason) => Mode::Cpu(reason),
            Route::Eligible => match netdma.eligible_channel() {
                Ok((_guard, channel)) => Mode::Dma(channel),
                Err(reason) => Mode::Cpu(Some(reason)),
            },
        };
        let mut sample_start = None;
        if params.copybreak.is_auto() {
            if let Mode::Dma(_) = mode {
                let choice = netdma.adaptive.choose(|| netdma.clock_ns());
                if !choice.dma {
                    mode = Mode::Cpu(Some(Fallback::Adaptive));
                }
                if choice.sample {
                    sample_start = Some(netdma.clock_ns());
                }
            }
        }
        let low_water = low_water.clamp(1, buf.len());
        self.posted.push(Posted {
            handle,
            buf,
            low_water,
            filled: 0,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            mode,
            error: None,
            sample_start,
            dma_failed: false,
        });
        Ok(())
    }

    /// Takes the finished read of `handle`, if it is finished.
    pub fn take_completed(&mut self, handle: SocketHandle) -> Option<Completed> {
        let pos = self.done.iter().position(|(h, _)| *h == handle)?;
        Some(self.done.swap_remove(pos).1)
    }

    /// Polls the stack, then advances every posted read without waiting: retires done
    /// copies, releases their ring space, submits copies of new data. Returns whether
    /// anything happened.
    pub fn poll(&mut self) -> bool {
        let mut progress = self.stack_mut().poll();
        let mut i = 0;
        while i < self.posted.len() {
            let handle = self.posted[i].handle;
            let stack = self.stack.as_mut().expect("stack present until into_stack");
            let socket = stack.tcp_mut(handle);
            progress |= advance(&self.netdma, socket, &mut self.posted[i], false);
            if is_complete(&self.posted[i]) {
                let p = self.posted.swap_remove(i);
                self.finish(p);
            } else {
                i += 1;
            }
        }
        progress
    }

    /// Sleeps on the link until there may be work, at most `max` (the idle loop). Does not
    /// sleep while copies are in flight: they are polled for.
    pub fn poll_wait(&mut self, max: Option<Duration>) -> std::io::Result<()> {
        if self.posted.iter().any(|p| !p.inflight.is_empty()) {
            return Ok(());
        }
        self.netdma.maintain(Instant::now());
        self.stack_mut().poll_wait(max)
    }

    /// Cancels the read posted on `handle` (finishing or cancelling its copies) and
    /// aborts the connection; returns the read as it stood.
    pub fn abort(&mut self, handle: SocketHandle) -> Option<Completed> {
        let completed = self.cancel(handle);
        self.stack_mut().tcp_mut(handle).abort();
        completed.or_else(|| self.take_completed(handle))
    }

    /// Ends the read posted on `handle` now: waits for (or at the timeout cancels) its
    /// copies, releases their ring space, and returns what it holds.
    pub fn cancel(&mut self, handle: SocketHandle) -> Option<Completed> {
        let pos = self.posted.iter().position(|p| p.handle == handle)?;
        let mut p = self.posted.swap_remove(pos);
        let stack = self.stack.as_mut().expect("stack present until into_stack");
        advance(&self.netdma, stack.tcp_mut(handle), &mut p, true);
        Some(self.complete(p))
    }

    fn drain(&mut self) {
        let Some(stack) = self.stack.as_mut() else {
            return; // into_stack already drained
        };
        while let Some(mut p) = self.posted.pop() {
            advance(&self.netdma, stack.tcp_mut(p.handle), &mut p, true);
        }
    }

    fn finish(&mut self, p: Posted) {
        let handle = p.handle;
        let completed = self.complete(p);
        self.done.push((handle, completed));
    }

    fn complete(&self, p: Posted) -> Completed {
        debug_assert!(p.inflight.is_empty());
        if let Some(start) = p.sample_start {
            if !p.dma_failed {
                let spent = self.netdma.clock_ns().saturating_sub(start);
                let dma = matches!(p.mode, Mode::Dma(_));
                self.netdma.adaptive.record(dma, p.filled, spent);
            }
        }
        match p.mode {
            Mode::Dma(_) if p.filled > 0 => self.netdma.counters.dma_read(),
            _ if p.filled > 0 => self.netdma.counters.cpu_read(),
            _ => {}
        }
        Completed {
            buf: p.buf,
            len: p.filled,
            error: p.error,
        }
    }
}

impl<L: Link> Drop for Pipeline<L> {
    fn drop(&mut self) {
        // The posted buffers and the sockets' rings are freed after this: finish or
        // cancel every copy into or out of them first.
        self.drain();
    }
}

fn is_complete(p: &Posted) -> bool {
    p.inflight.is_empty()
        && (p.filled == p.buf.len() || p.filled >= p.low_water || p.error.is_some())
}

/// Advances one posted read; with `finish`, waits for every copy in flight and submits
/// nothing new. Returns whether anything happened.
fn advance(
    netdma: &NetDma,
    socket: &mut tcp::Socket<'static>,
    p: &mut Posted,
    finish: bool,
) -> bool {
    let params = *netdma.params.read();
    let mut progress = retire(netdma, socket, p, finish, params.timeout);
    if finish || p.error.is_some() {
        return progress;
    }
    let remaining = p.buf.len() - p.filled - p.inflight_bytes;
    if remaining == 0 {
        return progress;
    }
    if matches!(p.mode, Mode::Dma(_)) && !netdma.is_enabled() {
        // Disabled meanwhile: no new copies; once the last one retires, the CPU goes on.
        if !p.inflight.is_empty() {
            return progress;
        }
        p.mode = Mode::Cpu(Some(Fallback::Disabled));
    }
    let channel = match &p.mode {
        Mode::Cpu(reason) => {
            if p.inflight.is_empty() {
                // Only the CPU copies this read: straight from the ring, nothing held.
                let end = p.buf.len();
                match socket.recv_slice(&mut p.buf[p.filled..end]) {
                    Ok(n) if n > 0 => {
                        netdma.counters.cpu(n);
                        if let Some(reason) = reason {
                            netdma.counters.fallback(*reason, n);
                        }
                        p.filled += n;
                        progress = true;
                    }
                    Ok(_) => {}
                    Err(e) => p.error = Some(e.into()),
                }
            }
            return progress;
        }
        Mode::Dma(channel) => channel.clone(),
    };
    if p.inflight.len() >= params.max_inflight {
        return progress;
    }
    let queued = socket.recv_queue();
    let region = match socket.peek(p.inflight_bytes + remaining) {
        Ok(region) => region,
        Err(e) => {
            if p.inflight.is_empty() {
                p.error = Some(e.into());
            }
            return progress;
        }
    };
    let Some(new) = region
        .len()
        .checked_sub(p.inflight_bytes)
        .filter(|&n| n > 0)
    else {
        return progress;
    };
    let wrapped = queued > region.len();
    // Batch: wait for a full chunk while copies are in flight, unless the data stops at
    // the ring's end or fills the buffer.
    if new < params.chunk_size && !p.inflight.is_empty() && !wrapped && new < remaining {
        return progress;
    }
    let src_base = region.as_ptr();
    let now = Instant::now();
    let mut offset = p.inflight_bytes; // into the region
    let end = p.inflight_bytes + new;
    let mut submitted = false;
    while offset < end && p.inflight.len() < params.max_inflight {
        let len = (end - offset).min(params.chunk_size);
        let dst_off = p.filled + offset;
        // SAFETY: `src` lies inside `region` (offset + len <= region.len()), bytes that
        // stay unconsumed in the ring until this chunk is retired, and the pipeline
        // keeps the socket from being cleared or dropped meanwhile (module docs). `dst`
        // lies inside the posted Vec (dst_off + len <= buf.len(), since new <= remaining),
        // which the pipeline owns until the chunk is done and writes nowhere else a copy
        // targets; Vec's heap pointer is stable. Ring and Vec are distinct allocations,
        // so the ranges do not overlap.
        let result = unsafe {
            let src = src_base.add(offset);
            let dst = p.buf.as_mut_ptr().add(dst_off);
            channel.memcpy_raw(dst, src, len)
        };
        let cookie = match result {
            Ok(cookie) => {
                netdma.counters.in_flight_add(len);
                submitted = true;
                Some(cookie)
            }
            Err(e) => {
                let reason = if matches!(e, SubmitError::RingFull { .. }) {
                    Fallback::RingFull
                } else {
                    Fallback::ChannelError
                };
                // SAFETY: as above for both ranges; the CPU writes bytes of the posted
                // buffer no in-flight copy targets, through a raw pointer so no
                // reference to the whole buffer is created while the engine writes
                // other parts of it.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src_base.add(offset),
                        p.buf.as_mut_ptr().add(dst_off),
                        len,
                    );
                }
                netdma.counters.cpu(len);
                netdma.counters.fallback(reason, len);
                p.dma_failed = true;
                None
            }
        };
        p.inflight.push_back(Chunk {
            cookie,
            len,
            submitted_at: now,
        });
        p.inflight_bytes += len;
        offset += len;
        progress = true;
    }
    if submitted {
        channel.issue_pending(); // one doorbell for the batch
    }
    progress
}

/// Retires copies at the front in ring order; with `finish`, waits for all of them.
fn retire(
    netdma: &NetDma,
    socket: &mut tcp::Socket<'static>,
    p: &mut Posted,
    finish: bool,
    timeout: Duration,
) -> bool {
    let Mode::Dma(channel) = &p.mode else {
        return false;
    };
    let channel = channel.clone();
    if socket.recv_queue() < p.inflight_bytes {
        // The connection was reset: smoltcp cleared the ring's indices (not its bytes).
        // Finish the copies so the memory is free, deliver only what was released.
        for chunk in p.inflight.drain(..) {
            if let Some(cookie) = chunk.cookie {
                if channel.wait(cookie, timeout).is_err() {
                    channel.terminate_all();
                }
                netdma.counters.in_flight_sub(chunk.len);
            }
        }
        p.inflight_bytes = 0;
        p.error = Some(RecvError::InvalidState);
        return true;
    }
    let mut progress = false;
    while let Some(front) = p.inflight.front() {
        let len = front.len;
        let mut timed_out = false;
        let status = match front.cookie {
            None => TxStatus::Complete,
            Some(cookie) => {
                let status = channel.status(cookie).unwrap_or(TxStatus::Error);
                if status.is_done() {
                    status
                } else if !finish {
                    if front.submitted_at.elapsed() < timeout {
                        break; // still in flight: back to packet processing
                    }
                    // Stuck for a whole wait timeout: cancel, then the CPU redoes it.
                    channel.terminate_all();
                    timed_out = true;
                    TxStatus::Error
                } else {
                    match channel.wait(cookie, timeout) {
                        Ok(()) => TxStatus::Complete,
                        Err(dmaengine::WaitError::Timeout { .. }) => {
                            channel.terminate_all(); // afterwards it is done
                            timed_out = true;
                            TxStatus::Error
                        }
                        Err(_) => TxStatus::Error,
                    }
                }
            }
        };
        if status == TxStatus::InProgress {
            break;
        }
        if front.cookie.is_some() {
            netdma.counters.in_flight_sub(len);
            if status == TxStatus::Complete {
                netdma.counters.dma(len);
            } else {
                // Redo exactly this chunk from the ring, still unconsumed at its front.
                let region = match socket.peek(len) {
                    Ok(region) if region.len() == len => region,
                    _ => {
                        // The ring no longer offers these bytes (the connection is
                        // gone); the chunk's copy is done, so its memory is free.
                        p.inflight.pop_front();
                        p.inflight_bytes -= len;
                        p.error = Some(RecvError::InvalidState);
                        progress = true;
                        continue;
                    }
                };
                let reason = if timed_out {
                    Fallback::Timeout
                } else {
                    Fallback::ChannelError
                };
                // SAFETY: the destination range belongs to this (done) chunk; written
                // through a raw pointer so no reference to the whole posted buffer
                // exists while later chunks are in flight into other parts of it.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        region.as_ptr(),
                        p.buf.as_mut_ptr().add(p.filled),
                        len,
                    );
                }
                netdma.counters.cpu(len);
                netdma.counters.fallback(reason, len);
                p.dma_failed = true;
            }
        }
        // The copy is done: release its ring space.
        let released = socket.recv(|_| (len, ()));
        debug_assert!(released.is_ok());
        p.filled += len;
        p.inflight_bytes -= len;
        p.inflight.pop_front();
        progress = true;
    }
    progress
}
