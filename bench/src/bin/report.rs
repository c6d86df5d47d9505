//! Runs the side-by-side comparisons and prints or writes the report.
//!
//! `cargo run --release -p netdma-bench --bin report -- [--quick] [--json] [--write]`

use clap::Parser;
use netdma_bench::report::{self, Scale};
use std::path::PathBuf;

/// Measure dmaengine and netdma side by side and report the ratios.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// A shorter run (under a minute).
    #[arg(long)]
    quick: bool,
    /// Print every figure as one JSON object on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// Regenerate BENCHMARKS.md (workspace root) and bench/throughput.svg.
    #[arg(long)]
    write: bool,
}

fn main() {
    let args = Args::parse();
    let scale = if args.quick {
        Scale::quick()
    } else {
        Scale::full()
    };
    let mut log = |line: &str| eprintln!("[report] {line}");
    let report = match report::run(&scale, &mut log) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("report failed: {e}");
            std::process::exit(1);
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json()).expect("JSON serializes")
        );
    } else {
        print!("{}", report.summary());
    }
    if args.write {
        let bench_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let root = bench_dir.parent().map(PathBuf::from).unwrap_or_default();
        let svg_path = bench_dir.join("throughput.svg");
        match report.svg() {
            Ok(svg) => {
                if let Err(e) = std::fs::write(&svg_path, svg) {
                    eprintln!("cannot write {}: {e}", svg_path.display());
                    std::process::exit(1);
                }
            }
            Err(e) => eprintln!("no plot: {e}"),
        }
        let md_path = root.join("BENCHMARKS.md");
        let mut md = report.to_markdown("bench/throughput.svg");
        // The "Real links" section is written by scripts/link-bench.sh (it needs root and
        // network namespaces); keep it as that script last wrote it.
        if let Ok(old) = std::fs::read_to_string(&md_path) {
            let (begin, end) = ("<!-- real-links:begin -->", "<!-- real-links:end -->");
            if let (Some(b), Some(e)) = (old.find(begin), old.find(end)) {
                if b < e {
                    md.push('\n');
                    md.push_str(&old[b..e + end.len()]);
                    md.push('\n');
                }
            }
        }
        if let Err(e) = std::fs::write(&md_path, md) {
            eprintln!("cannot write {}: {e}", md_path.display());
            std::process::exit(1);
        }
        eprintln!(
            "[report] wrote {} and {}",
            md_path.display(),
            svg_path.display()
        );
    }
}
