//! The ring hand-off: what offloading a copy costs the core that fills the ring.
//!
//! The measuring thread plays smoltcp's receive side: it writes 64 KiB blocks into a
//! 1 MiB ring (the socket's receive ring, filled from packets), and then either copies
//! each block out itself (the CPU path), hands it to a DMA channel with up to 8 copies in
//! flight (the pipelined path), or drops it (the floor). It times its ring writes apart
//! from the rest. When the engine is a thread on another core, the ring's cache lines it
//! read are shared with that core, and rewriting them costs the filling core a
//! cross-core invalidation per line: the copy moves off the receiving core, and part of
//! its cost comes back in the writes.

use dmaengine::{Cap, Cookie, Engine, PrivateChannel, SoftwareDevice};
use serde::Serialize;
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// Block (one copy) size: 64 KiB.
pub const BLOCK: usize = 64 * 1024;
/// Ring size: 1 MiB, the benchmark's socket buffer.
pub const RING: usize = 1024 * 1024;
/// Copies in flight on the DMA path.
pub const INFLIGHT: usize = 8;

/// What happens to a block once it is in the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum HandoffMode {
    /// Nothing: the floor.
    #[serde(rename = "floor")]
    Floor,
    /// The filling thread copies it out.
    #[serde(rename = "cpu")]
    Cpu,
    /// A DMA channel copies it out, up to [`INFLIGHT`] in flight.
    #[serde(rename = "dma")]
    Dma,
}

impl HandoffMode {
    /// Every mode, in the order a round runs them.
    pub const ALL: [HandoffMode; 3] = [HandoffMode::Floor, HandoffMode::Cpu, HandoffMode::Dma];
}

impl fmt::Display for HandoffMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandoffMode::Floor => "floor",
            HandoffMode::Cpu => "cpu",
            HandoffMode::Dma => "dma",
        })
    }
}

/// One measured run: the filling thread's nanoseconds per block.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct HandoffRun {
    /// Writing the block into the ring.
    pub write_ns: f64,
    /// Everything else: the CPU copy, or submitting, issuing and retiring the DMA copy.
    pub other_ns: f64,
}

impl HandoffRun {
    /// The filling thread's whole time per block.
    pub fn total_ns(&self) -> f64 {
        self.write_ns + self.other_ns
    }
}

/// The ring, the destination buffers and a private channel.
///
/// The ring and the destinations are owned through raw pointers (from `Box::into_raw`,
/// freed in `Drop` after the last copy) and never reached through a reference while a
/// copy is in flight, so the engine's reads and writes alias nothing the thread holds.
pub struct HandoffBed {
    _engine: Engine,
    channel: PrivateChannel,
    packet: Vec<u8>,
    ring_base: *mut u8,
    dst_base: *mut u8,
    /// Copies in flight: (cookie, block number).
    inflight: VecDeque<(Cookie, usize)>,
    block: usize,
}

impl fmt::Debug for HandoffBed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandoffBed")
            .field("block", &self.block)
            .finish_non_exhaustive()
    }
}

impl HandoffBed {
    /// A software DMA device with one channel (its worker spinning `spin` before parking).
    pub fn new(spin: Duration) -> Result<HandoffBed, String> {
        let engine = Engine::new();
        engine
            .register_device(
                SoftwareDevice::builder()
                    .channels(1)
                    .spin(spin)
                    .name("handoff")
                    .build(),
            )
            .map_err(|e| e.to_string())?;
        let channel = engine
            .request_channel(Cap::Memcpy.into(), |_| true)
            .map_err(|e| e.to_string())?;
        Ok(HandoffBed {
            _engine: engine,
            channel,
            packet: (0..BLOCK).map(|i| (i % 253) as u8).collect(),
            ring_base: Box::into_raw(vec![0u8; RING].into_boxed_slice()).cast(),
            dst_base: Box::into_raw(vec![0u8; INFLIGHT * BLOCK].into_boxed_slice()).cast(),
            inflight: VecDeque::with_capacity(INFLIGHT),
            block: 0,
        })
    }

    /// Streams `blocks` blocks through the ring with `mode`.
    pub fn run(&mut self, mode: HandoffMode, blocks: usize) -> HandoffRun {
        let (mut write_ns, mut other_ns) = (0u64, 0u64);
        for _ in 0..blocks {
            let b = self.block;
            self.block += 1;
            let ring_off = (b * BLOCK) % RING;
            let dst_off = (b % INFLIGHT) * BLOCK;
            let t0 = Instant::now();
            // The ring slot was last copied out by block b - RING/BLOCK, and the
            // destination slot by block b - INFLIGHT: retire copies until both are done.
            while self
                .inflight
                .front()
                .is_some_and(|&(_, old)| old + INFLIGHT <= b)
            {
                self.retire_front();
            }
            let t1 = Instant::now();
            self.packet[0] = b as u8; // a new packet every time
                                      // SAFETY: BLOCK bytes at a multiple of BLOCK below RING: inside the ring. No
                                      // copy in flight reads this slot: it was last copied out RING/BLOCK blocks
                                      // ago, and the loop above retired every copy INFLIGHT blocks old.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.packet.as_ptr(),
                    self.ring_base.add(ring_off),
                    BLOCK,
                )
            };
            let t2 = Instant::now();
            // SAFETY (both): BLOCK bytes inside the ring and inside `dst` (offsets are
            // multiples of BLOCK below their lengths), distinct allocations. Neither range
            // is touched until the copy is retired: the ring slot is rewritten RING/BLOCK
            // blocks later and the destination slot INFLIGHT blocks later, after the loop
            // above retired it; `finish` (also run by `Drop`) retires the rest before the
            // buffers can be freed or read.
            let (src, dst) = unsafe { (self.ring_base.add(ring_off), self.dst_base.add(dst_off)) };
            match mode {
                HandoffMode::Floor => {}
                // SAFETY: `src` and `dst` are BLOCK bytes inside the ring and inside `dst`,
                // two live, distinct allocations, and no copy in flight touches either (the
                // loop above retired them), so the CPU may copy.
                HandoffMode::Cpu => unsafe { std::ptr::copy_nonoverlapping(src, dst, BLOCK) },
                HandoffMode::Dma => {
                    // SAFETY: `memcpy_raw` needs both ranges valid and left alone until the
                    // copy retires: they are BLOCK bytes inside two live allocations; the ring
                    // slot is rewritten RING/BLOCK blocks later and the destination slot
                    // INFLIGHT blocks later, after this copy was retired; `finish` (also run
                    // by Drop) retires the rest before either buffer is freed.
                    match unsafe { self.channel.memcpy_raw(dst, src, BLOCK) } {
                        Ok(cookie) => {
                            self.channel.issue_pending();
                            self.inflight.push_back((cookie, b));
                        }
                        // SAFETY: the submission failed, so no device touches the ranges:
                        // BLOCK bytes inside two live, distinct allocations.
                        Err(_) => unsafe { std::ptr::copy_nonoverlapping(src, dst, BLOCK) },
                    }
                }
            }
            let t3 = Instant::now();
            write_ns += (t2 - t1).as_nanos() as u64;
            other_ns += ((t1 - t0) + (t3 - t2)).as_nanos() as u64;
        }
        let t = Instant::now();
        self.finish();
        other_ns += t.elapsed().as_nanos() as u64;
        let n = blocks.max(1) as f64;
        HandoffRun {
            write_ns: write_ns as f64 / n,
            other_ns: other_ns as f64 / n,
        }
    }

    /// Whether the last `INFLIGHT` blocks arrived intact (after a run, which leaves no
    /// copy in flight).
    pub fn verify(&self) -> bool {
        debug_assert!(self.inflight.is_empty());
        let last = self.block;
        // SAFETY: the destinations' allocation, INFLIGHT * BLOCK bytes, initialized; no
        // copy is in flight, so nothing writes it while the slice lives.
        let dst = unsafe { std::slice::from_raw_parts(self.dst_base, INFLIGHT * BLOCK) };
        (last.saturating_sub(INFLIGHT)..last).all(|b| {
            let dst_off = (b % INFLIGHT) * BLOCK;
            let d = &dst[dst_off..dst_off + BLOCK];
            d[0] == b as u8 && d[1..] == self.packet[1..]
        })
    }

    fn retire_front(&mut self) {
        let Some((cookie, b)) = self.inflight.pop_front() else {
            return;
        };
        if self.channel.wait(cookie, Duration::from_secs(5)).is_err() {
            // The device is done with the buffers after this; the CPU redoes the copy.
            self.channel.terminate_all();
            let ring_off = (b * BLOCK) % RING;
            let dst_off = (b % INFLIGHT) * BLOCK;
            // SAFETY: the block's ranges, as in `run`; its copy is over (terminated).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.ring_base.add(ring_off),
                    self.dst_base.add(dst_off),
                    BLOCK,
                )
            };
        }
    }

    /// Retires every copy in flight.
    pub fn finish(&mut self) {
        while !self.inflight.is_empty() {
            self.retire_front();
        }
    }

    /// Zeroes the destinations (between runs, when no copy is in flight).
    pub fn clear_destinations(&mut self) {
        self.finish();
        // SAFETY: the destinations' allocation; no copy in flight after `finish`.
        unsafe { std::ptr::write_bytes(self.dst_base, 0, INFLIGHT * BLOCK) };
    }
}

impl Drop for HandoffBed {
    fn drop(&mut self) {
        // No copy may still use the buffers once they are freed.
        self.finish();
        // SAFETY: both pointers came from `Box::into_raw` of boxed slices of exactly
        // these lengths, are freed only here, and no copy is in flight any more.
        unsafe {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.ring_base,
                RING,
            )));
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.dst_base,
                INFLIGHT * BLOCK,
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_streams_the_blocks_intact() {
        let mut bed = HandoffBed::new(Duration::from_micros(20)).unwrap();
        for mode in [HandoffMode::Cpu, HandoffMode::Dma] {
            bed.clear_destinations();
            let run = bed.run(mode, 3 * RING / BLOCK);
            assert!(run.write_ns > 0.0, "{mode}");
            assert!(bed.verify(), "{mode}");
        }
        bed.clear_destinations();
        bed.run(HandoffMode::Floor, 4);
        assert!(!bed.verify(), "the floor copies nothing");
    }
}
