//! The side-by-side report: measures everything in one process, interleaving the
//! compared modes round by round (A, B, C, A, B, C, ...) so that a change of vCPU
//! placement during the run hits all of them alike, and computes per-round ratios whose
//! medians are reported. Renders JSON, Markdown (`BENCHMARKS.md`) and an SVG plot.

use crate::copy::{CopyBed, CopyMode, Temp};
use crate::engine_ops::{self, EngineBed, Latency};
use crate::handoff::{HandoffBed, HandoffMode, HandoffRun, BLOCK, INFLIGHT, RING};
use crate::recv::{Pump, RecvBed, RecvMode, DEFAULT_SOCKET_BYTES, PIPELINE_DEPTH};
use crate::rtt::{cross_core_rtt, Rtt};
use crate::stats::median;
use crate::{fmt_size, KIB, MIB};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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
    let days = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
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

/// A target from issue 5, checked against a figure.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// The JSON key.
    pub key: &'static str,
    /// The figure.
    pub value: f64,
    /// `>=` or `<=`.
    pub op: &'static str,
    /// The bound.
    pub bound: f64,
    /// When it applies (empty: always).
    pub condition: &'static str,
    /// Whether the condition holds in this run.
    pub applies: bool,
    /// Whether the figure meets the bound.
    pub met: bool,
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

/// The copy modes of the table: `(mode, channels)`; `n` is the multi-channel count.
fn copy_modes(n: usize) -> Vec<(CopyMode, usize)> {
    let mut v = vec![
        (CopyMode::Cpu, 1),
        (CopyMode::DmaSync, 1),
        (CopyMode::DmaPipelined { inflight: 8 }, 1),
        (CopyMode::DmaSplit { cpu_fraction: 0.25 }, 1),
    ];
    if n > 1 {
        v.push((CopyMode::DmaSync, n));
        v.push((CopyMode::DmaPipelined { inflight: 8 }, n));
    }
    v
}

/// Measures the copy table, interleaving modes within each size and round.
pub fn measure_copies(scale: &Scale, log: &mut dyn FnMut(&str)) -> Result<Vec<CopyRow>, String> {
    let n = dmaengine::cpu::process_affinity().len().max(2);
    let spin = dmaengine::DEFAULT_SPIN;
    let mut beds: BTreeMap<usize, CopyBed> = BTreeMap::new();
    for (_, ch) in copy_modes(n) {
        if let std::collections::btree_map::Entry::Vacant(e) = beds.entry(ch) {
            e.insert(CopyBed::new(ch, scale.cold_pool, spin)?);
        }
    }
    let mut samples: BTreeMap<(usize, usize, usize, usize), Vec<f64>> = BTreeMap::new();
    let modes = copy_modes(n);
    for round in 0..scale.copy_rounds.max(1) {
        log(&format!(
            "copy round {}/{}",
            round + 1,
            scale.copy_rounds.max(1)
        ));
        for (ti, temp) in [Temp::Hot, Temp::Cold].into_iter().enumerate() {
            for (si, &size) in scale.copy_sizes.iter().enumerate() {
                if temp == Temp::Cold && size < 4 * KIB {
                    continue; // a cold 64-byte copy measures the cache miss, not the copy
                }
                for (mi, &(mode, ch)) in modes.iter().enumerate() {
                    let bed = beds.get_mut(&ch).expect("bed per channel count");
                    let mode = match mode {
                        CopyMode::DmaPipelined { inflight } => CopyMode::DmaPipelined {
                            inflight: inflight.min(bed.max_inflight(size)),
                        },
                        m => m,
                    };
                    let gbps = bed.measure(mode, size, temp, scale.copy_time, 3);
                    samples.entry((ti, si, mi, ch)).or_default().push(gbps);
                }
            }
        }
    }
    Ok(samples
        .into_iter()
        .map(|((ti, si, mi, ch), mut v)| CopyRow {
            size: scale.copy_sizes[si],
            temp: [Temp::Hot, Temp::Cold][ti],
            channels: ch,
            mode: modes[mi].0.to_string(),
            gb_per_s: median(&mut v),
        })
        .collect())
}

/// Runs `modes` over `bed` for `rounds` interleaved rounds; returns each mode's results
/// per round (outer index: mode).
fn interleave(
    bed: &mut RecvBed,
    modes: &[RecvMode],
    read: usize,
    bytes: usize,
    rounds: usize,
) -> Vec<Vec<crate::recv::StreamResult>> {
    let mut out = vec![Vec::with_capacity(rounds); modes.len()];
    // A mode that runs right after a DMA mode finds the shared ring's cache lines on the
    // other core: every measured run starts after an unmeasured one of its own mode (at
    // least a ring's worth), and the order changes every round.
    let settle = (bytes / 8).clamp(DEFAULT_SOCKET_BYTES, 8 * MIB);
    for round in 0..rounds.max(1) {
        for i in round_order(modes.len(), round) {
            bed.run(modes[i], read, settle);
            out[i].push(bed.run(modes[i], read, bytes));
        }
    }
    out
}

/// The order of `n` modes in round `round`: a different stride through them every round
/// (strides coprime with `n`, so each is a permutation), so no mode always follows the
/// same one.
fn round_order(n: usize, round: usize) -> Vec<usize> {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let strides: Vec<usize> = (1..n.max(2)).filter(|&s| gcd(s, n) == 1).collect();
    let stride = strides[(round / n.max(1)) % strides.len()];
    (0..n).map(|k| (round + k * stride) % n.max(1)).collect()
}

fn summarize(
    mtu: usize,
    read: usize,
    mode: RecvMode,
    runs: &[crate::recv::StreamResult],
) -> RecvRow {
    let mut t: Vec<f64> = runs.iter().map(|r| r.mib_per_s()).collect();
    let mut c: Vec<f64> = runs.iter().map(|r| r.cpu_us_per_mib()).collect();
    RecvRow {
        mtu,
        read_size: read,
        mode,
        mib_per_s: median(&mut t),
        cpu_us_per_mib: median(&mut c),
    }
}

/// Median over rounds of `f(a_round) / f(b_round)`.
fn ratio(
    a: &[crate::recv::StreamResult],
    b: &[crate::recv::StreamResult],
    f: fn(&crate::recv::StreamResult) -> f64,
) -> f64 {
    let mut v: Vec<f64> = a.iter().zip(b).map(|(x, y)| f(x) / f(y)).collect();
    median(&mut v)
}

/// The headline comparison: every mode at MTU 65535 and 64 KiB reads, interleaved.
pub fn measure_headline(scale: &Scale, log: &mut dyn FnMut(&str)) -> Result<Headline, String> {
    let (mtu, read) = (65535, 64 * KIB);
    let modes = RecvMode::ALL;
    let mut bed = RecvBed::new(mtu, DEFAULT_SOCKET_BYTES, read, Pump::SameThread, &modes)?;
    // Warm-up: the connection, the caches, and the adaptive mode's first estimates.
    interleave(&mut bed, &modes, read, scale.headline.1 / 4 + KIB, 1);
    let stats = |bed: &RecvBed, mode| bed.netdma(mode).map(|n| n.stats());
    let auto_before = stats(&bed, RecvMode::Auto);
    let pauto_before = stats(&bed, RecvMode::PipelinedAuto);
    log(&format!(
        "recv headline: {} rounds x {} modes x {}",
        scale.headline.0,
        modes.len(),
        fmt_size(scale.headline.1)
    ));
    let runs = interleave(&mut bed, &modes, read, scale.headline.1, scale.headline.0);
    let auto_after = stats(&bed, RecvMode::Auto);
    let pauto_after = stats(&bed, RecvMode::PipelinedAuto);
    let idx = |m: RecvMode| modes.iter().position(|&x| x == m).expect("mode run");
    let thr = |r: &crate::recv::StreamResult| r.mib_per_s();
    let cpu = |r: &crate::recv::StreamResult| r.cpu_us_per_mib();
    let cpu_path = &runs[idx(RecvMode::NetDmaCpu)];
    let (best_dma_mode, recv_dma_throughput_ratio) = modes
        .iter()
        .filter(|m| m.is_dma())
        .map(|&m| (m, ratio(&runs[idx(m)], cpu_path, thr)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("at least one DMA mode");
    let split =
        |before: Option<netdma::RecvStats>, after: Option<netdma::RecvStats>| match (before, after)
        {
            (Some(b), Some(a)) => (
                a.dma_bytes.saturating_sub(b.dma_bytes),
                a.cpu_bytes.saturating_sub(b.cpu_bytes),
            ),
            _ => (0, 0),
        };
    Ok(Headline {
        mtu,
        read_size: read,
        rounds: scale.headline.0,
        modes: modes
            .iter()
            .map(|&m| summarize(mtu, read, m, &runs[idx(m)]))
            .collect(),
        recv_below_copybreak_ratio: ratio(cpu_path, &runs[idx(RecvMode::Plain)], thr),
        auto_throughput_ratio: ratio(&runs[idx(RecvMode::Auto)], cpu_path, thr),
        pipelined_auto_throughput_ratio: ratio(&runs[idx(RecvMode::PipelinedAuto)], cpu_path, thr),
        recv_dma_throughput_ratio,
        best_dma_mode,
        nocopy_floor_ratio: ratio(&runs[idx(RecvMode::NoCopy)], cpu_path, cpu),
        app_cpu_per_mib_ratio: ratio(&runs[idx(best_dma_mode)], cpu_path, cpu),
        auto_dma_bytes: split(auto_before, auto_after),
        pipelined_auto_dma_bytes: split(pauto_before, pauto_after),
    })
}

/// The per-size receive table.
pub fn measure_recv_table(
    scale: &Scale,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<RecvRow>, String> {
    let modes = RecvMode::ALL;
    let max_read = scale.table_reads.iter().copied().max().unwrap_or(KIB);
    let mut rows = Vec::new();
    for &mtu in &scale.table_mtus {
        log(&format!("recv table: MTU {mtu}"));
        let mut bed = RecvBed::new(
            mtu,
            DEFAULT_SOCKET_BYTES,
            max_read,
            Pump::SameThread,
            &modes,
        )?;
        interleave(&mut bed, &modes, max_read, MIB, 1);
        for &read in &scale.table_reads {
            let runs = interleave(&mut bed, &modes, read, scale.table.1, scale.table.0);
            for (i, &m) in modes.iter().enumerate() {
                rows.push(summarize(mtu, read, m, &runs[i]));
            }
        }
    }
    Ok(rows)
}

/// The ring hand-off: floor, CPU and DMA interleaved per round.
pub fn measure_handoff(scale: &Scale, log: &mut dyn FnMut(&str)) -> Result<Handoff, String> {
    let (rounds, blocks) = scale.handoff;
    log(&format!(
        "ring hand-off: {rounds} rounds x {} modes x {blocks} blocks",
        HandoffMode::ALL.len()
    ));
    let mut bed = HandoffBed::new(dmaengine::DEFAULT_SPIN)?;
    let modes = HandoffMode::ALL;
    for &m in &modes {
        bed.run(m, blocks.min(64)); // warm-up
    }
    let mut runs: Vec<Vec<HandoffRun>> = vec![Vec::new(); modes.len()];
    for round in 0..rounds {
        for i in round_order(modes.len(), round) {
            bed.run(modes[i], RING / BLOCK); // settle: a ring's worth in this mode
            runs[i].push(bed.run(modes[i], blocks));
            if modes[i] != HandoffMode::Floor && !bed.verify() {
                return Err(format!(
                    "ring hand-off: a block arrived corrupted ({})",
                    modes[i]
                ));
            }
        }
    }
    let idx = |m: HandoffMode| modes.iter().position(|&x| x == m).expect("mode run");
    let med = |v: &[HandoffRun], f: fn(&HandoffRun) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        median(&mut x)
    };
    let per_round = |f: fn(&HandoffRun) -> f64| {
        let (dma, cpu) = (&runs[idx(HandoffMode::Dma)], &runs[idx(HandoffMode::Cpu)]);
        let mut v: Vec<f64> = dma.iter().zip(cpu).map(|(d, c)| f(d) / f(c)).collect();
        median(&mut v)
    };
    Ok(Handoff {
        rounds,
        blocks,
        modes: modes
            .iter()
            .map(|&m| {
                let r = &runs[idx(m)];
                (
                    m,
                    HandoffRun {
                        write_ns: med(r, |x| x.write_ns),
                        other_ns: med(r, |x| x.other_ns),
                    },
                )
            })
            .collect(),
        write_ratio: per_round(|x| x.write_ns),
        thread_ratio: per_round(HandoffRun::total_ns),
    })
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
    /// The targets of issue 5, checked.
    pub fn check_targets(&self) -> Vec<Target> {
        let near = "cross_core_rtt_ns <= 250";
        let rtt_ok = self.rtt.rtt_ns <= 250.0;
        let h = &self.headline;
        let t = |key, value: f64, op, bound: f64, condition, applies| Target {
            key,
            value,
            op,
            bound,
            condition,
            applies,
            met: if op == ">=" {
                value >= bound
            } else {
                value <= bound
            },
        };
        vec![
            t(
                "recv_below_copybreak_ratio",
                h.recv_below_copybreak_ratio,
                ">=",
                0.98,
                "",
                true,
            ),
            t(
                "auto_throughput_ratio",
                h.auto_throughput_ratio,
                ">=",
                0.97,
                "",
                true,
            ),
            t(
                "recv_dma_throughput_ratio",
                h.recv_dma_throughput_ratio,
                ">=",
                1.10,
                near,
                rtt_ok,
            ),
            t(
                "app_cpu_per_mib_ratio",
                h.app_cpu_per_mib_ratio,
                "<=",
                1.15 * h.nocopy_floor_ratio,
                near,
                rtt_ok,
            ),
            t(
                "find_channel_ns",
                self.find_channel_ns,
                "<=",
                10.0,
                "",
                true,
            ),
            t(
                "submit_ns_per_desc",
                self.submit_ns_per_desc,
                "<=",
                30.0,
                "",
                true,
            ),
            t(
                "completion_p50_ns",
                self.completion.p50_ns,
                "<=",
                300.0,
                "worker spinning",
                true,
            ),
        ]
    }

    /// The JSON document: the flat keys of issue 5 plus every table.
    pub fn to_json(&self) -> Value {
        let h = &self.headline;
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_owned(), v);
        };
        put("cross_core_rtt_ns", json!(self.rtt.rtt_ns));
        put("cross_core_rtt_end_ns", json!(self.rtt_end.rtt_ns));
        put("placement_changed", json!(self.placement_changed()));
        put(
            "recv_below_copybreak_ratio",
            json!(h.recv_below_copybreak_ratio),
        );
        put("auto_throughput_ratio", json!(h.auto_throughput_ratio));
        put(
            "pipelined_auto_throughput_ratio",
            json!(h.pipelined_auto_throughput_ratio),
        );
        put(
            "recv_dma_throughput_ratio",
            json!(h.recv_dma_throughput_ratio),
        );
        put("nocopy_floor_ratio", json!(h.nocopy_floor_ratio));
        put("app_cpu_per_mib_ratio", json!(h.app_cpu_per_mib_ratio));
        put("find_channel_ns", json!(self.find_channel_ns));
        put("submit_ns_per_desc", json!(self.submit_ns_per_desc));
        put(
            "submit_ns_per_desc_unbatched",
            json!(self.submit_ns_per_desc_unbatched),
        );
        put("completion_p50_ns", json!(self.completion.p50_ns));
        put("completion_p99_ns", json!(self.completion.p99_ns));
        put("dsa_submit_ns_per_desc", json!(self.dsa_submit_ns_per_desc));
        put(
            "dsa_submit_ns_per_desc_unbatched",
            json!(self.dsa_submit_ns_per_desc_unbatched),
        );
        put("dsa_completion_p50_ns", json!(self.dsa_completion.p50_ns));
        put("dsa_completion_p99_ns", json!(self.dsa_completion.p99_ns));
        put("best_dma_mode", json!(h.best_dma_mode.name()));
        put("handoff_write_ratio", json!(self.handoff.write_ratio));
        put("handoff_thread_ratio", json!(self.handoff.thread_ratio));
        put(
            "handoff",
            serde_json::to_value(&self.handoff).unwrap_or(Value::Null),
        );
        put("headline", serde_json::to_value(h).unwrap_or(Value::Null));
        put(
            "copy_table",
            serde_json::to_value(&self.copy_table).unwrap_or(Value::Null),
        );
        put(
            "recv_table",
            serde_json::to_value(&self.recv_table).unwrap_or(Value::Null),
        );
        put(
            "targets",
            serde_json::to_value(&self.targets).unwrap_or(Value::Null),
        );
        put(
            "machine",
            serde_json::to_value(&self.machine).unwrap_or(Value::Null),
        );
        put("scale", json!(self.scale));
        put("elapsed_s", json!(self.elapsed_s));
        Value::Object(m)
    }

    /// A short text summary for the terminal.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let h = &self.headline;
        s += &format!(
            "cross-core round trip: {:.0} ns at start, {:.0} ns at end{}\n",
            self.rtt.rtt_ns,
            self.rtt_end.rtt_ns,
            if self.placement_changed() {
                " (the host moved the vCPUs during the run)"
            } else {
                ""
            }
        );
        s += &format!("MTU {} / {} reads:\n", h.mtu, fmt_size(h.read_size));
        for r in &h.modes {
            s += &format!(
                "  {:<18} {:>9.0} MiB/s {:>8.1} us/MiB\n",
                r.mode.name(),
                r.mib_per_s,
                r.cpu_us_per_mib
            );
        }
        for t in &self.targets {
            s += &format!(
                "{:<28} {:>10.3}  target {} {:.3}{}: {}\n",
                t.key,
                t.value,
                t.op,
                t.bound,
                if t.condition.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", t.condition)
                },
                status(t)
            );
        }
        s += &format!(
            "nocopy_floor_ratio           {:>10.3}\n",
            h.nocopy_floor_ratio
        );
        s += &format!(
            "handoff_write_ratio          {:>10.3}  (ring writes with DMA reading / with the CPU copying)\n",
            self.handoff.write_ratio
        );
        s += &format!("took {:.1} s\n", self.elapsed_s);
        s
    }

    fn copy_gbps(&self, size: usize, temp: Temp, mode: &str, channels: usize) -> Option<f64> {
        self.copy_table
            .iter()
            .find(|r| r.size == size && r.temp == temp && r.mode == mode && r.channels == channels)
            .map(|r| r.gb_per_s)
    }

    /// `BENCHMARKS.md`, linking the plot at `svg_name` (relative to the file).
    pub fn to_markdown(&self, svg_name: &str) -> String {
        let h = &self.headline;
        let m = &self.machine;
        let mut s = String::new();
        s += "# Benchmarks\n\n";
        s += "Generated by `cargo run --release -p netdma-bench --bin report -- ";
        s += if self.scale == "quick" {
            "--quick "
        } else {
            ""
        };
        s += "--write`; every figure below was measured by that run. Do not edit by hand: \
              rerun it. The criterion benches (`cargo bench -p netdma-bench`) measure the same \
              code paths (`bench/src/`) one by one.\n\n";
        s += "## Machine\n\n| | |\n| --- | --- |\n";
        s += &format!("| CPU | {} |\n", m.cpu_model);
        s += &format!("| CPUs usable | {} |\n", m.cpus);
        s += &format!("| last-level cache | {} |\n", fmt_size(m.llc_bytes));
        s += &format!("| kernel | {} |\n", m.kernel);
        s += &format!("| rustc | {} |\n", m.rustc);
        s += &format!("| date (UTC) | {} |\n", m.date);
        s += &format!(
            "| scale | `{}`, {:.0} s of measurement |\n\n",
            self.scale, self.elapsed_s
        );

        s += "## Cross-core round trip\n\n";
        s +=
            &format!(
            "A cache line bounced between threads pinned to CPUs {} and {}{}: **{:.0} ns** per \
             round trip at the start of the run, {:.0} ns at the end. Around 100-150 ns the \
             host has put the two vCPUs on cores that share a cache; around 450-500 ns it has \
             not, and handing a copy to the other core then costs more than it saves \
             (DESIGN.md). The targets marked *when rtt <= 250* apply only in the first case.\n\n",
            self.rtt.cpus.0,
            self.rtt.cpus.1,
            if self.rtt.pinned { "" } else { " (pinning failed)" },
            self.rtt.rtt_ns,
            self.rtt_end.rtt_ns
        );
        if self.placement_changed() {
            s += "**The host moved the vCPUs during this run** (the round trip at the end \
                  differs from the start by more than 2x): the figures below mix placements, \
                  and the targets are judged against the start.\n\n";
        }

        s += "## Targets (issue 5)\n\n| key | measured | target | applies | result |\n| --- | --- | --- | --- | --- |\n";
        for t in &self.targets {
            s += &format!(
                "| `{}` | {:.3} | {} {:.3}{} | {} | {} |\n",
                t.key,
                t.value,
                t.op,
                t.bound,
                if t.key == "app_cpu_per_mib_ratio" {
                    " (1.15 x `nocopy_floor_ratio`)"
                } else {
                    ""
                },
                if t.condition.is_empty() {
                    "always".to_owned()
                } else if t.applies {
                    format!("yes ({})", t.condition)
                } else {
                    format!("no ({} is false)", t.condition)
                },
                status(t)
            );
        }
        s += "\n";
        s += &self.target_notes();

        s += &format!(
            "## Receive, side by side (MTU {}, {} reads)\n\n",
            h.mtu,
            fmt_size(h.read_size)
        );
        s += &format!(
            "{} interleaved rounds (every mode once per round, same connection); medians. \
             Ratios are medians of per-round ratios. One thread drives both stacks (the sender \
             only claims send-buffer space, it copies nothing); *receiving CPU* is the time \
             that thread spends in the server stack's poll and in the reads (monotonic clock \
             around each, scaled by the thread's CPU share from `CLOCK_THREAD_CPUTIME_ID` \
             over the run, since reading the thread CPU clock per poll would cost more than \
             the work measured). The DMA worker's own CPU time is not counted: that is the point of \
             offload.\n\n",
            h.rounds
        );
        s += "| mode | MiB/s | receiving CPU us/MiB | vs netdma-cpu, throughput | vs netdma-cpu, CPU |\n| --- | --- | --- | --- | --- |\n";
        let base = h.modes.iter().find(|r| r.mode == RecvMode::NetDmaCpu);
        for r in &h.modes {
            let (bt, bc) = base.map_or((f64::NAN, f64::NAN), |b| (b.mib_per_s, b.cpu_us_per_mib));
            s += &format!(
                "| {} | {:.0} | {:.1} | {:.3} | {:.3} |\n",
                r.mode.name(),
                r.mib_per_s,
                r.cpu_us_per_mib,
                r.mib_per_s / bt,
                r.cpu_us_per_mib / bc
            );
        }
        s += &format!(
            "\nDuring these rounds `netdma-auto` sent {} by DMA and {} by the CPU; \
             `netdma-pipelined-auto` sent {} by DMA and {} by the CPU, at {:.3} of \
             `netdma-cpu`'s throughput (`pipelined_auto_throughput_ratio`): when it copies \
             with the CPU it fills {} posted buffers in turn, where `netdma-cpu` reuses one \
             hot buffer. Modes: \
             `smoltcp` = `recv_slice`; `netdma-cpu` = `NetDma::recv` with the copybreak at \
             `usize::MAX`; `netdma-dma` = copybreak 0 (every read offloaded, 64 KiB \
             descriptors); `netdma-dma-split` = the same with `cpu_fraction = 0.25`; \
             `netdma-pipelined` = `Pipeline` with {} reads of {} posted, copybreak 0; \
             `netdma-auto` and `netdma-pipelined-auto` = `NetDma::recv` and `Pipeline` with \
             `tcp_dma_copybreak = \"auto\"`; `nocopy` = consuming without copying (the \
             floor).\n\n",
            fmt_bytes(h.auto_dma_bytes.0),
            fmt_bytes(h.auto_dma_bytes.1),
            fmt_bytes(h.pipelined_auto_dma_bytes.0),
            fmt_bytes(h.pipelined_auto_dma_bytes.1),
            h.pipelined_auto_throughput_ratio,
            PIPELINE_DEPTH,
            PIPELINE_DEPTH,
            fmt_size(h.read_size)
        );

        s += &self.handoff_markdown();

        s += "## Engine\n\n| figure | value |\n| --- | --- |\n";
        s += &format!(
            "| `find_channel` | {:.1} ns per lookup |\n",
            self.find_channel_ns
        );
        s += &format!(
            "| submit, {} descriptors then one `issue_pending` | {:.1} ns per descriptor |\n",
            self.submit_batch, self.submit_ns_per_desc
        );
        s += &format!(
            "| submit, `issue_pending` after each | {:.1} ns per descriptor |\n",
            self.submit_ns_per_desc_unbatched
        );
        s += &format!(
            "| completion, doorbell to completion seen (64 B copy, worker spinning) | p50 {:.0} ns, p99 {:.0} ns ({} samples) |\n",
            self.completion.p50_ns, self.completion.p99_ns, self.completion.samples
        );
        s += &format!(
            "| emulated DSA: submit, {} descriptors then one doorbell (one BATCH) | {:.1} ns per descriptor |\n",
            self.submit_batch, self.dsa_submit_ns_per_desc
        );
        s += &format!(
            "| emulated DSA: submit, one doorbell (portal write) each | {:.1} ns per descriptor |\n",
            self.dsa_submit_ns_per_desc_unbatched
        );
        s += &format!(
            "| emulated DSA: completion, doorbell to completion record seen (64 B copy, portal thread spinning) | p50 {:.0} ns, p99 {:.0} ns ({} samples) |\n\n",
            self.dsa_completion.p50_ns, self.dsa_completion.p99_ns, self.dsa_completion.samples
        );

        s += "## Copy throughput (GB/s)\n\n";
        s += &format!(
            "![throughput against size]({svg_name})\n\nMedian GB/s (10^9 B/s) of each mode, \
             interleaved per size. `dma-sync`: submit, issue, wait; `dma-pipelined-8`: 8 \
             copies in flight behind one doorbell; `dma-split-0.25`: the CPU copies the last \
             quarter while DMA copies the rest. Cold buffers rotate over {} (source and \
             destination each), beyond the last-level cache.\n\n",
            fmt_size(
                self.copy_table
                    .first()
                    .map_or(0, |_| 2 * m.llc_bytes)
                    .max(32 * MIB)
            )
        );
        let mut cols: Vec<(String, usize)> = Vec::new();
        for r in &self.copy_table {
            if !cols.iter().any(|(m, c)| *m == r.mode && *c == r.channels) {
                cols.push((r.mode.clone(), r.channels));
            }
        }
        for temp in [Temp::Hot, Temp::Cold] {
            let sizes: Vec<usize> = {
                let mut v: Vec<usize> = self
                    .copy_table
                    .iter()
                    .filter(|r| r.temp == temp)
                    .map(|r| r.size)
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            };
            if sizes.is_empty() {
                continue;
            }
            s += &format!("**{temp}**\n\n| size |");
            for (mode, ch) in &cols {
                s += &format!(" {mode} ({ch} ch) |");
            }
            s += "\n| --- |";
            s += &" --- |".repeat(cols.len());
            s += "\n";
            for size in sizes {
                s += &format!("| {} |", fmt_size(size));
                for (mode, ch) in &cols {
                    match self.copy_gbps(size, temp, mode, *ch) {
                        Some(v) => s += &format!(" {v:.2} |"),
                        None => s += " |",
                    }
                }
                s += "\n";
            }
            s += "\n";
        }

        s += "## Receive by MTU and read size\n\n";
        let mtus: Vec<usize> = {
            let mut v: Vec<usize> = self.recv_table.iter().map(|r| r.mtu).collect();
            v.dedup();
            v
        };
        for mtu in mtus {
            s += &format!("**MTU {mtu}**: MiB/s / receiving CPU us per MiB\n\n| read |");
            for mode in RecvMode::ALL {
                s += &format!(" {} |", mode.name());
            }
            s += "\n| --- |";
            s += &" --- |".repeat(RecvMode::ALL.len());
            s += "\n";
            let mut reads: Vec<usize> = self
                .recv_table
                .iter()
                .filter(|r| r.mtu == mtu)
                .map(|r| r.read_size)
                .collect();
            reads.dedup();
            for read in reads {
                s += &format!("| {} |", fmt_size(read));
                for mode in RecvMode::ALL {
                    match self
                        .recv_table
                        .iter()
                        .find(|r| r.mtu == mtu && r.read_size == read && r.mode == mode)
                    {
                        Some(r) => s += &format!(" {:.0} / {:.0} |", r.mib_per_s, r.cpu_us_per_mib),
                        None => s += " |",
                    }
                }
                s += "\n";
            }
            s += "\n";
        }
        s += "## JSON\n\n`--json` prints every figure above as one JSON object (flat keys of \
              issue 5 at the top level, tables below them).\n";
        s
    }

    /// Whether the cross-core round trip changed by more than 2x between the start and
    /// the end of the run (the host moved the vCPUs).
    pub fn placement_changed(&self) -> bool {
        let (a, b) = (self.rtt.rtt_ns, self.rtt_end.rtt_ns);
        a.max(b) > 2.0 * a.min(b)
    }

    /// The ring hand-off section.
    fn handoff_markdown(&self) -> String {
        let h = &self.handoff;
        let mut s = String::new();
        s += "## Ring hand-off: where the copy's cost goes\n\n";
        s += &format!(
            "One thread plays smoltcp's receive side: it writes {} blocks into a {} ring (a \
             socket's receive ring, filled from packets), then copies each block out itself \
             (`cpu`), hands it to the software DMA device with up to {} copies in flight \
             (`dma`), or drops it (`floor`). {} interleaved rounds of {} blocks; medians of \
             the thread's nanoseconds per block.\n\n",
            fmt_size(BLOCK),
            fmt_size(RING),
            INFLIGHT,
            h.rounds,
            h.blocks
        );
        s += "| mode | writing the block into the ring | everything else | thread total |\n| --- | --- | --- | --- |\n";
        for (m, r) in &h.modes {
            s += &format!(
                "| {m} | {:.0} | {:.0} | {:.0} |\n",
                r.write_ns,
                r.other_ns,
                r.total_ns()
            );
        }
        let (floor, cpu, dma) = (
            h.mode(HandoffMode::Floor),
            h.mode(HandoffMode::Cpu),
            h.mode(HandoffMode::Dma),
        );
        s += &format!(
            "\nWith the engine reading the ring, rewriting it costs {:.2}x what it costs when the \
             thread copies the blocks out itself (`handoff_write_ratio`; {:.0} against {:.0} \
             ns, {:.0} with nobody reading): every ring line the engine read is shared with its \
             core, and must be taken back before it is written again. The thread's whole time \
             per block by DMA is {:.2}x its time copying itself (`handoff_thread_ratio`). On \
             this machine that cost is what a software engine on the other core cannot avoid; \
             a device reading memory, or an engine sharing the core's cache, pays less of \
             it.\n\n",
            h.write_ratio, dma.write_ns, cpu.write_ns, floor.write_ns, h.thread_ratio
        );
        s
    }

    /// Why each missed target was missed, from the figures of this run.
    fn target_notes(&self) -> String {
        let h = &self.headline;
        let mut s = String::new();
        let missed: Vec<&Target> = self
            .targets
            .iter()
            .filter(|t| t.applies && !t.met)
            .collect();
        if missed.is_empty() {
            return "Every applicable target is met in this run.\n\n".to_owned();
        }
        s += "What the figures say about the missed targets:\n\n";
        let cpu64 = self.copy_gbps(64 * KIB, Temp::Hot, "cpu", 1);
        let sync64 = self.copy_gbps(64 * KIB, Temp::Hot, "dma-sync", 1);
        let pipe64 = self.copy_gbps(64 * KIB, Temp::Hot, "dma-pipelined-8", 1);
        for t in missed {
            match t.key {
                "recv_dma_throughput_ratio" | "app_cpu_per_mib_ratio" => {
                    let ho = &self.handoff;
                    s += &format!(
                        "- `{}` = {:.3} ({} best): offload moves the copy off the receiving core \
                         but not its cost. The engine's copy is about as fast as the CPU's (64 KiB \
                         hot: CPU {}, DMA submit+wait {}, 8 in flight {} GB/s), but the ring lines \
                         it reads are then shared with its core, and smoltcp's next writes into \
                         the ring must take them back: the ring hand-off below measures those \
                         writes at {:.2}x their cost when the receiving thread copies itself, and \
                         the thread's whole time per 64 KiB block at {:.2}x. `NetDma::recv` also \
                         waits for its copies; the pipelined receive does not, which is why it \
                         is the best DMA mode.\n",
                        t.key,
                        t.value,
                        h.best_dma_mode.name(),
                        fmt_opt(cpu64),
                        fmt_opt(sync64),
                        fmt_opt(pipe64),
                        ho.write_ratio,
                        ho.thread_ratio
                    );
                }
                "auto_throughput_ratio" => {
                    s += &format!(
                        "- `auto_throughput_ratio` = {:.3}: the adaptive mode sent {} by DMA and {} \
                         by the CPU; what it costs is its probes of the losing path, its clock reads \
                         and lock, and run-to-run noise of a few percent on this shared machine.\n",
                        t.value,
                        fmt_bytes(h.auto_dma_bytes.0),
                        fmt_bytes(h.auto_dma_bytes.1)
                    );
                }
                "recv_below_copybreak_ratio" => {
                    s += &format!(
                        "- `recv_below_copybreak_ratio` = {:.3}: netdma's routing (lock, \
                         configuration read, counters) around the same `recv_slice` costs this much \
                         per {} read.\n",
                        t.value,
                        fmt_size(h.read_size)
                    );
                }
                "completion_p50_ns" => {
                    s += &format!(
                        "- `completion_p50_ns` = {:.0} (p99 {:.0}), target <= 300: doorbell to a \
                         completion seen by a spinning poller, on a device whose worker spins 2 ms \
                         before parking. The path crosses cores about three times (the doorbell's \
                         queue and its descriptor, then the completion counter), each half of the \
                         {:.0} ns round trip measured in this run; DESIGN.md's prototype saw \
                         180-200 ns for a bare hand-off in the near placement.\n",
                        self.completion.p50_ns, self.completion.p99_ns, self.rtt.rtt_ns
                    );
                }
                key => {
                    s += &format!(
                        "- `{key}` = {:.1}, target {} {:.1}.\n",
                        t.value, t.op, t.bound
                    );
                }
            }
        }
        s += "\n";
        s
    }

    /// The SVG plot of copy throughput against size (hot buffers, one channel).
    pub fn svg(&self) -> Result<String, String> {
        use plotters::prelude::*;
        let series: Vec<(&str, usize, RGBColor)> = vec![
            ("cpu", 1, RGBColor(220, 50, 32)),
            ("dma-sync", 1, RGBColor(0, 90, 181)),
            ("dma-pipelined-8", 1, RGBColor(26, 133, 55)),
            ("dma-split-0.25", 1, RGBColor(153, 79, 0)),
        ];
        let points = |mode: &str, ch: usize| -> Vec<(f64, f64)> {
            let mut v: Vec<(f64, f64)> = self
                .copy_table
                .iter()
                .filter(|r| r.temp == Temp::Hot && r.mode == mode && r.channels == ch)
                .map(|r| ((r.size as f64).log2(), r.gb_per_s))
                .filter(|p| p.1.is_finite())
                .collect();
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            v
        };
        let all: Vec<(f64, f64)> = series.iter().flat_map(|(m, c, _)| points(m, *c)).collect();
        if all.is_empty() {
            return Err("no copy figures to plot".to_owned());
        }
        let xmin = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
        let xmax = all
            .iter()
            .map(|p| p.0)
            .fold(f64::NEG_INFINITY, f64::max)
            .max(xmin + 1.0);
        let ymax = all.iter().map(|p| p.1).fold(0.0, f64::max).max(0.1) * 1.1;
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, (800, 480)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| e.to_string())?;
            let mut chart = ChartBuilder::on(&root)
                .caption(
                    "copy throughput, hot buffers, 1 channel (GB/s)",
                    ("sans-serif", 20),
                )
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(50)
                .build_cartesian_2d(xmin..xmax, 0.0..ymax)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("copy size")
                .y_desc("GB/s")
                .x_label_formatter(&|x| fmt_size(2f64.powf(*x).round() as usize))
                .draw()
                .map_err(|e| e.to_string())?;
            for (mode, ch, color) in &series {
                let pts = points(mode, *ch);
                if pts.is_empty() {
                    continue;
                }
                let c = *color;
                chart
                    .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(*mode)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
                chart
                    .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))
                    .map_err(|e| e.to_string())?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|e| e.to_string())?;
            root.present().map_err(|e| e.to_string())?;
        }
        Ok(out)
    }
}

fn status(t: &Target) -> &'static str {
    match (t.applies, t.met) {
        (true, true) => "met",
        (true, false) => "**missed**",
        (false, true) => "n/a (would be met)",
        (false, false) => "n/a (would be missed)",
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

fn fmt_bytes(b: u64) -> String {
    if b >= MIB as u64 {
        format!("{:.1} MiB", b as f64 / MIB as f64)
    } else {
        format!("{:.1} KiB", b as f64 / KIB as f64)
    }
}

#[cfg(test)]
mod order_tests {
    use super::round_order;

    #[test]
    fn every_round_is_a_permutation_and_predecessors_vary() {
        for n in 1..=8 {
            let mut followers = std::collections::BTreeSet::new();
            for round in 0..n * n {
                let mut order = round_order(n, round);
                for w in order.windows(2) {
                    followers.insert((w[0], w[1]));
                }
                order.sort_unstable();
                assert_eq!(order, (0..n).collect::<Vec<_>>(), "n {n} round {round}");
            }
            if n == 7 {
                // Every mode follows every other within n * n rounds.
                assert_eq!(followers.len(), n * (n - 1));
            }
        }
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
