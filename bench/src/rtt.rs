//! The cross-core round trip: a cache line bounced between two threads pinned to
//! different CPUs. On this kind of machine it is ~100-150 ns when the host places the two
//! vCPUs on cores that share a cache and ~450-500 ns when it does not, and it
//! bounds what handing a copy to another core can gain.

use crate::stats::median;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A cache-line-aligned counter, so the ping-pong moves exactly one line.
#[repr(align(128))]
struct Line(AtomicU64);

/// Sentinel telling the echo thread to stop.
const STOP: u64 = u64::MAX;

/// What [`cross_core_rtt`] measured.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Rtt {
    /// Median of the batch means, nanoseconds per round trip.
    pub rtt_ns: f64,
    /// The two CPUs used.
    pub cpus: (usize, usize),
    /// Whether both threads could be pinned to distinct CPUs (false on a 1-CPU machine:
    /// then the figure is a same-core hand-off through the scheduler).
    pub pinned: bool,
}

/// Measures `batches` batches of `per_batch` round trips and returns the median batch
/// mean. The calling thread's affinity is not changed: both ends run on new threads.
pub fn cross_core_rtt(batches: usize, per_batch: usize) -> Rtt {
    let cpus = dmaengine::cpu::process_affinity();
    let (a, b) = match cpus.as_slice() {
        [a, b, ..] => (*a, *b),
        [a] => (*a, *a),
        [] => (0, 0),
    };
    let distinct = a != b;
    let line = Arc::new(Line(AtomicU64::new(0)));
    let echo = {
        let line = line.clone();
        std::thread::spawn(move || {
            let pinned = distinct && dmaengine::cpu::pin_current_thread(b).is_ok();
            let mut seen = 0;
            loop {
                let v = line.0.load(Ordering::Acquire);
                if v == STOP {
                    break;
                }
                if v != seen && v % 2 == 1 {
                    line.0.store(v + 1, Ordering::Release);
                    seen = v + 1;
                } else if !distinct {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            pinned
        })
    };
    let pinger = {
        let line = line.clone();
        std::thread::spawn(move || {
            let pinned = distinct && dmaengine::cpu::pin_current_thread(a).is_ok();
            let mut next = 1u64;
            let mut round = |n: usize| {
                for _ in 0..n {
                    line.0.store(next, Ordering::Release);
                    while line.0.load(Ordering::Acquire) != next + 1 {
                        if distinct {
                            std::hint::spin_loop();
                        } else {
                            std::thread::yield_now();
                        }
                    }
                    next += 2;
                }
            };
            round(per_batch.max(1)); // warm-up
            let mut means: Vec<f64> = (0..batches.max(1))
                .map(|_| {
                    let start = Instant::now();
                    round(per_batch.max(1));
                    start.elapsed().as_nanos() as f64 / per_batch.max(1) as f64
                })
                .collect();
            line.0.store(STOP, Ordering::Release);
            (median(&mut means), pinned)
        })
    };
    let (rtt_ns, pinned_a) = pinger.join().expect("ping thread panicked");
    let pinned_b = echo.join().expect("echo thread panicked");
    Rtt {
        rtt_ns,
        cpus: (a, b),
        pinned: pinned_a && pinned_b,
    }
}
