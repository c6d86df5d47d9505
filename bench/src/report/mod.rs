//! The side-by-side report: measures everything in one process, interleaving the
//! compared modes round by round (A, B, C, A, B, C, ...) so that a change of vCPU
//! placement during the run hits all of them alike, and computes per-round ratios whose
//! medians are reported.
//!
//! - [`measure`]: the measurements, interleaved by round.
//! - [`targets`]: the figures the project holds itself to, checked.
//! - the output formats: `--json` ([`Report::to_json`]), `BENCHMARKS.md`
//!   ([`Report::to_markdown`]) and the plot ([`Report::svg`]).

mod json;
mod markdown;
pub mod measure;
mod svg;
pub mod targets;

use crate::copy::{CopyBed, Temp};
use crate::engine_ops::{self, EngineBed, Latency};
use crate::handoff::{HandoffMode, HandoffRun};
use crate::recv::RecvMode;
use crate::rtt::{cross_core_rtt, Rtt};
use crate::{KIB, MIB};
use serde::Serialize;
use std::time::{Duration, Instant};

pub use measure::{measure_copies, measure_handoff, measure_headline, measure_recv_table};
pub use targets::Target;

/// How much to measure.
#[derive(Clone, Debug, Serialize)]
pub struct Scale {
    /// `full`, `quick` or `tiny`.
    pub name: &'static str,
    /// Round-trip batches and round trips per batch.
    pub rtt: (usize, usize),
    /// Copy sizes.
    pub copy_sizes: Vec<usize>,
    /// Time per copy measurement.
    pub copy_time: Duration,
    /// Interleaved rounds of the copy table.
    pub copy_rounds: usize,
    /// Pool for cold buffers (bytes, each of source and destination).
    pub cold_pool: usize,
    /// `find_channel` lookups per run.
    pub lookups: usize,
    /// Descriptors per submitted batch, and batches measured.
    pub submit: (usize, usize),
    /// Completion latency samples.
    pub latency_samples: usize,
    /// Headline comparison (MTU 65535, 64 KiB reads): rounds and bytes per run.
    pub headline: (usize, usize),
    /// Per-size receive table: MTUs.
    pub table_mtus: Vec<usize>,
    /// Per-size receive table: read sizes.
    pub table_reads: Vec<usize>,
    /// Per-size receive table: rounds and bytes per run.
    pub table: (usize, usize),
    /// Ring hand-off: rounds and 64 KiB blocks per run.
    pub handoff: (usize, usize),
}

impl Scale {
    /// The full report (a few minutes).
    pub fn full() -> Scale {
        Scale {
            name: "full",
            rtt: (41, 2000),
            copy_sizes: pow4_sizes(64, 4 * MIB),
            copy_time: Duration::from_millis(60),
            copy_rounds: 3,
            cold_pool: CopyBed::cold_pool_bytes(),
            lookups: 2_000_000,
            submit: (64, 2001),
            latency_samples: 20_000,
            headline: (41, 64 * MIB),
            table_mtus: vec![1500, 9000, 65535],
            table_reads: vec![KIB, 4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, MIB],
            table: (5, 32 * MIB),
            handoff: (21, 2048),
        }
    }

    /// `--quick`: under a minute.
    pub fn quick() -> Scale {
        Scale {
            name: "quick",
            rtt: (15, 1000),
            copy_sizes: pow4_sizes(64, 4 * MIB),
            copy_time: Duration::from_millis(15),
            copy_rounds: 1,
            cold_pool: CopyBed::cold_pool_bytes(),
            lookups: 300_000,
            submit: (64, 301),
            latency_samples: 5_000,
            headline: (15, 24 * MIB),
            table_mtus: vec![1500, 9000, 65535],
            table_reads: vec![KIB, 4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, MIB],
            table: (2, 4 * MIB),
            handoff: (9, 512),
        }
    }

    /// For tests: seconds, not minutes; the figures mean little.
    pub fn tiny() -> Scale {
        Scale {
            name: "tiny",
            rtt: (3, 100),
            copy_sizes: vec![64, 4 * KIB, 64 * KIB],
            copy_time: Duration::from_millis(1),
            copy_rounds: 1,
            cold_pool: 4 * MIB,
            lookups: 1000,
            submit: (16, 5),
            latency_samples: 50,
            headline: (2, 2 * MIB),
            table_mtus: vec![9000],
            table_reads: vec![4 * KIB, 64 * KIB],
            table: (1, MIB),
            handoff: (2, 32),
        }
    }
}

fn pow4_sizes(from: usize, to: usize) -> Vec<usize> {
    std::iter::successors(Some(from), |&s| Some(s * 4))
        .take_while(|&s| s <= to)
        .collect()
}

/// The machine the report ran on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// CPU model (`/proc/cpuinfo`).
    pub cpu_model: String,
    /// CPUs this process may use.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
    /// `rustc --version`.
    pub rustc: String,
    /// UTC date of the run, `YYYY-MM-DD`.
    pub date: String,
    /// Last-level cache, bytes.
    pub llc_bytes: usize,
}

impl Machine {
    /// Reads the machine's description.
    pub fn detect() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let rustc = std::process::Command::new(std::env::var("RUSTC").unwrap_or("rustc".into()))
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        Machine {
            cpu_model,
            cpus: dmaengine::cpu::process_affinity().len(),
            kernel,
            rustc,
            date: utc_date(std::time::SystemTime::now()),
            llc_bytes: crate::copy::llc_bytes(),
        }
    }
}

/// `YYYY-MM-DD` (UTC) of `t`.
fn utc_date(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t).date().to_string()
}

/// One cell of the copy table.
#[derive(Clone, Debug, Serialize)]
pub struct CopyRow {
    /// Copy size, bytes.
    pub size: usize,
    /// Hot or cold buffers.
    pub temp: Temp,
    /// Channels used.
    pub channels: usize,
    /// The mode, as text.
    pub mode: String,
    /// Median throughput over the rounds, GB/s.
    pub gb_per_s: f64,
}

/// One cell of the receive table.
#[derive(Clone, Debug, Serialize)]
pub struct RecvRow {
    /// Link MTU.
    pub mtu: usize,
    /// Read size, bytes.
    pub read_size: usize,
    /// The mode.
    pub mode: RecvMode,
    /// Median throughput, MiB/s.
    pub mib_per_s: f64,
    /// Median receiving-side CPU per MiB, microseconds.
    pub cpu_us_per_mib: f64,
}

/// The headline comparison at MTU 65535 and 64 KiB reads.
#[derive(Clone, Debug, Serialize)]
pub struct Headline {
    /// Link MTU.
    pub mtu: usize,
    /// Read size.
    pub read_size: usize,
    /// Rounds run.
    pub rounds: usize,
    /// Per mode: median throughput (MiB/s) and receiving CPU (us/MiB).
    pub modes: Vec<RecvRow>,
    /// netdma below the copybreak / smoltcp `recv_slice`, throughput.
    pub recv_below_copybreak_ratio: f64,
    /// Adaptive / CPU path, throughput.
    pub auto_throughput_ratio: f64,
    /// Adaptive pipelined receive / CPU path, throughput.
    pub pipelined_auto_throughput_ratio: f64,
    /// Best DMA mode / CPU path, throughput.
    pub recv_dma_throughput_ratio: f64,
    /// Which DMA mode was best.
    pub best_dma_mode: RecvMode,
    /// No-copy floor / CPU path, receiving CPU per MiB.
    pub nocopy_floor_ratio: f64,
    /// Best DMA mode / CPU path, receiving CPU per MiB.
    pub app_cpu_per_mib_ratio: f64,
    /// Where the adaptive mode sent its bytes (DMA, CPU) over the headline runs.
    pub auto_dma_bytes: (u64, u64),
    /// The same for the adaptive pipelined receive.
    pub pipelined_auto_dma_bytes: (u64, u64),
}

/// The ring hand-off (`handoff`): the filling thread's nanoseconds per 64 KiB block.
#[derive(Clone, Debug, Serialize)]
pub struct Handoff {
    /// Rounds run (every mode once per round).
    pub rounds: usize,
    /// Blocks per run.
    pub blocks: usize,
    /// Per mode, medians over the rounds.
    pub modes: Vec<(HandoffMode, HandoffRun)>,
    /// Writing a block into the ring with DMA copying it out / with the CPU copying it
    /// out (median of per-round ratios).
    pub write_ratio: f64,
    /// The filling thread's whole time per block, DMA / CPU (median of per-round ratios).
    pub thread_ratio: f64,
}

impl Handoff {
    fn mode(&self, mode: HandoffMode) -> HandoffRun {
        self.modes
            .iter()
            .find(|(m, _)| *m == mode)
            .map_or_else(HandoffRun::default, |(_, r)| *r)
    }
}

/// Everything the report measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// The scale used.
    pub scale: &'static str,
    /// Cross-core round trip at the start.
    pub rtt: Rtt,
    /// Cross-core round trip at the end (a different figure means the host moved the
    /// vCPUs during the run).
    pub rtt_end: Rtt,
    /// `find_channel`, ns per lookup.
    pub find_channel_ns: f64,
    /// Submission, ns per descriptor, batched behind one doorbell.
    pub submit_ns_per_desc: f64,
    /// Submission, ns per descriptor, one doorbell each.
    pub submit_ns_per_desc_unbatched: f64,
    /// Descriptors per batch.
    pub submit_batch: usize,
    /// Completion latency with a spinning worker.
    pub completion: Latency,
    /// The DSA provider on its software portal: submission, ns per descriptor, batched
    /// (one BATCH descriptor per doorbell).
    pub dsa_submit_ns_per_desc: f64,
    /// The same, one doorbell (one portal write) each.
    pub dsa_submit_ns_per_desc_unbatched: f64,
    /// Its completion latency (record written by the portal thread, seen by a poller).
    pub dsa_completion: Latency,
    /// The headline receive comparison.
    pub headline: Headline,
    /// Copy throughput table.
    pub copy_table: Vec<CopyRow>,
    /// Receive table.
    pub recv_table: Vec<RecvRow>,
    /// The ring hand-off.
    pub handoff: Handoff,
    /// Targets.
    pub targets: Vec<Target>,
    /// Seconds the measurements took.
    pub elapsed_s: f64,
}

/// Runs the whole report at `scale`, logging progress lines to `log`.
pub fn run(scale: &Scale, log: &mut dyn FnMut(&str)) -> Result<Report, String> {
    let start = Instant::now();
    let machine = Machine::detect();
    log("cross-core round trip");
    let rtt = cross_core_rtt(scale.rtt.0, scale.rtt.1);
    log(&format!("  {:.0} ns", rtt.rtt_ns));

    log("engine: find_channel, submit, completion");
    let mut ebed = EngineBed::new(2, Duration::from_millis(2), scale.submit.0)?;
    let find_channel_ns = engine_ops::find_channel_ns(&ebed, scale.lookups);
    let chan = ebed.private_channel()?;
    let (k, rounds) = scale.submit;
    let submit_ns_per_desc = engine_ops::submit_ns_per_desc(&mut ebed, &chan, k, true, rounds);
    let submit_ns_per_desc_unbatched =
        engine_ops::submit_ns_per_desc(&mut ebed, &chan, k, false, rounds);
    let completion = engine_ops::completion_latency(&mut ebed, &chan, scale.latency_samples);
    drop(chan);
    drop(ebed);
    log("engine: the same on the emulated DSA provider");
    let mut dbed = EngineBed::new_dsa_emulated(Duration::from_millis(2), k)?;
    let chan = dbed.private_channel()?;
    let dsa_submit_ns_per_desc = engine_ops::submit_ns_per_desc(&mut dbed, &chan, k, true, rounds);
    let dsa_submit_ns_per_desc_unbatched =
        engine_ops::submit_ns_per_desc(&mut dbed, &chan, k, false, rounds);
    let dsa_completion = engine_ops::completion_latency(&mut dbed, &chan, scale.latency_samples);
    drop(chan);
    drop(dbed);

    let headline = measure_headline(scale, log)?;
    log("copy table");
    let copy_table = measure_copies(scale, log)?;
    let recv_table = measure_recv_table(scale, log)?;
    let handoff = measure_handoff(scale, log)?;
    let rtt_end = cross_core_rtt(scale.rtt.0, scale.rtt.1);
    let mut report = Report {
        machine,
        scale: scale.name,
        rtt,
        rtt_end,
        find_channel_ns,
        submit_ns_per_desc,
        submit_ns_per_desc_unbatched,
        submit_batch: k,
        completion,
        dsa_submit_ns_per_desc,
        dsa_submit_ns_per_desc_unbatched,
        dsa_completion,
        headline,
        copy_table,
        recv_table,
        handoff,
        targets: Vec::new(),
        elapsed_s: 0.0,
    };
    report.targets = report.check_targets();
    report.elapsed_s = start.elapsed().as_secs_f64();
    Ok(report)
}
impl Report {
    /// Whether the cross-core round trip changed by more than 2x between the start and
    /// the end of the run (the host moved the vCPUs).
    pub fn placement_changed(&self) -> bool {
        let (a, b) = (self.rtt.rtt_ns, self.rtt_end.rtt_ns);
        a.max(b) > 2.0 * a.min(b)
    }

    /// Median GB/s of one cell of the copy table.
    fn copy_gbps(&self, size: usize, temp: Temp, mode: &str, channels: usize) -> Option<f64> {
        self.copy_table
            .iter()
            .find(|r| r.size == size && r.temp == temp && r.mode == mode && r.channels == channels)
            .map(|r| r.gb_per_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(86_400 * 19_000);
        assert_eq!(utc_date(t), "2022-01-08");
        assert_eq!(utc_date(std::time::UNIX_EPOCH), "1970-01-01");
    }
}
