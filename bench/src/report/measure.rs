//! The measurements. Compared modes run interleaved, round by round, and every ratio is a
//! median of per-round ratios, so a change of vCPU placement mid-run hits all modes alike.

use super::{CopyRow, Handoff, Headline, RecvRow, Scale};
use crate::copy::{CopyBed, CopyMode, Temp};
use crate::handoff::{HandoffBed, HandoffMode, HandoffRun, BLOCK, RING};
use crate::recv::{Pump, RecvBed, RecvMode, StreamResult, DEFAULT_SOCKET_BYTES};
use crate::stats::median;
use crate::{fmt_size, KIB, MIB};
use std::collections::BTreeMap;

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
) -> Vec<Vec<StreamResult>> {
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

fn summarize(mtu: usize, read: usize, mode: RecvMode, runs: &[StreamResult]) -> RecvRow {
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
fn ratio(a: &[StreamResult], b: &[StreamResult], f: fn(&StreamResult) -> f64) -> f64 {
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
    let thr = |r: &StreamResult| r.mib_per_s();
    let cpu = |r: &StreamResult| r.cpu_us_per_mib();
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
