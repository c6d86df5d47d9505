//! The adaptive copybreak (`tcp_dma_copybreak = "auto"`): measure both paths as traffic
//! flows and route to the cheaper one.
//!
//! Whether offload pays changes at run time with where the host puts the vCPUs (DESIGN.md:
//! 0.7x the receiver CPU in one placement, 2x in the other), so a fixed threshold is right
//! one minute and wrong the next. The policy keeps an exponentially weighted cost per KiB
//! (the receiving thread's own CPU time) for each path, routes to the cheaper with a
//! hysteresis band, and keeps probing the path it is not using so it notices a change
//! within a few hundred reads. Failed DMA copies are not samples. The state machine takes
//! its samples as arguments: no clock inside, so tests drive it directly.

/// Every n-th eligible read is measured (reading the thread CPU clock costs a syscall).
pub(crate) const SAMPLE_EVERY: u64 = 8;
/// Every n-th eligible read goes the other way, to keep that estimate fresh.
pub(crate) const PROBE_EVERY: u64 = 64;
/// Switch only when the other path is cheaper by this fraction.
const HYSTERESIS: f64 = 0.05;
/// Weight of a new sample.
const ALPHA: f64 = 0.25;

/// Which way one read goes, and whether to measure it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Choice {
    pub(crate) dma: bool,
    pub(crate) sample: bool,
}

/// The policy's state.
#[derive(Debug, Default)]
pub(crate) struct Adaptive {
    cpu_cost: Option<f64>,
    dma_cost: Option<f64>,
    use_dma: bool,
    reads: u64,
}

impl Adaptive {
    /// Chooses the path for the next eligible read.
    pub(crate) fn choose(&mut self) -> Choice {
        self.reads += 1;
        // Until both paths have an estimate, alternate and measure every read.
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
        if self.reads.is_multiple_of(PROBE_EVERY) {
            return Choice {
                dma: !self.use_dma,
                sample: true,
            };
        }
        Choice {
            dma: self.use_dma,
            sample: self.reads.is_multiple_of(SAMPLE_EVERY),
        }
    }

    /// Records a measured read: `cpu_ns` of the receiving thread's CPU for `bytes`.
    pub(crate) fn record(&mut self, dma: bool, bytes: usize, cpu_ns: u64) {
        if bytes == 0 {
            return;
        }
        let cost = cpu_ns as f64 * 1024.0 / bytes as f64;
        let slot = if dma {
            &mut self.dma_cost
        } else {
            &mut self.cpu_cost
        };
        *slot = Some(match *slot {
            None => cost,
            Some(old) => old + ALPHA * (cost - old),
        });
        if let (Some(cpu), Some(dma)) = (self.cpu_cost, self.dma_cost) {
            if self.use_dma && dma > cpu * (1.0 + HYSTERESIS) {
                tracing::debug!(
                    cpu,
                    dma,
                    "adaptive copybreak: DMA stopped paying, using the CPU"
                );
                self.use_dma = false;
            } else if !self.use_dma && dma < cpu * (1.0 - HYSTERESIS) {
                tracing::debug!(cpu, dma, "adaptive copybreak: DMA pays, offloading");
                self.use_dma = true;
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

    fn feed(policy: &mut Adaptive, reads: u64, cpu_cost: u64, dma_cost: u64) {
        for _ in 0..reads {
            let c = policy.choose();
            if c.sample {
                policy.record(c.dma, 1024, if c.dma { dma_cost } else { cpu_cost });
            }
        }
    }

    #[test]
    fn routes_to_dma_when_it_is_cheaper_and_back_when_it_stops_paying() {
        let mut p = Adaptive::default();
        feed(&mut p, 200, 1000, 700);
        assert!(p.prefers_dma());
        // The placement changes: offload now costs twice the CPU copy.
        feed(&mut p, 3 * PROBE_EVERY, 1000, 2000);
        assert!(!p.prefers_dma());
    }

    #[test]
    fn hysteresis_holds_the_choice_when_costs_are_close() {
        let mut p = Adaptive::default();
        feed(&mut p, 200, 1000, 700);
        assert!(p.prefers_dma());
        feed(&mut p, 1000, 1000, 1030);
        assert!(p.prefers_dma(), "3% worse is inside the 5% band");
    }

    #[test]
    fn probes_the_other_path() {
        let mut p = Adaptive::default();
        feed(&mut p, 10, 1000, 5000);
        let probes = (0..PROBE_EVERY).filter(|_| p.choose().dma).count();
        assert_eq!(probes, 1);
    }
}
