//! Soak: many verified streams under chaos (offload toggled, copybreak changed, devices
//! hot-added and force-removed with copies in flight, online CPUs changed, faults
//! injected). Exits non-zero if any byte was corrupted or lost or a reference leaked.
//!
//! `cargo run --release --example soak -- --seconds 30 --seed 7 --json`

use clap::Parser;
use netdma_suite::soak::{run, SoakConfig};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Soak the receive path under seeded chaos")]
struct Args {
    /// How long the chaos lasts.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seed of the streams and the chaos schedule (a failing seed reproduces the schedule).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Receiver threads sharing the offload (odd ones use the pipelined receive).
    #[arg(long, default_value_t = 2)]
    receivers: usize,
    /// Link MTU.
    #[arg(long, default_value_t = 65535)]
    mtu: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(args.seconds.is_finite() && args.seconds >= 0.0) {
        eprintln!("error: --seconds must be a non-negative number");
        return ExitCode::from(2);
    }
    if args.connections == 0 || args.receivers == 0 || !(68..=65535).contains(&args.mtu) {
        eprintln!(
            "error: --connections and --receivers must be at least 1 and --mtu in 68..=65535"
        );
        return ExitCode::from(2);
    }
    let report = run(&SoakConfig {
        duration: Duration::from_secs_f64(args.seconds),
        seed: args.seed,
        connections: args.connections,
        receivers: args.receivers,
        mtu: args.mtu,
        ..SoakConfig::default()
    });
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("report serializes")
        );
    } else {
        println!("soak seed {} for {:.1} s", report.seed, report.seconds);
        println!("  bytes verified      {}", report.bytes_verified);
        println!(
            "  corrupt / lost      {} / {}",
            report.corrupt_bytes, report.lost_bytes
        );
        println!(
            "  dma / cpu bytes     {} / {}",
            report.dma_bytes, report.cpu_fallback_bytes
        );
        println!(
            "  chaos               {} toggles, {} copybreak changes, {} hot adds, {} hot removals, {} cpu-set changes, {} stalls, {} faults",
            report.toggles, report.copybreak_changes, report.hot_adds, report.hot_removals, report.cpu_set_changes, report.stalls, report.faults_injected
        );
        println!(
            "  emulated DSA        {} of the hot adds, {} bytes finished by the CPU after page faults",
            report.dsa_adds, report.partial_cpu_bytes
        );
        println!("  leaked references   {}", report.leaked_references);
        println!("  longest read wait   {:.1} ms", report.max_stall_ms);
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        eprintln!("soak FAILED: reproduce with --seed {}", report.seed);
        ExitCode::FAILURE
    }
}
