//! CPU memcpy against the software DMA device: synchronous (submit + wait), pipelined
//! (several copies in flight, one doorbell), and a CPU/DMA split of one copy; over hot
//! buffers (the same bytes every time) or cold ones (rotating over a pool larger than the
//! last-level cache), on 1..N channels.

use dmaengine::{Cap, Cookie, Engine, PrivateChannel, SoftwareDevice};
use serde::Serialize;
use std::fmt;
use std::time::{Duration, Instant};

/// How a copy is done.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum CopyMode {
    /// `copy_from_slice` on the calling thread.
    Cpu,
    /// One copy, split evenly over the channels, submitted, issued and waited for.
    DmaSync,
    /// `inflight` copies of the size submitted round robin over the channels, one doorbell
    /// per channel, then all waited for.
    DmaPipelined {
        /// Copies in flight.
        inflight: usize,
    },
    /// One copy: the tail share `cpu_fraction` by the CPU while DMA copies the head.
    DmaSplit {
        /// The CPU's share, `0.0..1.0`.
        cpu_fraction: f64,
    },
}

impl CopyMode {
    /// Bytes one [`CopyBed::run`] of `size` moves.
    pub fn bytes_per_op(self, size: usize) -> usize {
        match self {
            CopyMode::DmaPipelined { inflight } => size * inflight.max(1),
            _ => size,
        }
    }
}

impl fmt::Display for CopyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CopyMode::Cpu => f.write_str("cpu"),
            CopyMode::DmaSync => f.write_str("dma-sync"),
            CopyMode::DmaPipelined { inflight } => write!(f, "dma-pipelined-{inflight}"),
            CopyMode::DmaSplit { cpu_fraction } => write!(f, "dma-split-{cpu_fraction}"),
        }
    }
}

/// Whether the buffers are in cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Temp {
    /// The same source and destination every time.
    Hot,
    /// Rotating over a pool larger than the last-level cache.
    Cold,
}

impl fmt::Display for Temp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Temp::Hot => "hot",
            Temp::Cold => "cold",
        })
    }
}

/// The last-level cache size from sysfs (largest `cpu0` cache), or 32 MiB if unknown.
pub fn llc_bytes() -> usize {
    let mut best = 0;
    for i in 0..8 {
        let path = format!("/sys/devices/system/cpu/cpu0/cache/index{i}/size");
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let t = text.trim();
        let (num, mul) = match t.chars().last() {
            Some('K') => (&t[..t.len() - 1], 1024),
            Some('M') => (&t[..t.len() - 1], 1024 * 1024),
            _ => (t, 1),
        };
        if let Ok(n) = num.parse::<usize>() {
            best = best.max(n * mul);
        }
    }
    if best == 0 {
        32 * crate::MIB
    } else {
        best
    }
}

/// Page alignment of rotated offsets.
const ALIGN: usize = 4096;

/// Channels and buffers for copy measurements. The channels are private (requested
/// exclusively), so `channels` distinct ones are used whatever CPU the caller is on.
pub struct CopyBed {
    channels: Vec<PrivateChannel>,
    engine: Engine,
    src: Vec<u8>,
    dst: Vec<u8>,
    cursor: usize,
    cookies: Vec<(usize, Cookie, usize, usize)>,
    jobs: Vec<(usize, usize)>,
    timeout: Duration,
}

impl fmt::Debug for CopyBed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CopyBed")
            .field("channels", &self.channels.len())
            .field("pool", &self.src.len())
            .finish()
    }
}

impl CopyBed {
    /// A software DMA device with `channels` channels (workers spinning `spin` before
    /// parking) and source/destination pools of `pool_bytes` each (touched, so no page
    /// faults are measured).
    pub fn new(channels: usize, pool_bytes: usize, spin: Duration) -> Result<CopyBed, String> {
        let channels = channels.max(1);
        let engine = Engine::new();
        engine
            .register_device(
                SoftwareDevice::builder()
                    .channels(channels)
                    .ring_size(1024)
                    .spin(spin)
                    .build(),
            )
            .map_err(|e| e.to_string())?;
        let channels = (0..channels)
            .map(|_| {
                engine
                    .request_channel(Cap::Memcpy.into(), |_| true)
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pool = pool_bytes.max(ALIGN * 2);
        let src: Vec<u8> = (0..pool).map(|i| (i % 251) as u8).collect();
        let dst = vec![1u8; pool];
        Ok(CopyBed {
            channels,
            engine,
            src,
            dst,
            cursor: 0,
            cookies: Vec::with_capacity(64),
            jobs: Vec::with_capacity(64),
            timeout: Duration::from_secs(5),
        })
    }

    /// The default pool for cold buffers: twice the last-level cache, at least 32 MiB.
    pub fn cold_pool_bytes() -> usize {
        (2 * llc_bytes()).max(32 * crate::MIB)
    }

    /// The number of channels.
    pub fn channels(&self) -> usize {
        self.channels.len()
    }

    /// The engine (for counters).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The largest `inflight` a pipelined run of `size` can use in this pool.
    pub fn max_inflight(&self, size: usize) -> usize {
        (self.src.len() / align_up(size)).max(1)
    }

    /// The offset of the next buffer of `size`: always 0 when hot, rotating when cold.
    fn next_offset(&mut self, size: usize, temp: Temp, slot: usize) -> usize {
        let step = align_up(size);
        match temp {
            Temp::Hot => (slot * step) % (self.src.len() - size + 1).max(1),
            Temp::Cold => {
                if self.cursor + step > self.src.len() {
                    self.cursor = 0;
                }
                let off = self.cursor;
                self.cursor += step;
                off
            }
        }
    }

    /// One operation of `mode` over `size`-byte buffers; returns the bytes copied.
    ///
    /// # Panics
    ///
    /// If `size` (times `inflight` for pipelined copies) exceeds the pool.
    pub fn run(&mut self, mode: CopyMode, size: usize, temp: Temp) -> usize {
        assert!(
            size > 0 && size <= self.src.len(),
            "size {size} exceeds the pool"
        );
        match mode {
            CopyMode::Cpu => {
                let off = self.next_offset(size, temp, 0);
                self.dst[off..off + size].copy_from_slice(&self.src[off..off + size]);
                size
            }
            CopyMode::DmaSync => {
                let off = self.next_offset(size, temp, 0);
                let n = self.channels.len().min(size);
                let part = size.div_ceil(n);
                let mut jobs = std::mem::take(&mut self.jobs);
                jobs.clear();
                jobs.extend(
                    (0..size)
                        .step_by(part)
                        .map(|o| (off + o, part.min(size - o))),
                );
                self.dma(&jobs, None);
                self.jobs = jobs;
                size
            }
            CopyMode::DmaPipelined { inflight } => {
                let k = inflight.max(1);
                assert!(
                    k * align_up(size) <= self.src.len() || k == 1,
                    "pool too small"
                );
                let mut jobs = std::mem::take(&mut self.jobs);
                jobs.clear();
                for slot in 0..k {
                    jobs.push((self.next_offset(size, temp, slot), size));
                }
                self.dma(&jobs, None);
                self.jobs = jobs;
                size * k
            }
            CopyMode::DmaSplit { cpu_fraction } => {
                let off = self.next_offset(size, temp, 0);
                let cpu = ((size as f64 * cpu_fraction.clamp(0.0, 1.0)) as usize).min(size);
                let dma = size - cpu;
                let n = self.channels.len().min(dma.max(1));
                let part = dma.div_ceil(n).max(1);
                let mut jobs = std::mem::take(&mut self.jobs);
                jobs.clear();
                jobs.extend((0..dma).step_by(part).map(|o| (off + o, part.min(dma - o))));
                self.dma(&jobs, Some((off + dma, cpu)));
                self.jobs = jobs;
                size
            }
        }
    }

    /// Copies each `(offset, len)` job from `src` to `dst` by DMA, round robin over the
    /// channels, one doorbell per channel; copies `cpu_part` with the CPU meanwhile; then
    /// waits for every job. A job DMA refuses or fails is redone by the CPU.
    fn dma(&mut self, jobs: &[(usize, usize)], cpu_part: Option<(usize, usize)>) {
        let src = self.src.as_ptr();
        let dst = self.dst.as_mut_ptr();
        let pool = self.src.len();
        let n = self.channels.len();
        self.cookies.clear();
        let mut refused: Vec<(usize, usize)> = Vec::new();
        for (i, &(off, len)) in jobs.iter().enumerate() {
            assert!(off + len <= pool);
            let ch = i % n;
            // SAFETY: `off + len <= pool` (asserted), so both ranges lie inside `self.src`
            // and `self.dst`, two distinct allocations that cannot overlap. Both live in
            // `self`, which this `&mut self` method borrows until every cookie is done:
            // the loop below waits for each, and on any wait error `terminate_all` is
            // called before returning, after which the device no longer touches them.
            // Nothing reads `dst` or writes `src` meanwhile (the CPU part uses a disjoint
            // range of `dst`).
            match unsafe { self.channels[ch].memcpy_raw(dst.add(off), src.add(off), len) } {
                Ok(cookie) => self.cookies.push((ch, cookie, off, len)),
                Err(_) => refused.push((off, len)),
            }
        }
        for ch in 0..n.min(jobs.len()) {
            self.channels[ch].issue_pending();
        }
        if let Some((off, len)) = cpu_part {
            assert!(off + len <= pool);
            // SAFETY: in bounds (asserted); the range is disjoint from every DMA job's
            // destination (the split gives the DMA jobs the bytes before `off`), and the
            // source is only read, as the device does.
            unsafe { std::ptr::copy_nonoverlapping(src.add(off), dst.add(off), len) };
        }
        for &(ch, cookie, off, len) in &self.cookies {
            if self.channels[ch].wait(cookie, self.timeout).is_err() {
                // Makes sure the device is done with the buffers before they are reused.
                self.channels[ch].terminate_all();
                refused.push((off, len));
            }
        }
        for (off, len) in refused {
            self.dst[off..off + len].copy_from_slice(&self.src[off..off + len]);
        }
    }

    /// Runs `mode` repeatedly for at least `min_time` and at least `min_ops` operations;
    /// returns the throughput in GB/s (10^9 bytes per second).
    pub fn measure(
        &mut self,
        mode: CopyMode,
        size: usize,
        temp: Temp,
        min_time: Duration,
        min_ops: usize,
    ) -> f64 {
        self.run(mode, size, temp); // warm-up
        let start = Instant::now();
        let mut bytes = 0usize;
        let mut ops = 0;
        while ops < min_ops || start.elapsed() < min_time {
            bytes += self.run(mode, size, temp);
            ops += 1;
        }
        bytes as f64 / start.elapsed().as_nanos().max(1) as f64
    }

    /// Checks that the last hot copy of `size` at offset 0 produced the source bytes.
    pub fn verify_hot(&self, size: usize) -> bool {
        self.dst[..size] == self.src[..size]
    }
}

fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_copies_correctly() {
        let mut bed = CopyBed::new(2, 1 << 20, Duration::from_micros(20)).unwrap();
        for mode in [
            CopyMode::Cpu,
            CopyMode::DmaSync,
            CopyMode::DmaPipelined { inflight: 4 },
            CopyMode::DmaSplit { cpu_fraction: 0.3 },
        ] {
            bed.dst.fill(0);
            assert_eq!(bed.run(mode, 10_000, Temp::Hot), mode.bytes_per_op(10_000));
            assert!(bed.verify_hot(10_000), "{mode}");
            bed.run(mode, 4096, Temp::Cold);
        }
    }
}
