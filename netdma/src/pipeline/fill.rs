//! Posting's other half: claiming newly arrived ring data for the posted reads, by DMA
//! (one doorbell per batch, under a read side) or by the CPU.

use super::read::{Chunk, Posted, SocketReads};
use super::retire::retire;
use crate::control::{NetDma, RecvParams};
use crate::counters::Fallback;
use crate::route::Route;
use dmaengine::SubmitError;
use smoltcp::socket::tcp;
use std::time::Instant;

/// Advances the reads posted on one socket: retires done copies in ring order, moves
/// finished reads to `finished`, and submits copies of newly arrived data. With
/// `finish`, waits for every copy in flight, submits nothing, and moves every read to
/// `finished`. Returns whether anything happened.
pub(super) fn advance(
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
pub(super) fn fill(
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
                // SAFETY: the submission failed, so no device touches these ranges.
                // `src..src + dma_len` lies inside `region` and `dst..dst + dma_len` inside
                // the posted buffer (both checked where the pointers were made); ring and
                // buffer are distinct allocations, so they do not overlap; and no copy in
                // flight targets this chunk's range of the buffer, since every chunk has a
                // range of its own. Raw pointers, so no reference to the whole buffer
                // exists while the device writes other parts of it.
                unsafe { std::ptr::copy_nonoverlapping(src, dst, dma_len) };
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
            // SAFETY: the chunk's tail. Source: `src_off + chunk.len <= start + new ==
            // region.len()`, so it lies inside `region`. Destination: `dst_off +
            // chunk.len <= filled + inflight_bytes <= buf.len()`, inside the posted buffer.
            // The chunk's DMA copy reads and writes only its first `dma_len` bytes and
            // other chunks have ranges of their own, so nothing else touches these bytes;
            // ring and buffer are distinct allocations. Raw pointers, so no reference to
            // the whole buffer exists while the device writes other parts of it.
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
