//! CPU memcpy against software DMA: synchronous, pipelined (8 in flight) and split,
//! 64 B to 4 MiB, hot and cold buffers, 1 and N channels.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use netdma_bench::copy::{CopyBed, CopyMode, Temp};
use netdma_bench::{fmt_size, KIB, MIB};
use std::time::Duration;

fn copy(c: &mut Criterion) {
    let n = dmaengine::cpu::process_affinity().len().max(2);
    let sizes: Vec<usize> = std::iter::successors(Some(64usize), |s| Some(s * 4))
        .take_while(|&s| s <= 4 * MIB)
        .collect();
    let pool = CopyBed::cold_pool_bytes();
    for channels in [1, n] {
        let mut bed = CopyBed::new(channels, pool, dmaengine::DEFAULT_SPIN).expect("copy bed");
        let mut modes = vec![CopyMode::DmaSync, CopyMode::DmaPipelined { inflight: 8 }];
        if channels == 1 {
            modes.insert(0, CopyMode::Cpu);
            modes.push(CopyMode::DmaSplit { cpu_fraction: 0.25 });
        }
        for temp in [Temp::Hot, Temp::Cold] {
            let mut g = c.benchmark_group(format!("copy/{temp}/{channels}ch"));
            g.sample_size(10)
                .warm_up_time(Duration::from_millis(200))
                .measurement_time(Duration::from_millis(800));
            for &size in &sizes {
                if temp == Temp::Cold && size < 4 * KIB {
                    continue;
                }
                for &mode in &modes {
                    let mode = match mode {
                        CopyMode::DmaPipelined { inflight } => CopyMode::DmaPipelined {
                            inflight: inflight.min(bed.max_inflight(size)),
                        },
                        m => m,
                    };
                    g.throughput(Throughput::Bytes(mode.bytes_per_op(size) as u64));
                    g.bench_function(BenchmarkId::new(mode.to_string(), fmt_size(size)), |b| {
                        b.iter(|| bed.run(mode, size, temp))
                    });
                }
            }
            g.finish();
        }
    }
}

criterion_group!(benches, copy);
criterion_main!(benches);
