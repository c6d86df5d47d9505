//! The pipelined receive (NET_DMA's early copy, `tcp_dma_try_early_copy`): the caller
//! posts a buffer, and the pipeline fills it while it polls the stack, keeping several
//! DMA copies in flight that overlap with the protocol processing of the next segments.
//!
//! A synchronous hand-off never pays on this machine (DESIGN.md: the waiter burns what the
//! copy would have cost); only overlap does. [`Pipeline::poll`] therefore never waits for
//! a copy: it retires the ones that are done, releases their ring space, submits copies of
//! newly arrived data with one doorbell, and returns to packet processing.
//!
//! Reads queue per socket (up to [`MAX_POSTED`]) and fill in ring order, so the copies of
//! the next buffer are already in flight when the current one completes; with one buffer
//! posted at a time, every read boundary would drain the engine.
//!
//! # Buffer ownership while copies are in flight
//!
//! | memory | owner while a copy is in flight | why nobody else touches it |
//! | --- | --- | --- |
//! | the posted buffers (`Vec<u8>`s, queued per socket) | the pipeline | moved in by [`post_recv`](Pipeline::post_recv), handed back only when their copies are done; written by the CPU only through raw pointers to bytes no copy targets |
//! | the socket's receive-ring bytes under copy | the pipeline | unconsumed: smoltcp writes only *free* ring space, and they are released (`recv(|_| (n, ()))`) only after their copy is done |
//! | the socket itself | the pipeline's `SocketSet` | the pipeline never hands out `&mut` to a socket or the set, so nothing can remove a socket, `listen`/`connect` it anew (which clears the ring) or drop it while its copies are in flight; [`abort`](Pipeline::abort), [`cancel`](Pipeline::cancel), [`into_stack`](Pipeline::into_stack) and `Drop` finish or cancel the copies first |
//!
//! smoltcp can still clear a ring's indices on its own (`reset`: when a closed socket's
//! TIME-WAIT ends, or the interface loses its address; a peer's RST only closes the socket
//! and keeps its data). The bytes stay where they are, and no new data can land there
//! until the socket is set up again, which only the pipeline can do, after its copies are
//! done. The pipeline notices (fewer bytes queued than it has in flight), finishes the
//! copies and ends the socket's reads with an error.
//!
//! If the pipeline panics while copies may be in flight (a provider or smoltcp panicking
//! inside [`cancel`](Pipeline::cancel), [`into_stack`](Pipeline::into_stack) or `Drop`),
//! it leaks the posted buffers and the stack rather than free memory a device may still
//! access.
//!
//! The copies read ring bytes through pointers taken from a `peek` while, between polls,
//! smoltcp writes *other* bytes of the same storage through a fresh `&mut` to it, and the
//! release of a finished chunk (`recv(|_| (n, ()))`) hands out a `&mut` that also spans
//! later chunks' bytes, without writing them. Nothing writes a byte under copy, so there
//! is no data race; in Rust's aliasing model this is accepted by Tree Borrows (a reborrow
//! that writes none of our bytes leaves them readable) though not by the older Stacked
//! Borrows, which smoltcp's ring API gives no way to avoid short of copying. This is the
//! one place netdma relies on it.

use crate::control::{NetDma, RecvParams};
use crate::counters::Fallback;
use crate::link::Link;
use crate::recv::{cancel_copy, failure, RecvError};
use crate::route::{Route, Routed};
use crate::stack::Stack;
use dmaengine::{Channel, Cookie, SubmitError, Terminated, TxStatus};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most reads that may be posted on one socket and not yet finished.
pub const MAX_POSTED: usize = 64;

/// Why [`Pipeline::post_recv`] refused a buffer (handed back inside).
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// [`MAX_POSTED`] reads are already posted on this socket.
    #[error("{MAX_POSTED} reads are already posted on this socket")]
    QueueFull(Vec<u8>),
    /// The buffer is empty.
    #[error("the posted buffer is empty")]
    Empty(Vec<u8>),
    /// The handle names no TCP socket of this pipeline's stack.
    #[error("no TCP socket with this handle in the pipeline's stack")]
    NotATcpSocket(Vec<u8>),
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
    /// Ring bytes the chunk covers.
    len: usize,
    /// Of which DMA copies the first `dma_len` (the CPU copied the rest at submission:
    /// the `cpu_fraction` split).
    dma_len: usize,
    /// When it was submitted: a copy in flight longer than the wait timeout is cancelled.
    submitted_at: Instant,
}

/// One posted read.
struct Posted {
    buf: Vec<u8>,
    low_water: usize,
    /// Bytes copied and released from the ring.
    filled: usize,
    inflight: VecDeque<Chunk>,
    inflight_bytes: usize,
    route: Route,
    error: Option<RecvError>,
    /// The adaptive policy measures this read (see [`Meter`]); cleared if the read
    /// changes path, since its cost is then no sample of either.
    sampled: bool,
    dma_failed: bool,
    /// Bytes the engine copied (the rest went through the CPU).
    dma_bytes: usize,
}

impl Posted {
    /// Bytes of the buffer no copy has claimed yet.
    fn unclaimed(&self) -> usize {
        self.buf.len() - self.filled - self.inflight_bytes
    }

    fn is_complete(&self) -> bool {
        self.inflight.is_empty()
            && (self.filled == self.buf.len()
                || self.filled >= self.low_water
                || self.error.is_some())
    }
}

/// The reads posted on one socket, oldest first. They fill in ring order: a read claims
/// data only once every read before it has claimed its whole buffer, so the ring bytes
/// under copy are the reads' in-flight chunks, in queue order, from the ring's front.
struct SocketReads {
    handle: SocketHandle,
    reads: VecDeque<Posted>,
}

impl SocketReads {
    fn inflight_bytes(&self) -> usize {
        self.reads.iter().map(|p| p.inflight_bytes).sum()
    }

    fn inflight_chunks(&self) -> usize {
        self.reads.iter().map(|p| p.inflight.len()).sum()
    }
}

/// A [`Stack`] whose TCP reads are posted and filled by DMA while it polls.
pub struct Pipeline<L: Link> {
    /// Always `Some`, except inside `into_stack`.
    stack: Option<Stack<L>>,
    netdma: Arc<NetDma>,
    /// Sockets with reads posted (never an empty queue).
    sockets: Vec<SocketReads>,
    /// Finished reads not yet taken, oldest first.
    done: Vec<(SocketHandle, Completed)>,
    /// Scratch for the reads one poll finishes (kept to reuse its allocation).
    finished: Vec<Posted>,
    /// The adaptive policy's samples (copybreak "auto" only).
    meter: Meter,
    /// Set while reads are being finished; still set afterwards only if that panicked,
    /// and then `Drop` leaks what copies may still use.
    finishing: bool,
}

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
struct Meter {
    /// Busy nanoseconds per path (`[cpu, dma]`) since its last sample.
    busy_ns: [u64; 2],
    /// Bytes delivered per path since its last sample.
    bytes: [usize; 2],
    /// The sampled reads finished by this poll: (by DMA, bytes).
    samples: Vec<(bool, usize)>,
    /// A DMA read finished in this poll.
    dma_finished: bool,
    /// Bytes this poll moved per path (`[cpu, dma]`): copied by the CPU for CPU-routed
    /// reads, submitted (with their CPU share) for DMA-routed ones.
    moved: [usize; 2],
}

impl<L: Link> Pipeline<L> {
    /// A pipeline over `stack` routing through `netdma`.
    pub fn new(stack: Stack<L>, netdma: Arc<NetDma>) -> Self {
        Pipeline {
            stack: Some(stack),
            netdma,
            sockets: Vec::new(),
            done: Vec::new(),
            finished: Vec::new(),
            meter: Meter::default(),
            finishing: false,
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
        if self.posted(handle) > 0 {
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

    /// Reads posted on `handle` and not yet finished.
    pub fn posted(&self, handle: SocketHandle) -> usize {
        self.sockets
            .iter()
            .find(|s| s.handle == handle)
            .map_or(0, |s| s.reads.len())
    }

    /// Posts `buf` to be filled from `handle`, after the reads already posted there (up
    /// to [`MAX_POSTED`]); several posted reads keep copies in flight across read
    /// boundaries. The read completes when `buf` is full, or once at least `low_water`
    /// bytes are in and no copy is in flight (`low_water` is clamped to `1..=buf.len()`),
    /// or when the connection ends. A read takes data only once the reads before it have
    /// claimed their whole buffers, so a low-water completion only ever ends the oldest.
    /// Post on an established connection: on one that cannot receive (still listening,
    /// or closed with nothing left to read) the read ends at the next poll with the
    /// error `recv` would give.
    pub fn post_recv(
        &mut self,
        handle: SocketHandle,
        buf: Vec<u8>,
        low_water: usize,
    ) -> Result<(), PostError> {
        if buf.is_empty() {
            return Err(PostError::Empty(buf));
        }
        match self.posted(handle) {
            // A handle with reads queued was checked when the first was posted. Checked
            // here, not later: a bad handle found while copies are in flight would panic
            // in `tcp_mut` with other sockets' copies still running.
            0 if !self.is_tcp_socket(handle) => return Err(PostError::NotATcpSocket(buf)),
            n if n >= MAX_POSTED => return Err(PostError::QueueFull(buf)),
            _ => {}
        }
        let netdma = &*self.netdma;
        let params = *netdma.params.read();
        // The read side is let go at once: this read's copies start later, each batch
        // under a read side of its own (`fill`).
        let Routed {
            route,
            side: _,
            sample,
        } = netdma.route(buf.len(), &params);
        let low_water = low_water.clamp(1, buf.len());
        let read = Posted {
            buf,
            low_water,
            filled: 0,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            route,
            error: None,
            sampled: sample,
            dma_failed: false,
            dma_bytes: 0,
        };
        match self.sockets.iter_mut().find(|s| s.handle == handle) {
            Some(socket) => socket.reads.push_back(read),
            None => self.sockets.push(SocketReads {
                handle,
                reads: VecDeque::from([read]),
            }),
        }
        Ok(())
    }

    fn is_tcp_socket(&self, handle: SocketHandle) -> bool {
        self.stack()
            .sockets()
            .iter()
            .any(|(h, socket)| h == handle && matches!(socket, smoltcp::socket::Socket::Tcp(_)))
    }

    /// Takes the oldest finished read of `handle`, if there is one.
    pub fn take_completed(&mut self, handle: SocketHandle) -> Option<Completed> {
        let pos = self.done.iter().position(|(h, _)| *h == handle)?;
        Some(self.done.remove(pos).1)
    }

    /// Polls the stack, then advances every posted read without waiting: retires done
    /// copies, releases their ring space, submits copies of new data. Returns whether
    /// anything happened.
    pub fn poll(&mut self) -> bool {
        let params = *self.netdma.params.read();
        let metered = params.copybreak.is_auto();
        let start = if metered { self.netdma.clock_ns() } else { 0 };
        let mut progress = self.stack_mut().poll();
        let mut finished = std::mem::take(&mut self.finished);
        let stack = self.stack.as_mut().expect("stack present until into_stack");
        let mut i = 0;
        while i < self.sockets.len() {
            let reads = &mut self.sockets[i];
            let handle = reads.handle;
            let before = finished.len();
            progress |= advance(
                &self.netdma,
                &params,
                stack.tcp_mut(handle),
                reads,
                false,
                &mut finished,
                &mut self.meter.moved,
            );
            let empty = reads.reads.is_empty();
            for p in finished.drain(before..) {
                if metered {
                    let dma = matches!(p.route, Route::Dma(_));
                    self.meter.bytes[usize::from(dma)] += p.filled;
                    self.meter.dma_finished |= dma;
                    if p.sampled && !p.dma_failed {
                        // Failed DMA copies are not samples of what DMA costs.
                        self.meter.samples.push((dma, p.filled));
                    }
                }
                let completed = complete(&self.netdma, p);
                self.done.push((handle, completed));
            }
            if empty {
                self.sockets.swap_remove(i);
            } else {
                i += 1;
            }
        }
        self.finished = finished;
        if metered {
            self.meter_poll(start, progress);
        }
        progress
    }

    /// Charges this poll's time to the meter and records the samples of the reads it
    /// finished.
    fn meter_poll(&mut self, start: u64, progress: bool) {
        let m = &mut self.meter;
        let in_flight = self.sockets.iter().any(|s| s.inflight_chunks() > 0);
        let spent = self.netdma.clock_ns().saturating_sub(start);
        let moved = std::mem::take(&mut m.moved);
        let total = moved[0] + moved[1];
        if total > 0 {
            let cpu = (spent as u128 * moved[0] as u128 / total as u128) as u64;
            m.busy_ns[0] += cpu;
            m.busy_ns[1] += spent - cpu;
        } else if progress || in_flight {
            let path = usize::from(in_flight || m.dma_finished);
            m.busy_ns[path] += spent;
        }
        m.dma_finished = false;
        for (dma, bytes) in m.samples.drain(..) {
            let path = usize::from(dma);
            if m.bytes[path] == 0 {
                continue;
            }
            let per_byte = m.busy_ns[path] as f64 / m.bytes[path] as f64;
            self.netdma
                .adaptive
                .record(dma, bytes, (per_byte * bytes as f64) as u64);
            m.busy_ns[path] = 0;
            m.bytes[path] = 0;
        }
    }

    /// Sleeps on the link until there may be work, at most `max` (the idle loop). Does not
    /// sleep while copies are in flight (they are polled for), nor while a posted read
    /// has data waiting for it in the ring or its connection can no longer receive (the
    /// next [`poll`](Self::poll) finishes it).
    pub fn poll_wait(&mut self, max: Option<Duration>) -> std::io::Result<()> {
        let stack = self.stack.as_mut().expect("stack present until into_stack");
        for reads in &self.sockets {
            if reads.inflight_chunks() > 0 {
                return Ok(());
            }
            if reads.reads.iter().any(|p| p.unclaimed() > 0) {
                let socket = stack.tcp_mut(reads.handle);
                if socket.recv_queue() > 0 || !socket.may_recv() {
                    return Ok(());
                }
            }
        }
        self.netdma.maintain(Instant::now());
        self.stack_mut().poll_wait(max)
    }

    /// Cancels the reads posted on `handle` (see [`cancel`](Self::cancel)) and aborts
    /// the connection; returns every read of `handle` not yet taken, oldest first.
    pub fn abort(&mut self, handle: SocketHandle) -> Vec<Completed> {
        let mut reads = Vec::new();
        while let Some(done) = self.take_completed(handle) {
            reads.push(done);
        }
        reads.extend(self.cancel(handle));
        self.stack_mut().tcp_mut(handle).abort();
        reads
    }

    /// Ends the reads posted on `handle` now: waits for (or at the timeout cancels) their
    /// copies, releases their ring space, and returns them as they stand, oldest first.
    /// Reads that had already finished stay for [`take_completed`](Self::take_completed)
    /// ([`abort`](Self::abort) returns those too).
    pub fn cancel(&mut self, handle: SocketHandle) -> Vec<Completed> {
        let Some(pos) = self.sockets.iter().position(|s| s.handle == handle) else {
            return Vec::new();
        };
        let finished = self.finish_socket(pos);
        self.sockets.swap_remove(pos);
        finished
            .into_iter()
            .map(|p| complete(&self.netdma, p))
            .collect()
    }

    /// Waits for (or cancels) every copy of the reads of `self.sockets[pos]` and returns
    /// them, leaving its queue empty. The reads stay in `self.sockets` until their copies
    /// are done, and `finishing` stays set if this panics, so `Drop` leaks them then.
    fn finish_socket(&mut self, pos: usize) -> Vec<Posted> {
        self.finishing = true;
        let mut finished = Vec::new();
        let stack = self.stack.as_mut().expect("stack present until into_stack");
        let params = *self.netdma.params.read();
        let reads = &mut self.sockets[pos];
        advance(
            &self.netdma,
            &params,
            stack.tcp_mut(reads.handle),
            reads,
            true,
            &mut finished,
            &mut [0; 2],
        );
        self.finishing = false;
        finished
    }

    fn drain(&mut self) {
        if self.stack.is_none() {
            return; // into_stack already drained
        }
        while !self.sockets.is_empty() {
            let last = self.sockets.len() - 1;
            self.finish_socket(last);
            self.sockets.pop();
        }
    }
}

impl<L: Link> Drop for Pipeline<L> {
    fn drop(&mut self) {
        // The posted buffers and the sockets' rings are freed after this: finish or
        // cancel every copy into or out of them first. If that cannot be done (finishing
        // panicked, now or before), leak them instead: a device may still access them.
        let panicked_before = self.finishing;
        let mut payload = None;
        if !panicked_before {
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.drain()))
            {
                payload = Some(p);
            }
        }
        if panicked_before || payload.is_some() {
            tracing::error!("pipeline: copies may be in flight after a panic; leaking buffers");
            std::mem::forget(std::mem::take(&mut self.sockets));
            std::mem::forget(self.stack.take());
        }
        if let Some(p) = payload {
            if !std::thread::panicking() {
                std::panic::resume_unwind(p);
            }
        }
    }
}

/// Hands a finished read back, counted.
fn complete(netdma: &NetDma, p: Posted) -> Completed {
    debug_assert!(p.inflight.is_empty());
    if p.dma_bytes > 0 {
        netdma.counters.dma_read();
    } else if p.filled > 0 {
        netdma.counters.cpu_read();
    }
    Completed {
        buf: p.buf,
        len: p.filled,
        error: p.error,
    }
}

/// Advances the reads posted on one socket: retires done copies in ring order, moves
/// finished reads to `finished`, and submits copies of newly arrived data. With
/// `finish`, waits for every copy in flight, submits nothing, and moves every read to
/// `finished`. Returns whether anything happened.
fn advance(
    netdma: &NetDma,
    params: &RecvParams,
    socket: &mut tcp::Socket<'static>,
    reads: &mut SocketReads,
    finish: bool,
    finished: &mut Vec<Posted>,
    moved: &mut [usize; 2],
) -> bool {
    let mut progress = retire(netdma, socket, reads, finish, params.timeout, finished);
    if finish {
        finished.extend(reads.reads.drain(..));
        return progress;
    }
    // Fill the reads in order, each from where the copies of the ones before it end.
    let mut chunks = reads.inflight_chunks();
    let mut ahead = 0; // ring bytes claimed by the reads before this one
    for p in reads.reads.iter_mut() {
        if p.unclaimed() > 0 {
            progress |= fill(netdma, socket, p, ahead, &mut chunks, params, moved);
            if p.unclaimed() > 0 || p.error.is_some() {
                break; // the next read starts where this one ends, which is not known yet
            }
        }
        ahead += p.inflight_bytes;
    }
    // A read the CPU filled, or one that found the connection ended, is finished now.
    while reads.reads.front().is_some_and(Posted::is_complete) {
        finished.extend(reads.reads.pop_front());
    }
    progress
}

/// Claims newly arrived data for `p`, whose bytes start `ahead` bytes into the ring:
/// submits DMA copies (one doorbell for the batch), or copies with the CPU when the read
/// is routed there and nothing before it is in flight. `chunks` counts the socket's
/// copies in flight.
fn fill(
    netdma: &NetDma,
    socket: &mut tcp::Socket<'static>,
    p: &mut Posted,
    ahead: usize,
    chunks: &mut usize,
    params: &RecvParams,
    moved: &mut [usize; 2],
) -> bool {
    if p.error.is_some() {
        return false;
    }
    if matches!(p.route, Route::Dma(_)) && !netdma.is_enabled() {
        // Disabled meanwhile: no new copies; once the last one retires, the CPU goes on.
        if *chunks > 0 {
            return false;
        }
        p.route = Route::Cpu(Some(Fallback::Disabled));
        p.sampled = false; // no sample of either path any more
    }
    let channel = match &p.route {
        Route::Cpu(reason) => {
            if *chunks > 0 {
                return false; // bytes before this read's are still under copy
            }
            // Only the CPU copies now: straight from the ring, nothing held.
            let end = p.buf.len();
            return match socket.recv_slice(&mut p.buf[p.filled..end]) {
                Ok(n) if n > 0 => {
                    moved[0] += n;
                    netdma.counters.cpu(n);
                    if let Some(reason) = reason {
                        netdma.counters.fallback(*reason, n);
                    }
                    p.filled += n;
                    true
                }
                Ok(_) => false,
                Err(e) => {
                    p.error = Some(e.into());
                    true
                }
            };
        }
        Route::Dma(channel) => channel.clone(),
    };
    if *chunks >= params.max_inflight {
        return false;
    }
    let remaining = p.unclaimed();
    let start = ahead + p.inflight_bytes; // where this read's unclaimed bytes begin
    let queued = socket.recv_queue();
    let region = match socket.peek(start + remaining) {
        Ok(region) => region,
        Err(e) => {
            // Only an empty ring errs (an end of stream or a closed socket), so nothing is
            // in flight: this is the oldest read, and the connection ended under it.
            if *chunks == 0 {
                p.error = Some(e.into());
                return true;
            }
            return false;
        }
    };
    let Some(new) = region.len().checked_sub(start).filter(|&n| n > 0) else {
        return false;
    };
    let wrapped = queued > region.len();
    // Batch: wait for a full chunk while copies are in flight, unless the data stops at
    // the ring's end or fills the buffer.
    if new < params.chunk_size && *chunks > 0 && !wrapped && new < remaining {
        return false;
    }
    // Copies start only under a read side (see `route`), so `disable` never drops the
    // client under a copy that is just starting. A read with nothing in flight takes
    // this CPU's channel now (the CPU may have changed, the client may have been taken
    // again after an idle release); one with copies in flight keeps the channel they are
    // on, since its chunks retire in order on one channel.
    let (side, fresh) = match netdma.dma_channel() {
        Ok(found) => found,
        // `disable` holds or waits for the write side: nothing new starts, and once the
        // copies in flight retire the read goes on with the CPU.
        Err(_) if *chunks > 0 => return false,
        Err(reason) => {
            p.route = Route::Cpu(Some(reason));
            p.sampled = false;
            return true;
        }
    };
    let channel = if p.inflight.is_empty() {
        p.route = Route::Dma(fresh.clone());
        fresh
    } else {
        channel
    };
    let src_base = region.as_ptr();
    let now = Instant::now();
    let first_new = p.inflight.len();
    let mut offset = 0; // into the new bytes
    let mut submitted = false;
    while offset < new && *chunks < params.max_inflight {
        let len = (new - offset).min(params.chunk_size);
        // The `cpu_fraction` split: the CPU copies the chunk's tail once the doorbell
        // has rung, while the engine copies the head.
        let cpu_len = ((len as f64 * params.cpu_fraction) as usize).min(len);
        let dma_len = len - cpu_len;
        let src_off = start + offset;
        let dst_off = p.filled + p.inflight_bytes;
        // SAFETY: `src` lies inside `region` (src_off + dma_len <= start + new ==
        // region.len()), bytes that stay unconsumed in the ring until this chunk is
        // retired, and the pipeline keeps the socket from being cleared or dropped
        // meanwhile (module docs). `dst` lies inside the posted Vec (dst_off + len <=
        // buf.len(), since new <= remaining), which the pipeline owns until the chunk is
        // done and writes nowhere else a copy targets; Vec's heap pointer is stable. Ring
        // and Vec are distinct allocations, so the ranges do not overlap.
        let (src, dst) = unsafe { (src_base.add(src_off), p.buf.as_mut_ptr().add(dst_off)) };
        // SAFETY: `memcpy_raw` needs both ranges valid, and left alone by everyone else,
        // until the copy is done. The source range is unconsumed ring bytes inside
        // `region`: smoltcp writes only the ring's free space, and only the pipeline can
        // clear or drop the socket, which it does only after finishing its copies; the
        // bytes are released when this chunk retires, not before. The destination range
        // is inside the posted buffer, owned by the pipeline until the chunk retires,
        // and no other copy or CPU write targets these bytes (each chunk gets its own
        // range, and the CPU share below writes past `dma_len`).
        let result = unsafe { channel.memcpy_raw(dst, src, dma_len) };
        let cookie = match result {
            Ok(cookie) => {
                netdma.counters.in_flight_add(dma_len);
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
                        src_base.add(src_off),
                        p.buf.as_mut_ptr().add(dst_off),
                        dma_len,
                    );
                }
                netdma.counters.cpu(dma_len);
                netdma.counters.fallback(reason, dma_len);
                p.dma_failed = true;
                None
            }
        };
        p.inflight.push_back(Chunk {
            cookie,
            len,
            dma_len,
            submitted_at: now,
        });
        p.inflight_bytes += len;
        *chunks += 1;
        offset += len;
        moved[1] += len;
    }
    if submitted {
        channel.issue_pending(); // one doorbell for the batch
    }
    drop(side); // the batch is counted in flight: `disable` waits for it from here
                // The CPU's share of each new chunk, while the engine copies the rest.
    let mut src_off = start;
    let mut dst_off = p.filled + p.inflight_bytes - offset;
    for chunk in p.inflight.range(first_new..) {
        let cpu_len = chunk.len - chunk.dma_len;
        if cpu_len > 0 {
            // SAFETY: the chunk's tail, past the bytes its DMA copy reads and writes:
            // inside `region` and the posted Vec as argued above, written through a raw
            // pointer as in the fallback above.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src_base.add(src_off + chunk.dma_len),
                    p.buf.as_mut_ptr().add(dst_off + chunk.dma_len),
                    cpu_len,
                );
            }
            netdma.counters.cpu(cpu_len);
        }
        src_off += chunk.len;
        dst_off += chunk.len;
    }
    true
}

/// Retires the socket's copies in ring order and moves the oldest reads to `finished` as
/// they complete; with `finish`, waits for every copy.
fn retire(
    netdma: &NetDma,
    socket: &mut tcp::Socket<'static>,
    reads: &mut SocketReads,
    finish: bool,
    timeout: Duration,
    finished: &mut Vec<Posted>,
) -> bool {
    if socket.recv_queue() < reads.inflight_bytes() {
        // smoltcp cleared the ring's indices under the copies (module docs).
        fail_all(netdma, reads, timeout, finished);
        return true;
    }
    let mut progress = false;
    while let Some(p) = reads.reads.front_mut() {
        match retire_read(netdma, socket, p, finish, timeout) {
            Retired::Progress(made) => progress |= made,
            Retired::RingLost => {
                fail_all(netdma, reads, timeout, finished);
                return true;
            }
        }
        if !p.inflight.is_empty() || !(finish || p.is_complete()) {
            break;
        }
        finished.extend(reads.reads.pop_front());
        progress = true;
    }
    progress
}

/// The ring no longer holds the bytes in flight: finishes every copy (so the memory is
/// free) and ends every read of the socket with what it had released.
fn fail_all(
    netdma: &NetDma,
    reads: &mut SocketReads,
    timeout: Duration,
    finished: &mut Vec<Posted>,
) {
    for p in reads.reads.iter_mut() {
        if let Route::Dma(channel) = &p.route {
            for chunk in p.inflight.drain(..) {
                if let Some(cookie) = chunk.cookie {
                    if let Err(dmaengine::WaitError::Timeout { .. }) = channel.wait(cookie, timeout)
                    {
                        cancel_until_done(channel, cookie, timeout);
                    }
                    netdma.counters.in_flight_sub(chunk.dma_len);
                }
            }
        }
        p.inflight.clear();
        p.inflight_bytes = 0;
        p.error = Some(RecvError::InvalidState);
    }
    finished.extend(reads.reads.drain(..));
}

/// Cancels a timed-out copy that must be done before the caller goes on (finishing a
/// read, or a ring that lost its bytes): waits past the cancellation's bound if the
/// device does not confirm in time, since the copy's memory stays lent to it until then.
fn cancel_until_done(channel: &Channel, cookie: Cookie, timeout: Duration) -> TxStatus {
    if cancel_copy(channel, cookie, timeout) != Terminated::Pending {
        return channel.status(cookie).unwrap_or(TxStatus::Error);
    }
    loop {
        match channel.wait(cookie, timeout) {
            Ok(()) => return TxStatus::Complete,
            Err(dmaengine::WaitError::Timeout { .. }) => {
                tracing::error!(%cookie, "DMA device does not let go of a cancelled copy; waiting");
            }
            Err(_) => return TxStatus::Error,
        }
    }
}

/// What retiring the oldest read's copies found.
enum Retired {
    /// Whether any copy was retired.
    Progress(bool),
    /// A failed copy's bytes are no longer at the ring's front, so it cannot be redone.
    RingLost,
}

/// Retires the copies of the oldest read, whose first chunk is at the ring's front.
fn retire_read(
    netdma: &NetDma,
    socket: &mut tcp::Socket<'static>,
    p: &mut Posted,
    finish: bool,
    timeout: Duration,
) -> Retired {
    let Route::Dma(channel) = &p.route else {
        return Retired::Progress(false);
    };
    let channel = channel.clone();
    let mut progress = false;
    while let Some(front) = p.inflight.front() {
        let (len, dma_len) = (front.len, front.dma_len);
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
                    // Stuck for a whole wait timeout: cancel this copy alone (other
                    // reads' copies on the channel go on), then the CPU redoes it.
                    if cancel_copy(&channel, cookie, timeout) == Terminated::Pending {
                        break; // not confirmed: still the device's; tried again next poll
                    }
                    // Redone by the CPU whatever the device finally did with it, as
                    // `recv` does: the read's data must not wait on it any longer.
                    timed_out = true;
                    TxStatus::Error
                } else {
                    match channel.wait(cookie, timeout) {
                        Ok(()) => TxStatus::Complete,
                        Err(dmaengine::WaitError::Timeout { .. }) => {
                            timed_out = true;
                            cancel_until_done(&channel, cookie, timeout);
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
            if status != TxStatus::Complete {
                // A partial completion (a DSA page fault) leaves a final prefix: the CPU
                // copies exactly the rest.
                let partial = front
                    .cookie
                    .and_then(|c| channel.bytes_done(c).ok().flatten())
                    .filter(|&d| d <= dma_len);
                let done = partial.unwrap_or(0);
                // Redo exactly this chunk's DMA part from the ring, still unconsumed at
                // its front.
                let region = match socket.peek(dma_len) {
                    Ok(region) if region.len() == dma_len => region,
                    // Cannot happen while the ring holds every byte in flight (checked
                    // before retiring); if it did, the chunk's data is gone.
                    _ => return Retired::RingLost,
                };
                // SAFETY: the destination range belongs to this (done) chunk; written
                // through a raw pointer so no reference to the whole posted buffer
                // exists while later chunks are in flight into other parts of it.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        region.as_ptr().add(done),
                        p.buf.as_mut_ptr().add(p.filled + done),
                        dma_len - done,
                    );
                }
                let reason = match front.cookie {
                    _ if partial.is_some() => Fallback::Partial,
                    _ if timed_out => Fallback::Timeout,
                    Some(cookie) => failure(&channel, cookie),
                    None => Fallback::ChannelError,
                };
                netdma.counters.dma(done);
                p.dma_bytes += done;
                netdma.counters.cpu(dma_len - done);
                netdma.counters.fallback(reason, dma_len - done);
                p.dma_failed = true;
            } else {
                netdma.counters.dma(dma_len);
                p.dma_bytes += dma_len;
            }
            netdma.counters.in_flight_sub(dma_len);
        }
        // The copy is done: release its ring space.
        let released = socket.recv(|_| (len, ()));
        debug_assert!(released.is_ok());
        p.filled += len;
        p.inflight_bytes -= len;
        p.inflight.pop_front();
        progress = true;
    }
    Retired::Progress(progress)
}
