//! Engine operations in isolation: `find_channel` (the per-CPU table lookup), descriptor
//! submission (batched behind one doorbell, or one doorbell each), and completion latency
//! (doorbell to a completion seen by a spinning poller).

use crate::stats::percentile;
use dmaengine::dsa::{DsaDevice, EmulatedWq};
use dmaengine::{Cap, Client, Engine, PrivateChannel, SoftwareDevice, TxStatus};
use serde::Serialize;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Bytes each submitted descriptor copies (small: the submission cost is what is measured).
pub const DESC_BYTES: usize = 64;

/// An engine with one software device, a public client (for `find_channel`) and, on
/// demand, a private channel (for submission and latency).
pub struct EngineBed {
    /// The engine.
    pub engine: Engine,
    /// The public client whose table `find_channel` reads (dropped by
    /// [`EngineBed::private_channel`]).
    pub client: Option<Client>,
    src: Vec<u8>,
    dst: Vec<u8>,
}

impl std::fmt::Debug for EngineBed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBed").finish_non_exhaustive()
    }
}

impl EngineBed {
    /// One software device of `channels` channels whose workers spin `spin` before
    /// parking; room for `max_batch` descriptors per batch.
    pub fn new(channels: usize, spin: Duration, max_batch: usize) -> Result<EngineBed, String> {
        let engine = Engine::new();
        engine
            .register_device(
                SoftwareDevice::builder()
                    .channels(channels.max(1))
                    .ring_size((max_batch * 2).max(1024))
                    .spin(spin)
                    .build(),
            )
            .map_err(|e| e.to_string())?;
        Ok(Self::over(engine, max_batch))
    }

    /// The same bed over the DSA provider on its software portal: one channel on a
    /// dedicated WQ deep enough for `max_batch` descriptors, whose thread spins `spin`
    /// before parking; a doorbell sends one BATCH descriptor.
    pub fn new_dsa_emulated(spin: Duration, max_batch: usize) -> Result<EngineBed, String> {
        let max_batch = max_batch.max(2);
        let wq = EmulatedWq::builder()
            .size(max_batch.max(128))
            .max_batch_size(max_batch as u32)
            .spin(spin)
            .build();
        let device = DsaDevice::builder()
            .ring_size((max_batch * 2).max(256))
            .spin(spin)
            .emulated(wq);
        let engine = Engine::new();
        engine.register_device(device).map_err(|e| e.to_string())?;
        Ok(Self::over(engine, max_batch))
    }

    fn over(engine: Engine, max_batch: usize) -> EngineBed {
        let client = Some(engine.client(Cap::Memcpy.into()));
        let bytes = DESC_BYTES * max_batch.max(1);
        EngineBed {
            engine,
            client,
            src: vec![7u8; bytes],
            dst: vec![0u8; bytes],
        }
    }

    /// One `find_channel(MEMCPY)` through the client (the handle is dropped at once).
    #[inline]
    pub fn find_channel(&self) -> bool {
        let client = self.client.as_ref();
        black_box(client.and_then(|c| c.find_channel(black_box(Cap::Memcpy)))).is_some()
    }

    /// Submits `k` descriptors of [`DESC_BYTES`] on `chan`, ringing the doorbell once at
    /// the end (`batched`) or after each; returns the nanoseconds spent submitting and
    /// issuing. Then waits (untimed) for all of them.
    pub fn submit_batch(&mut self, chan: &PrivateChannel, k: usize, batched: bool) -> u64 {
        let k = k.min(self.src.len() / DESC_BYTES).max(1);
        let src = self.src.as_ptr();
        let dst = self.dst.as_mut_ptr();
        let start = Instant::now();
        let mut last = None;
        for i in 0..k {
            // SAFETY: descriptor i covers bytes `i*64..(i+1)*64` of `self.src` and
            // `self.dst` (k is clamped to their length), two distinct allocations held by
            // `self`, which this `&mut self` call borrows until the last cookie is done:
            // the channel completes in order, and the wait below (followed by
            // `terminate_all` on failure) ends every use of the buffers before returning.
            match unsafe {
                chan.memcpy_raw(dst.add(i * DESC_BYTES), src.add(i * DESC_BYTES), DESC_BYTES)
            } {
                Ok(c) => last = Some(c),
                Err(_) => break,
            }
            if !batched {
                chan.issue_pending();
            }
        }
        if batched {
            chan.issue_pending();
        }
        let spent = start.elapsed().as_nanos() as u64;
        if let Some(c) = last {
            if chan.wait(c, Duration::from_secs(5)).is_err() {
                chan.terminate_all();
            }
        }
        spent
    }

    /// One completion: submits a [`DESC_BYTES`] copy, rings the doorbell and spins on
    /// `status` until it is done; returns nanoseconds from doorbell to completion seen.
    pub fn completion_once(&mut self, chan: &PrivateChannel) -> u64 {
        let src = self.src.as_ptr();
        let dst = self.dst.as_mut_ptr();
        // SAFETY: the first 64 bytes of two distinct buffers owned by `self` (which holds
        // at least one descriptor's worth); this call polls until the cookie is done, or
        // cancels it with `terminate_all` after 5 s, before returning.
        let cookie = match unsafe { chan.memcpy_raw(dst, src, DESC_BYTES) } {
            Ok(c) => c,
            Err(_) => return 0,
        };
        let start = Instant::now();
        chan.issue_pending();
        // Poll as a spinning waiter does: the status load back to back, the clock only
        // every 1024 polls (a clock read and a pause per poll would add their own ~50 ns).
        let mut polls = 0u32;
        while let Ok(TxStatus::InProgress) = chan.status(cookie) {
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(1024) && start.elapsed() > Duration::from_secs(5) {
                chan.terminate_all();
                break;
            }
        }
        start.elapsed().as_nanos() as u64
    }

    /// A private channel for submission and latency measurements. Drops the public
    /// client first (a device in public use cannot go private), so take it after the
    /// `find_channel` measurements.
    pub fn private_channel(&mut self) -> Result<PrivateChannel, String> {
        self.client = None;
        self.engine
            .request_channel(Cap::Memcpy.into(), |_| true)
            .map_err(|e| e.to_string())
    }
}

/// Nanoseconds per `find_channel` over `lookups` lookups (median of 5 runs).
pub fn find_channel_ns(bed: &EngineBed, lookups: usize) -> f64 {
    let lookups = lookups.max(1);
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let mut found = 0usize;
            for _ in 0..lookups {
                found += usize::from(bed.find_channel());
            }
            black_box(found);
            start.elapsed().as_nanos() as f64 / lookups as f64
        })
        .collect();
    crate::stats::median(&mut runs)
}

/// Nanoseconds per descriptor, median over `rounds` batches of `k`.
pub fn submit_ns_per_desc(
    bed: &mut EngineBed,
    chan: &PrivateChannel,
    k: usize,
    batched: bool,
    rounds: usize,
) -> f64 {
    bed.submit_batch(chan, k, batched); // warm-up
    let mut per: Vec<f64> = (0..rounds.max(1))
        .map(|_| bed.submit_batch(chan, k, batched) as f64 / k.max(1) as f64)
        .collect();
    crate::stats::median(&mut per)
}

/// Completion latency percentiles.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Latency {
    /// Median, nanoseconds.
    pub p50_ns: f64,
    /// 99th percentile, nanoseconds.
    pub p99_ns: f64,
    /// Samples taken.
    pub samples: usize,
}

/// Completion latency over `samples` back-to-back completions (after 10% warm-up), with
/// the worker kept spinning by the steady stream of work.
pub fn completion_latency(bed: &mut EngineBed, chan: &PrivateChannel, samples: usize) -> Latency {
    let samples = samples.max(1);
    for _ in 0..samples / 10 + 1 {
        bed.completion_once(chan);
    }
    let mut v: Vec<f64> = (0..samples)
        .map(|_| bed.completion_once(chan) as f64)
        .collect();
    Latency {
        p50_ns: percentile(&mut v, 50.0),
        p99_ns: percentile(&mut v, 99.0),
        samples,
    }
}
