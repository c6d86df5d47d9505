//! Retiring copies in ring order: a done copy releases its ring bytes; a failed, partial
//! or timed-out one is redone by the CPU for exactly its bytes first.

use super::read::{Posted, SocketReads};
use crate::control::NetDma;
use crate::counters::Fallback;
use crate::recv::{cancel_copy, failure, RecvError};
use crate::route::Route;
use dmaengine::{Channel, Cookie, Terminated, TxStatus};
use smoltcp::socket::tcp;
use std::time::Duration;

/// Retires the socket's copies in ring order and moves the oldest reads to `finished` as
/// they complete; with `finish`, waits for every copy.
pub(super) fn retire(
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
pub(super) fn fail_all(
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
pub(super) fn cancel_until_done(channel: &Channel, cookie: Cookie, timeout: Duration) -> TxStatus {
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
pub(super) enum Retired {
    /// Whether any copy was retired.
    Progress(bool),
    /// A failed copy's bytes are no longer at the ring's front, so it cannot be redone.
    RingLost,
}

/// Retires the copies of the oldest read, whose first chunk is at the ring's front.
pub(super) fn retire_read(
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
                // SAFETY: the source is bytes `done..dma_len` of `region`, which `peek`
                // returned exactly `dma_len` long (`done <= dma_len`: `bytes_done` is
                // checked against the length). The destination, `filled + done ..
                // filled + dma_len`, is this chunk's own range of the posted buffer
                // (`filled + len <= buf.len()`), and its copy is over (its status is
                // final), so no device writes it; later chunks target ranges past it.
                // Ring and buffer are distinct allocations. Raw pointers, so no
                // reference to the whole posted buffer exists while later chunks are in
                // flight into other parts of it.
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
