//! Engine operations: `find_channel` per lookup, submission per descriptor (batched behind
//! one doorbell or not), and completion latency (doorbell to completion seen, worker
//! spinning; p50/p99 printed from a custom loop, criterion reports the mean).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use netdma_bench::engine_ops::{self, EngineBed};
use std::time::Duration;

fn engine(c: &mut Criterion) {
    let batch = 64;
    let mut bed = EngineBed::new(2, Duration::from_millis(2), batch).expect("engine bed");
    let mut g = c.benchmark_group("engine");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    g.bench_function("find_channel", |b| b.iter(|| bed.find_channel()));

    let chan = bed.private_channel().expect("private channel");
    for batched in [true, false] {
        g.throughput(Throughput::Elements(batch as u64));
        let id = if batched { "batched" } else { "unbatched" };
        g.bench_function(BenchmarkId::new("submit", id), |b| {
            b.iter_custom(|iters| {
                let ns: u64 = (0..iters)
                    .map(|_| bed.submit_batch(&chan, batch, batched))
                    .sum();
                Duration::from_nanos(ns)
            })
        });
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("completion", |b| {
        b.iter_custom(|iters| {
            Duration::from_nanos((0..iters).map(|_| bed.completion_once(&chan)).sum())
        })
    });
    g.finish();
    let lat = engine_ops::completion_latency(&mut bed, &chan, 20_000);
    println!(
        "engine/completion latency (custom loop, {} samples): p50 {:.0} ns, p99 {:.0} ns",
        lat.samples, lat.p50_ns, lat.p99_ns
    );
}

criterion_group!(benches, engine);
criterion_main!(benches);
