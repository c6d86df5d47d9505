//! The adaptive copybreak (`tcp_dma_copybreak = "auto"`): measure both paths as traffic
//! flows and route to the cheaper one.
//!
//! Costs are the wall time a read spends in netdma per KiB (a read's copy is synchronous,
//! so that is the receiving thread's time; `Instant` costs ~20 ns where the thread CPU
//! clock costs a syscall). The pipelined receive, whose reads overlap, charges instead the
//! thread's busy time in `Pipeline::poll` to the path that was copying, per byte each path
//! delivered (`pipeline::Meter`). The path not in use is probed on a clock that backs off from
//! 4 ms to 250 ms while the probes keep confirming the choice: probes of a path ten times
//! dearer then cost well under 1%, and a change of placement is still noticed within a
//! few probes (under a second). A probe is dearer than its own copy: it leaves the ring's
//! cache lines on the engine's core, so the reads after it pay too.
//!
//! Whether offload pays changes at run time with where the host puts the vCPUs (the
//! report's ring hand-off and cross-core round trip measure it), so a fixed threshold is right
//! one minute and wrong the next. The policy keeps an exponentially weighted cost per KiB
//! (the receiving thread's own CPU time) for each path, routes to the cheaper with a
//! hysteresis band, and keeps probing the path it is not using so it notices a change
//! within a few hundred reads. Failed DMA copies are not samples. The state machine takes
//! its samples as arguments: no clock inside, so tests drive it directly.

/// Every n-th eligible read is measured (and may become a probe); the others take the
/// current choice from an atomic.
pub(crate) const SAMPLE_EVERY: u64 = 16;
/// The first probe interval, and the one after every switch.
const PROBE_MIN_NS: u64 = 4_000_000;
/// The longest probe interval.
const PROBE_MAX_NS: u64 = 250_000_000;
/// Switch only when the other path is cheaper by this fraction.
const HYSTERESIS: f64 = 0.05;
/// Weight of a new sample of the path in use.
const ALPHA: f64 = 0.25;
/// Weight of a probe (a sample of the path not in use): probes are rare, so each counts
/// for more, and three of them move the estimate most of the way.
const PROBE_ALPHA: f64 = 0.5;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Which way one read goes, and whether to measure it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Choice {
    pub(crate) dma: bool,
    pub(crate) sample: bool,
}

/// The policy's state.
/// The policy as the receive path uses it: most reads take the current choice from an
/// atomic; every [`SAMPLE_EVERY`]-th read (and every read until both paths have an
/// estimate) goes through the state machine, which may turn it into a probe.
#[derive(Debug, Default)]
pub(crate) struct AdaptivePolicy {
    estimates: parking_lot::Mutex<Adaptive>,
    /// Mirror of the state machine's choice, for the lock-free fast path.
    use_dma: AtomicBool,
    /// Both paths have an estimate.
    ready: AtomicBool,
    reads: AtomicU64,
}

impl AdaptivePolicy {
    /// Chooses the path for the next eligible read; `clock` (any monotonic nanoseconds)
    /// is read only on the slow path.
    #[inline]
    pub(crate) fn choose(&self, clock: impl FnOnce() -> u64) -> Choice {
        let n = self.reads.fetch_add(1, Ordering::Relaxed) + 1;
        if self.ready.load(Ordering::Relaxed) && !n.is_multiple_of(SAMPLE_EVERY) {
            return Choice {
                dma: self.use_dma.load(Ordering::Relaxed),
                sample: false,
            };
        }
        self.estimates.lock().choose(clock())
    }

    /// Records a measured read.
    pub(crate) fn record(&self, dma: bool, bytes: usize, spent_ns: u64) {
        let mut estimates = self.estimates.lock();
        estimates.record(dma, bytes, spent_ns);
        self.use_dma.store(estimates.use_dma, Ordering::Relaxed);
        self.ready.store(estimates.is_ready(), Ordering::Relaxed);
    }
}

/// The state machine: estimates, the choice, and the probe clock. Every call is one
/// measured read.
#[derive(Debug)]
pub(crate) struct Adaptive {
    cpu_cost: Option<f64>,
    dma_cost: Option<f64>,
    use_dma: bool,
    next_probe_ns: u64,
    probe_interval_ns: u64,
}

impl Default for Adaptive {
    fn default() -> Self {
        Adaptive {
            cpu_cost: None,
            dma_cost: None,
            use_dma: false,
            next_probe_ns: 0,
            probe_interval_ns: PROBE_MIN_NS,
        }
    }
}

impl Adaptive {
    fn is_ready(&self) -> bool {
        self.cpu_cost.is_some() && self.dma_cost.is_some()
    }

    /// Chooses the path for the next measured read; `now_ns` is any monotonic clock.
    pub(crate) fn choose(&mut self, now_ns: u64) -> Choice {
        // Until both paths have an estimate, measure each.
        match (self.cpu_cost, self.dma_cost) {
            (None, _) => {
                return Choice {
                    dma: false,
                    sample: true,
                }
            }
            (_, None) => {
                return Choice {
                    dma: true,
                    sample: true,
                }
            }
            _ => {}
        }
        if now_ns >= self.next_probe_ns {
            self.next_probe_ns = now_ns + self.probe_interval_ns;
            self.probe_interval_ns = (self.probe_interval_ns * 2).min(PROBE_MAX_NS);
            return Choice {
                dma: !self.use_dma,
                sample: true,
            };
        }
        Choice {
            dma: self.use_dma,
            sample: true,
        }
    }

    /// Records a measured read: `spent_ns` of the receiving thread for `bytes`.
    pub(crate) fn record(&mut self, dma: bool, bytes: usize, spent_ns: u64) {
        if bytes == 0 {
            return;
        }
        let cost = spent_ns as f64 * 1024.0 / bytes as f64;
        let slot = if dma {
            &mut self.dma_cost
        } else {
            &mut self.cpu_cost
        };
        let alpha = if dma == self.use_dma {
            ALPHA
        } else {
            PROBE_ALPHA
        };
        *slot = Some(match *slot {
            None => cost,
            Some(old) => old + alpha * (cost - old),
        });
        if let (Some(cpu), Some(dma)) = (self.cpu_cost, self.dma_cost) {
            if self.use_dma && dma > cpu * (1.0 + HYSTERESIS) {
                tracing::debug!(
                    cpu,
                    dma,
                    "adaptive copybreak: DMA stopped paying, using the CPU"
                );
                self.use_dma = false;
                self.probe_interval_ns = PROBE_MIN_NS;
            } else if !self.use_dma && dma < cpu * (1.0 - HYSTERESIS) {
                tracing::debug!(cpu, dma, "adaptive copybreak: DMA pays, offloading");
                self.use_dma = true;
                self.probe_interval_ns = PROBE_MIN_NS;
            }
        }
    }

    /// Whether DMA is the current choice.
    #[cfg(test)]
    pub(crate) fn prefers_dma(&self) -> bool {
        self.use_dma
    }
}

/// The calling thread's CPU time in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel
    // knows. On failure `ts` stays zero, which only spoils one sample.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `reads` reads, 10 us apart, with the given costs per KiB.
    fn feed(policy: &mut Adaptive, clock: &mut u64, reads: u64, cpu_cost: u64, dma_cost: u64) {
        for _ in 0..reads {
            *clock += 10_000;
            let c = policy.choose(*clock);
            if c.sample {
                policy.record(c.dma, 1024, if c.dma { dma_cost } else { cpu_cost });
            }
        }
    }

    #[test]
    fn routes_to_dma_when_it_is_cheaper_and_back_when_it_stops_paying() {
        let (mut p, mut clock) = (Adaptive::default(), 0);
        feed(&mut p, &mut clock, 200, 1000, 700);
        assert!(p.prefers_dma());
        // The placement changes: offload now costs twice the CPU copy. Noticed within
        // 100 reads (1 ms of traffic here).
        feed(&mut p, &mut clock, 100, 1000, 2000);
        assert!(!p.prefers_dma());
    }

    #[test]
    fn notices_within_a_second_when_dma_starts_paying() {
        let (mut p, mut clock) = (Adaptive::default(), 0);
        feed(&mut p, &mut clock, 100_000, 1000, 3000); // a second of traffic
        assert!(!p.prefers_dma());
        feed(&mut p, &mut clock, 100_000, 1000, 500);
        assert!(p.prefers_dma(), "not noticed within a second");
    }

    #[test]
    fn the_policy_measures_one_read_in_sample_every() {
        let policy = AdaptivePolicy::default();
        let mut measured = 0;
        for i in 0..10 * SAMPLE_EVERY {
            let c = policy.choose(|| i * 10_000);
            if c.sample {
                measured += 1;
                policy.record(c.dma, 1024, if c.dma { 2000 } else { 1000 });
            }
        }
        // The two warm-up reads, then one in SAMPLE_EVERY.
        assert!((10..=12).contains(&measured), "{measured} measured");
        assert!(!policy.use_dma.load(Ordering::Relaxed));
    }

    #[test]
    fn hysteresis_holds_the_choice_when_costs_are_close() {
        let (mut p, mut clock) = (Adaptive::default(), 0);
        feed(&mut p, &mut clock, 200, 1000, 700);
        assert!(p.prefers_dma());
        feed(&mut p, &mut clock, 1000, 1000, 1030);
        assert!(p.prefers_dma(), "3% worse is inside the 5% band");
    }

    #[test]
    fn probes_back_off_while_they_confirm_the_choice() {
        let (mut p, mut clock) = (Adaptive::default(), 0);
        feed(&mut p, &mut clock, 1000, 1000, 5000);
        // Over the next second (100,000 measured reads 10 us apart) the interval backs off
        // from 4 ms to 250 ms: a handful of probes, enough to notice a change.
        let mut probes = 0;
        for _ in 0..100_000 {
            clock += 10_000;
            let c = p.choose(clock);
            if c.dma {
                probes += 1;
                p.record(true, 1024, 5000);
            }
        }
        assert!(probes <= 10, "{probes} probes in a second");
        assert!(
            probes >= 3,
            "{probes} probes in a second: too few to notice a change"
        );
    }
}
