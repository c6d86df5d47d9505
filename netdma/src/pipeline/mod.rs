//! The pipelined receive (NET_DMA's early copy, `tcp_dma_try_early_copy`): the caller
//! posts a buffer, and the pipeline fills it while it polls the stack, keeping several
//! DMA copies in flight that overlap with the protocol processing of the next segments.
//!
//! A synchronous hand-off cannot pay on a machine where the copy is as fast as the CPU's:
//! the waiter burns what the copy would have cost. Only overlap can. [`Pipeline::poll`] therefore never waits for
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
//! | the socket itself | the pipeline's `SocketSet` | the pipeline never hands out `&mut` to a socket or the set, so nothing can remove a socket, `listen`/`connect` it anew (which clears the ring) or drop it while its copies are in flight; [`abort`](Pipeline::abort), [`cancel`](Pipeline::cancel), [`into_driver`](Pipeline::into_driver) and `Drop` finish or cancel the copies first |
//!
//! smoltcp can still clear a ring's indices on its own (`reset`: when a closed socket's
//! TIME-WAIT ends, or the interface loses its address; a peer's RST only closes the socket
//! and keeps its data). The bytes stay where they are, and no new data can land there
//! until the socket is set up again, which only the pipeline can do, after its copies are
//! done. The pipeline notices (fewer bytes queued than it has in flight), finishes the
//! copies and ends the socket's reads with an error.
//!
//! If the pipeline panics while copies may be in flight (a provider or smoltcp panicking
//! inside [`cancel`](Pipeline::cancel), [`into_driver`](Pipeline::into_driver) or `Drop`),
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

// The stages: `read` (a posted read's state), `fill` (claiming new ring data: DMA
// submission or CPU copy), `retire` (done copies release their ring bytes; failed ones are
// redone by the CPU), `meter` (what each path costs, for the adaptive policy).
mod driver;
mod fill;
mod meter;
mod read;
mod retire;

pub use self::driver::{Driver, Parts, PARTS_MAX_NAP};

use self::fill::advance;
use self::meter::Meter;
use self::read::{Posted, SocketReads};
use crate::control::NetDma;
use crate::recv::RecvError;
use crate::route::Routed;
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

/// A smoltcp socket set ([`Driver`]) whose TCP reads are posted and filled by DMA while
/// it polls.
pub struct Pipeline<S: Driver> {
    /// Always `Some`, except inside `into_driver`.
    driver: Option<S>,
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

impl<S: Driver> Pipeline<S> {
    /// A pipeline over `driver` (a netdma [`Stack`](crate::stack::Stack), or your own
    /// smoltcp pieces in [`Parts`]) routing through `netdma`.
    pub fn new(driver: S, netdma: Arc<NetDma>) -> Self {
        Pipeline {
            driver: Some(driver),
            netdma,
            sockets: Vec::new(),
            done: Vec::new(),
            finished: Vec::new(),
            meter: Meter::default(),
            finishing: false,
        }
    }

    /// The driver, read-only (mutable access would let a socket be removed under a
    /// copy).
    pub fn driver(&self) -> &S {
        self.driver
            .as_ref()
            .expect("driver present until into_driver")
    }

    fn driver_mut(&mut self) -> &mut S {
        self.driver
            .as_mut()
            .expect("driver present until into_driver")
    }

    /// Finishes every posted read (waiting for, or at the timeout cancelling, its copies;
    /// finished reads are dropped) and returns the driver.
    pub fn into_driver(mut self) -> S {
        self.drain();
        self.driver
            .take()
            .expect("driver present until into_driver")
    }

    /// The offload.
    pub fn netdma(&self) -> &Arc<NetDma> {
        &self.netdma
    }

    /// Adds a TCP socket with the given buffer sizes.
    pub fn add_tcp_socket(&mut self, rx_bytes: usize, tx_bytes: usize) -> SocketHandle {
        self.driver_mut().add_tcp_socket(rx_bytes, tx_bytes)
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
        Some(f(self.driver_mut().tcp_mut(handle)))
    }

    /// Queues data to send on `handle` (safe with a read posted: sending never touches
    /// the receive ring).
    pub fn send(&mut self, handle: SocketHandle, data: &[u8]) -> Result<usize, tcp::SendError> {
        self.driver_mut().tcp_mut(handle).send_slice(data)
    }

    /// The socket's TCP state.
    pub fn state(&mut self, handle: SocketHandle) -> tcp::State {
        self.driver_mut().tcp_mut(handle).state()
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
        self.driver()
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
        let mut progress = self.driver_mut().poll();
        let mut finished = std::mem::take(&mut self.finished);
        let stack = self
            .driver
            .as_mut()
            .expect("driver present until into_driver");
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
                    self.meter.finished(&p);
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
            let in_flight = self.sockets.iter().any(|s| s.inflight_chunks() > 0);
            self.meter.charge(&self.netdma, start, progress, in_flight);
        }
        progress
    }

    /// Sleeps on the link until there may be work, at most `max` (the idle loop). Does not
    /// sleep while copies are in flight (they are polled for), nor while a posted read
    /// has data waiting for it in the ring or its connection can no longer receive (the
    /// next [`poll`](Self::poll) finishes it).
    pub fn poll_wait(&mut self, max: Option<Duration>) -> std::io::Result<()> {
        let stack = self
            .driver
            .as_mut()
            .expect("driver present until into_driver");
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
        self.netdma.release_if_idle(Instant::now());
        self.driver_mut().poll_wait(max)
    }

    /// Cancels the reads posted on `handle` (see [`cancel`](Self::cancel)) and aborts
    /// the connection; returns every read of `handle` not yet taken, oldest first.
    pub fn abort(&mut self, handle: SocketHandle) -> Vec<Completed> {
        let mut reads = Vec::new();
        while let Some(done) = self.take_completed(handle) {
            reads.push(done);
        }
        reads.extend(self.cancel(handle));
        self.driver_mut().tcp_mut(handle).abort();
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
        let stack = self
            .driver
            .as_mut()
            .expect("driver present until into_driver");
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
        if self.driver.is_none() {
            return; // into_driver already drained
        }
        while !self.sockets.is_empty() {
            let last = self.sockets.len() - 1;
            self.finish_socket(last);
            self.sockets.pop();
        }
    }
}

impl<S: Driver> Drop for Pipeline<S> {
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
            std::mem::forget(self.driver.take());
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
