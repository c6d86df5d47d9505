//! Looks for an Intel DSA work queue this process can use, says exactly why not when there
//! is none, and otherwise runs verified copies through it (the provider's full path:
//! descriptors, batching, completion records).
//!
//! ```text
//! cargo run --release --example dsa_probe                    # this machine's DSA
//! cargo run --release --example dsa_probe -- --wq wq0.1      # one WQ by name or path
//! cargo run --release --example dsa_probe -- --emulate       # the software portal
//! cargo run --release --example dsa_probe -- --json          # one JSON object
//! ```
//!
//! Exit status: 0 when copies were verified, or when no DSA is present (that is an
//! answer, not a failure); 1 when a copy came back wrong or the WQ could not be driven.

use clap::Parser;
use dmaengine::dsa::{
    discover, CpuFeatures, DsaDevice, DsaPaths, DsaStats, EmulatedWq, SubmitPath, WqInfo,
    WqRejection, WqSelection,
};
use dmaengine::{scope, Cap, Engine, SubmitError, WaitError};
use netdma_suite::pattern;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(about = "Detect Intel DSA work queues and run verified copies through one")]
struct Args {
    /// Use the descriptor-exact software portal instead of hardware.
    #[arg(long)]
    emulate: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// The work queue: "any", a name (wq0.0) or a path (/dev/dsa/wq0.0).
    #[arg(long, default_value = "any")]
    wq: String,
    /// The dsa bus's device directory.
    #[arg(long, default_value = "/sys/bus/dsa/devices")]
    sysfs: PathBuf,
    /// The directory of the WQ character devices.
    #[arg(long, default_value = "/dev/dsa")]
    dev: PathBuf,
    /// Copies per size.
    #[arg(long, default_value_t = 16)]
    rounds: usize,
}

/// Sizes from empty to 1 MiB, some unaligned.
const SIZES: [usize; 8] = [0, 1, 63, 4095, 4096, 65_537, 262_144, 1 << 20];

#[derive(Serialize)]
struct WqReport {
    #[serde(flatten)]
    info: WqInfo,
    usable: bool,
    rejection: Option<WqRejection>,
}

#[derive(Serialize, Default)]
struct Report {
    /// Whether a usable WQ (or the emulated one) was found and opened.
    present: bool,
    /// Why not, when not.
    reason: Option<String>,
    emulated: bool,
    cpu: CpuFeatures,
    /// Every WQ on the bus, with why each one is or is not usable.
    wqs: Vec<WqReport>,
    /// The WQ used.
    wq: Option<String>,
    submit_path: Option<SubmitPath>,
    batching: bool,
    copies_verified: usize,
    bytes_verified: u64,
    /// Copies the device finished only in part (page faults), the rest done by the CPU.
    copies_partial: usize,
    /// Copies that came back wrong, or failed outright.
    copies_failed: usize,
    stats: Option<DsaStats>,
}

/// Runs `rounds` copies per size through `dev`, all of one size behind one doorbell.
fn run_copies(dev: Arc<DsaDevice>, rounds: usize, report: &mut Report) {
    let engine = Engine::new();
    if let Err(e) = engine.register_device(dev.clone()) {
        report.reason = Some(format!("registering the DSA device failed: {e}"));
        report.copies_failed += 1;
        return;
    }
    let client = engine.client(Cap::Memcpy.into());
    let Some(chan) = client.find_channel(Cap::Memcpy) else {
        report.reason = Some("the engine handed out no channel".into());
        report.copies_failed += 1;
        return;
    };
    for (i, &len) in SIZES.iter().enumerate() {
        let srcs: Vec<Vec<u8>> = (0..rounds)
            .map(|r| {
                let mut data = vec![0u8; len];
                pattern::fill((i * 1000 + r) as u64 + 1, 0, &mut data);
                data
            })
            .collect();
        let mut dsts = vec![vec![0u8; len]; rounds];
        // Outer error: refused at submission; inner: how the wait ended.
        let results: Vec<Result<Result<(), WaitError>, SubmitError>> = scope(|s| {
            let ts: Vec<_> = dsts
                .iter_mut()
                .zip(&srcs)
                .map(|(d, sr)| s.memcpy(&chan, d, sr))
                .collect();
            chan.issue_pending();
            ts.into_iter().map(|t| t.map(|t| t.wait())).collect()
        });
        for ((d, sr), r) in dsts.iter_mut().zip(&srcs).zip(results) {
            match r {
                Ok(Ok(())) if d == sr => {
                    report.copies_verified += 1;
                    report.bytes_verified += len as u64;
                }
                Ok(Err(WaitError::Partial { bytes_done, .. }))
                    if bytes_done <= len && d[..bytes_done] == sr[..bytes_done] =>
                {
                    d[bytes_done..].copy_from_slice(&sr[bytes_done..]);
                    report.copies_partial += 1;
                }
                Err(e) => {
                    report.reason = Some(format!("a submission was refused: {e}"));
                    report.copies_failed += 1;
                }
                Ok(_) => report.copies_failed += 1,
            }
        }
    }
    drop(client);
    report.stats = Some(dev.stats());
}

fn main() -> ExitCode {
    netdma_suite::setup::init_logging();
    let args = Args::parse();
    let rounds = args.rounds.clamp(1, 64);
    let cpu = CpuFeatures::detect();
    let paths = DsaPaths {
        sysfs: args.sysfs.clone(),
        dev: args.dev.clone(),
    };
    let mut report = Report {
        cpu,
        emulated: args.emulate,
        ..Report::default()
    };
    if let Ok(wqs) = discover::scan(&paths) {
        report.wqs = wqs
            .into_iter()
            .map(|info| {
                let rejection = discover::check(&info).err();
                WqReport {
                    usable: rejection.is_none(),
                    rejection,
                    info,
                }
            })
            .collect();
    }
    let builder = DsaDevice::builder().ring_size(256);
    let device = if args.emulate {
        Ok(builder.emulated(EmulatedWq::builder().build()))
    } else {
        discover::find(&paths, cpu, &WqSelection::parse(&args.wq))
            .and_then(|wq| builder.open(&wq, cpu))
    };
    match device {
        Ok(dev) => {
            report.present = true;
            report.wq = Some(dev.wq().name.clone());
            report.submit_path = Some(dev.submit_path());
            report.batching = dev.batching();
            run_copies(dev, rounds, &mut report);
        }
        Err(e) => report.reason = Some(e.to_string()),
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report serializes")
        );
    } else {
        print_human(&report);
    }
    if report.copies_failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_human(r: &Report) {
    println!(
        "CPU: MOVDIR64B {}, ENQCMD {}",
        yes(r.cpu.movdir64b),
        yes(r.cpu.enqcmd)
    );
    if r.wqs.is_empty() {
        println!("work queues: none found");
    }
    for w in &r.wqs {
        let why = w
            .rejection
            .as_ref()
            .map_or_else(|| "usable".to_owned(), |e| format!("not usable: {e}"));
        println!(
            "  {} ({}): type {}, {}, {}, size {}, max transfer {}, max batch {}: {why}",
            w.info.name,
            w.info.device,
            w.info.wq_type,
            w.info.state,
            w.info.mode,
            w.info.size,
            w.info.max_transfer_size,
            w.info.max_batch_size
        );
    }
    if !r.present {
        println!(
            "DSA: absent: {}",
            r.reason.as_deref().unwrap_or("unknown reason")
        );
        return;
    }
    println!(
        "DSA: {} via {:?}{}, batching {}",
        r.wq.as_deref().unwrap_or("?"),
        r.submit_path.unwrap_or(SubmitPath::Emulated),
        if r.emulated { " (software portal)" } else { "" },
        yes(r.batching)
    );
    println!(
        "copies: {} verified ({} bytes), {} partial (finished by the CPU), {} failed",
        r.copies_verified, r.bytes_verified, r.copies_partial, r.copies_failed
    );
    if let Some(s) = &r.stats {
        println!(
            "provider: {} descriptors, {} portal writes, {} batches, {} refusals",
            s.descriptors, s.portal_writes, s.batches, s.refusals
        );
    }
    if let Some(reason) = &r.reason {
        println!("note: {reason}");
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
