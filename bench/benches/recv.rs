//! The receive path over the in-memory link at MTU 1500, 9000 and 65535: every
//! [`RecvMode`] (smoltcp `recv_slice`, netdma CPU path, DMA path, split, adaptive, and
//! the no-copy floor) for reads of 1 KiB to 1 MiB. Throughput is wall-clock; the
//! receiving side's CPU per MiB is printed per benchmark (criterion cannot report it).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use netdma_bench::recv::{Pump, RecvBed, RecvMode, StreamResult, DEFAULT_SOCKET_BYTES};
use netdma_bench::{fmt_size, KIB, MIB};
use std::time::Duration;

/// Bytes streamed per criterion iteration.
const STREAM: usize = 4 * MIB;

fn recv(c: &mut Criterion) {
    let reads = [KIB, 4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, MIB];
    for mtu in [1500, 9000, 65535] {
        let mut bed = RecvBed::new(
            mtu,
            DEFAULT_SOCKET_BYTES,
            MIB,
            Pump::SameThread,
            &RecvMode::ALL,
        )
        .expect("recv bed");
        let mut g = c.benchmark_group(format!("recv/mtu{mtu}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(800))
            .throughput(Throughput::Bytes(STREAM as u64));
        for read in reads {
            for mode in RecvMode::ALL {
                let mut total = StreamResult::default();
                g.bench_function(BenchmarkId::new(mode.name(), fmt_size(read)), |b| {
                    b.iter_custom(|iters| {
                        let mut wall = 0;
                        for _ in 0..iters {
                            let r = bed.run(mode, read, STREAM);
                            wall += r.wall_ns;
                            total.bytes += r.bytes;
                            total.wall_ns += r.wall_ns;
                            total.recv_cpu_ns += r.recv_cpu_ns;
                        }
                        Duration::from_nanos(wall)
                    })
                });
                println!(
                    "recv/mtu{mtu}/{}/{}: receiving CPU {:.1} us/MiB",
                    mode.name(),
                    fmt_size(read),
                    total.cpu_us_per_mib()
                );
            }
        }
        g.finish();
    }
}

criterion_group!(benches, recv);
criterion_main!(benches);
