//! Measures the receive path at candidate copybreaks and picks `tcp_dma_copybreak`.
//!
//! For each candidate read size S, the same smoltcp connection (in-memory link, a sender
//! thread keeping it full) is read with S-byte reads once with every read copied by the
//! CPU (copybreak above S) and once with every read offloaded (copybreak 0), interleaved
//! and repeated, so both paths see the same machine state. For each it records the
//! receiving thread's CPU time per MiB (`netdma::thread_cpu_ns`, smoltcp processing
//! included, as a real receiver pays it) and the throughput, and takes the medians.
//!
//! The chosen copybreak is the smallest S from which DMA is no worse than the CPU at S and
//! at every larger candidate: CPU per MiB at most (1 + tolerance) times the CPU path's,
//! and throughput at least (1 - tolerance) times. If no size qualifies, offload never
//! pays here, and the value written is [`Copybreak::NEVER`] (9223372036854775807, the
//! largest integer TOML holds, larger than any read).
//!
//! ```text
//! cargo run --release --example copybreak_tune -- --write netdma.toml
//! cargo run --release --example copybreak_tune -- --json
//! ```
//!
//! `--write FILE` updates only `tcp_dma_copybreak` in FILE, keeping its other keys and
//! comments (a missing file is created). The echo server reads it with `--config FILE`.

use clap::Parser;
use netdma::config::{Copybreak, NetDmaConfig};
use netdma::pair::StackPair;
use netdma::{thread_cpu_ns, NetDma};
use netdma_bench::stats::median;
use netdma_suite::setup::{build_netdma, DmaOptions};
use netdma_suite::size::{human_bytes, parse_size, parse_usize_at_least};
use netdma_suite::tune::update_copybreak;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Measure CPU vs DMA receive copies and pick tcp_dma_copybreak.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Write the chosen copybreak into this netdma.toml (other keys and comments kept).
    #[arg(long, value_name = "FILE")]
    write: Option<PathBuf>,
    /// Configuration to measure with (engine, chunk size, ...); default: the --write file
    /// if it exists, else the defaults. NETDMA_* variables apply on top.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Number of DMA channels (overrides the configuration).
    #[arg(long, value_name = "N")]
    channels: Option<usize>,
    /// Candidate read sizes / copybreaks, comma-separated (accepts KiB).
    #[arg(long, value_name = "LIST", value_delimiter = ',',
          default_value = "1KiB,2KiB,4KiB,8KiB,16KiB,32KiB,64KiB,256KiB",
          value_parser = read_size)]
    sizes: Vec<usize>,
    /// Bytes received per measurement (accepts KiB, MiB).
    #[arg(long, value_name = "N", default_value = "32MiB", value_parser = parse_size)]
    bytes: u64,
    /// Measurements per size and path (the median is used).
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// IP MTU of the in-memory link (68..=65535).
    #[arg(long, value_name = "N", default_value_t = 65535,
          value_parser = clap::value_parser!(u32).range(68..=65535))]
    mtu: u32,
    /// How much worse DMA may be and still count as "no worse" (0.05 = 5%).
    #[arg(long, default_value_t = 0.05, value_parser = tolerance)]
    tolerance: f64,
    /// Print one JSON object with every measurement on stdout, and nothing else there.
    #[arg(long)]
    json: bool,
}

fn read_size(s: &str) -> Result<usize, String> {
    let v = parse_usize_at_least(s, 1)?;
    if v > 16 << 20 {
        return Err(format!("read size {s:?} is too large: at most 16MiB"));
    }
    Ok(v)
}

fn tolerance(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("invalid tolerance {s:?}: expected a number like 0.05"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("tolerance {v} outside 0.0..=1.0"))
    }
}

/// Measurements of one path at one size: (CPU ns per MiB, Gbit/s) each.
type Samples = Vec<(f64, f64)>;

/// One path's measurements at one read size.
#[derive(Debug, Clone, Serialize)]
struct PathResult {
    /// Median receiver CPU nanoseconds per MiB.
    cpu_ns_per_mib: f64,
    /// Median throughput, Gbit/s.
    gbps: f64,
    /// Every measurement: (cpu ns per MiB, Gbit/s).
    samples: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
struct SizeResult {
    read_size: usize,
    cpu: PathResult,
    dma: PathResult,
    /// DMA's CPU per MiB relative to the CPU path's (below 1: DMA saves CPU).
    dma_cpu_ratio: f64,
    /// DMA's throughput relative to the CPU path's.
    dma_throughput_ratio: f64,
    /// DMA no worse than the CPU at this size, within the tolerance.
    dma_no_worse: bool,
}

#[derive(Debug, Serialize)]
struct TuneReport {
    mtu: u32,
    bytes_per_measurement: u64,
    rounds: u32,
    tolerance: f64,
    channels: usize,
    elapsed_s: f64,
    results: Vec<SizeResult>,
    /// The smallest qualifying size, or null if DMA never paid.
    chosen_copybreak: Option<usize>,
    /// The value written (or that would be written) to tcp_dma_copybreak.
    copybreak_value: usize,
    /// The file written, if any.
    written: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(report) => {
            let mut out = std::io::stdout();
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(s) => {
                        let _ = writeln!(out, "{s}");
                    }
                    Err(e) => {
                        eprintln!("copybreak_tune: cannot serialize the report: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                let _ = write!(out, "{}", human(&report));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("copybreak_tune: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<TuneReport, String> {
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.is_empty() {
        return Err("no read sizes given".to_owned());
    }
    let config_path = args
        .config
        .clone()
        .or_else(|| args.write.clone().filter(|p| p.exists()));
    let netdma = build_netdma(&DmaOptions {
        config: config_path,
        copybreak: Some(Copybreak::Bytes(0)),
        no_dma: false,
        channels: args.channels,
    })?;
    // Idle release would only add noise between measurements.
    netdma
        .set("net.netdma.idle_release_ms", "0")
        .map_err(|e| e.to_string())?;
    let channels = netdma.config().engine.channels;

    let started = Instant::now();
    let mut samples: Vec<(Samples, Samples)> = vec![Default::default(); sizes.len()];
    let mut pair = StackPair::new(args.mtu as usize);
    let (server_h, client_h) = pair
        .connect(4 << 20, 4 << 20)
        .map_err(|e| format!("connection: {e}"))?;
    let StackPair {
        mut server,
        mut client,
        ..
    } = pair;
    let stop = AtomicBool::new(false);
    let max = *sizes.last().unwrap_or(&65536);
    let result: Result<(), String> = std::thread::scope(|s| {
        let stop = &stop;
        let client = &mut client;
        // The sender: keeps the connection full (the bytes' values do not matter here).
        s.spawn(move || {
            while !stop.load(Ordering::Acquire) {
                client.poll();
                let sock = client.tcp_mut(client_h);
                let sent = if sock.can_send() {
                    sock.send(|buf| (buf.len(), buf.len())).unwrap_or(0)
                } else {
                    0
                };
                if sent == 0 && client.poll_wait(Some(Duration::from_millis(1))).is_err() {
                    break;
                }
            }
        });
        let mut buf = vec![0u8; max];
        let r = (|| {
            // Warm-up: both paths, one size, not recorded.
            for dma in [false, true] {
                measure(
                    &netdma,
                    &mut server,
                    server_h,
                    &mut buf,
                    65536.min(max),
                    dma,
                    2 << 20,
                )?;
            }
            for round in 0..args.rounds {
                for (i, &size) in sizes.iter().enumerate() {
                    // Alternate which path goes first, so neither always follows the other.
                    let order = if (round as usize + i).is_multiple_of(2) {
                        [false, true]
                    } else {
                        [true, false]
                    };
                    for dma in order {
                        let m = measure(
                            &netdma,
                            &mut server,
                            server_h,
                            &mut buf,
                            size,
                            dma,
                            args.bytes,
                        )?;
                        if dma {
                            samples[i].1.push(m);
                        } else {
                            samples[i].0.push(m);
                        }
                    }
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::Release);
        r
    });
    result?;
    let stats = netdma.stats();
    let _ = netdma.disable();
    let f = &stats.fallback;
    if f.channel_error + f.timeout + f.aborted + f.no_channel > 0 {
        eprintln!(
            "copybreak_tune: warning: some DMA reads fell back to the CPU: {:?}",
            stats.fallback
        );
    }

    let mut results: Vec<SizeResult> = sizes
        .iter()
        .zip(samples)
        .map(|(&read_size, (cpu, dma))| {
            let cpu = summarize(cpu);
            let dma = summarize(dma);
            let dma_cpu_ratio = ratio(dma.cpu_ns_per_mib, cpu.cpu_ns_per_mib);
            let dma_throughput_ratio = ratio(dma.gbps, cpu.gbps);
            let dma_no_worse = dma_cpu_ratio <= 1.0 + args.tolerance
                && dma_throughput_ratio >= 1.0 - args.tolerance;
            SizeResult {
                read_size,
                cpu,
                dma,
                dma_cpu_ratio,
                dma_throughput_ratio,
                dma_no_worse,
            }
        })
        .collect();
    results.sort_by_key(|r| r.read_size);
    // The smallest size from which every larger candidate also qualifies.
    let mut chosen = None;
    for r in results.iter().rev() {
        if r.dma_no_worse {
            chosen = Some(r.read_size);
        } else {
            break;
        }
    }
    let copybreak = chosen.map_or(Copybreak::NEVER, Copybreak::Bytes);
    let written = match &args.write {
        Some(path) => {
            write_copybreak(path, copybreak)?;
            Some(path.display().to_string())
        }
        None => None,
    };
    Ok(TuneReport {
        mtu: args.mtu,
        bytes_per_measurement: args.bytes,
        rounds: args.rounds,
        tolerance: args.tolerance,
        channels,
        elapsed_s: started.elapsed().as_secs_f64(),
        results,
        chosen_copybreak: chosen,
        copybreak_value: copybreak.bytes().unwrap_or(usize::MAX),
        written,
    })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::INFINITY
    }
}

fn summarize(samples: Vec<(f64, f64)>) -> PathResult {
    PathResult {
        cpu_ns_per_mib: median(&mut samples.iter().map(|s| s.0).collect::<Vec<_>>()),
        gbps: median(&mut samples.iter().map(|s| s.1).collect::<Vec<_>>()),
        samples,
    }
}

/// Receives `bytes` with reads of `size`, all by DMA or all by the CPU. Returns the
/// receiving thread's CPU ns per MiB and the throughput in Gbit/s.
fn measure(
    netdma: &NetDma,
    stack: &mut netdma::stack::Stack<netdma::link::MemoryLink>,
    handle: smoltcp::iface::SocketHandle,
    buf: &mut [u8],
    size: usize,
    dma: bool,
    bytes: u64,
) -> Result<(f64, f64), String> {
    let copybreak = if dma { 0 } else { usize::MAX };
    netdma
        .set("net.ipv4.tcp_dma_copybreak", &copybreak.to_string())
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let c0 = thread_cpu_ns();
    let mut got = 0u64;
    let mut idle_since = Instant::now();
    while got < bytes {
        stack.poll();
        let sock = stack.tcp_mut(handle);
        let mut read = false;
        while got < bytes {
            match netdma.recv(sock, &mut buf[..size]) {
                Ok(0) => break,
                Ok(n) => {
                    got += n as u64;
                    read = true;
                }
                Err(e) => return Err(format!("receive: {e}")),
            }
        }
        if read {
            idle_since = Instant::now();
        } else {
            if idle_since.elapsed() > Duration::from_secs(10) {
                return Err(format!("the transfer stalled after {got} bytes"));
            }
            stack
                .poll_wait(Some(Duration::from_millis(1)))
                .map_err(|e| format!("link: {e}"))?;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = thread_cpu_ns().saturating_sub(c0) as f64;
    let mib = got as f64 / (1u64 << 20) as f64;
    Ok((cpu / mib, netdma_suite::report::gbps(got, secs)))
}

/// Sets `tcp_dma_copybreak` in `path` (created if missing), keeping everything else.
fn write_copybreak(path: &Path, copybreak: Copybreak) -> Result<(), String> {
    let old = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "# netdma configuration (see netdma.example.toml for every key).\n\
             # tcp_dma_copybreak written by copybreak_tune.\n"
                .to_owned()
        }
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let new = update_copybreak(&old, copybreak).map_err(|e| format!("{}: {e}", path.display()))?;
    NetDmaConfig::from_toml_str(&new)
        .map_err(|e| format!("{}: the updated file would not load: {e}", path.display()))?;
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, new).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming to {}: {e}", path.display()))
}

fn human(r: &TuneReport) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "copybreak_tune: MTU {}, {} per measurement, {} round(s), {} channel(s), {:.1} s",
        r.mtu,
        human_bytes(r.bytes_per_measurement),
        r.rounds,
        r.channels,
        r.elapsed_s
    );
    let _ = writeln!(
        o,
        "  {:>9}  {:>12} {:>12} {:>6}   {:>8} {:>8} {:>6}   dma ok",
        "read", "cpu ns/MiB", "dma ns/MiB", "ratio", "cpu Gb/s", "dma Gb/s", "ratio"
    );
    for s in &r.results {
        let _ = writeln!(
            o,
            "  {:>9}  {:>12.0} {:>12.0} {:>6.2}   {:>8.2} {:>8.2} {:>6.2}   {}",
            human_bytes(s.read_size as u64),
            s.cpu.cpu_ns_per_mib,
            s.dma.cpu_ns_per_mib,
            s.dma_cpu_ratio,
            s.cpu.gbps,
            s.dma.gbps,
            s.dma_throughput_ratio,
            if s.dma_no_worse { "yes" } else { "no" }
        );
    }
    match r.chosen_copybreak {
        Some(c) => {
            let _ = writeln!(o, "  chosen tcp_dma_copybreak = {c}");
        }
        None => {
            let _ = writeln!(
                o,
                "  DMA was worse than the CPU at every size (tolerance {:.0}%): tcp_dma_copybreak = {} (never offload)",
                r.tolerance * 100.0,
                r.copybreak_value
            );
        }
    }
    if let Some(w) = &r.written {
        let _ = writeln!(o, "  written to {w}");
    }
    o
}
