//! Link utilities for the network-namespace tests and benchmarks (root needed).
//!
//! ```text
//! link_tool tx-csum IFACE off          # like `ethtool -K IFACE tx off`, no ethtool needed
//! link_tool faulty-wire --a IF1 --b IF2 --seed 7 --drop 0.01 --dup 0.01 --reorder 0.02 --corrupt 0.01
//! ```
//!
//! `faulty-wire` plays a bad cable between two interfaces (typically veth ends in a
//! namespace of their own): every frame received on one is sent on the other, the way
//! it would cross a physical wire (super-frames cut to the MTU, checksums completed, no
//! checksum flags), and TCP/IPv4 frames meet seeded faults on the way: dropped,
//! duplicated, held back behind the next frame (reordered), or with one byte of their
//! IP payload flipped (corrupted). It runs until SIGINT/SIGTERM or `--duration`, then
//! prints its counters as one JSON object on stdout.

use clap::{Parser, Subcommand};
use netdma::link::vnet::{self, VnetHeader};
use netdma::link::{set_tx_checksum_offload, VnetPacketSocket};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Link utilities for the network-namespace tests.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Turns an interface's transmit checksum offload (and with it TSO) on or off.
    TxCsum {
        /// The interface, in the current network namespace.
        iface: String,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Forwards frames between two interfaces with seeded faults.
    FaultyWire(WireArgs),
}

#[derive(clap::Args, Debug)]
struct WireArgs {
    /// One end.
    #[arg(long)]
    a: String,
    /// The other end.
    #[arg(long)]
    b: String,
    /// Seed of the faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Probability that a TCP frame is dropped.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    drop: f64,
    /// Probability that a TCP frame is sent twice.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    dup: f64,
    /// Probability that a TCP frame is held back and sent after the next one.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    reorder: f64,
    /// Probability that one byte of a TCP frame's IP payload is flipped.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    corrupt: f64,
    /// Stop after this many seconds (default: until SIGINT/SIGTERM).
    #[arg(long)]
    duration: Option<f64>,
}

fn probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{s} is not a probability (0..=1)"))
    }
}

/// What happened to the frames going one way.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct Direction {
    /// Frames received (super-frames count once).
    received: u64,
    /// Frames put on the other side (after cutting, faults included).
    sent: u64,
    /// Super-frames cut into MTU-sized frames.
    cut: u64,
    /// Frames the segmenter could not handle (dropped).
    unsupported: u64,
    /// TCP frames dropped.
    dropped: u64,
    /// TCP frames sent twice.
    duplicated: u64,
    /// TCP frames held back behind the next one.
    reordered: u64,
    /// Frames put on the other side with a flipped byte (a duplicated corrupted frame
    /// counts twice).
    corrupted: u64,
}

#[derive(Debug, Default, Serialize)]
struct WireReport {
    seed: u64,
    a_to_b: Direction,
    b_to_a: Direction,
}

fn main() -> ExitCode {
    let args = Args::parse();
    netdma_suite::setup::init_logging();
    match args.cmd {
        Cmd::TxCsum { iface, state } => match set_tx_checksum_offload(&iface, state == "on") {
            Ok(was) => {
                eprintln!(
                    "link_tool: {iface}: transmit checksum offload {} -> {state}",
                    if was { "on" } else { "off" }
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("link_tool: {iface}: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::FaultyWire(w) => match faulty_wire(&w) {
            Ok(report) => {
                match serde_json::to_string(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("link_tool: {e}"),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("link_tool: {e}");
                ExitCode::from(1)
            }
        },
    }
}

/// Frames on their way from one side to the other.
struct Way {
    segs: Vec<Vec<u8>>,
    /// A frame held back for reordering, and whether it is corrupted.
    held: Option<(Vec<u8>, bool)>,
    stats: Direction,
}

impl Way {
    /// Puts `frame` on `to` (without checksum flags), counting it.
    fn put(&mut self, to: &mut VnetPacketSocket, frame: &[u8], corrupted: bool) {
        to.send(&VnetHeader::default(), frame);
        self.stats.sent += 1;
        if corrupted {
            self.stats.corrupted += 1;
        }
    }
}

fn is_tcp_v4(frame: &[u8]) -> Option<usize> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 6 {
        return None;
    }
    Some(usize::from(frame[14] & 0x0f) * 4)
}

/// Receives everything `from` has ready and puts it, faults applied, on `to`.
fn pump(
    from: &mut VnetPacketSocket,
    to: &mut VnetPacketSocket,
    way: &mut Way,
    w: &WireArgs,
    rng: &mut ChaCha8Rng,
) -> bool {
    let mut moved = false;
    while let Some(buf) = from.recv() {
        moved = true;
        way.stats.received += 1;
        let Ok(hdr) = VnetHeader::parse(buf) else {
            continue;
        };
        way.segs.clear();
        if vnet::segment(&hdr, &buf[vnet::VNET_HDR_LEN..], &mut way.segs).is_err() {
            way.stats.unsupported += 1;
            continue;
        }
        if way.segs.len() > 1 {
            way.stats.cut += 1;
        }
        let mut segs = std::mem::take(&mut way.segs);
        for mut f in segs.drain(..) {
            let Some(ihl) = is_tcp_v4(&f) else {
                way.put(to, &f, false);
                continue;
            };
            if rng.random_bool(w.drop) {
                way.stats.dropped += 1;
                continue;
            }
            let corrupted = rng.random_bool(w.corrupt);
            if corrupted {
                let at = rng.random_range(14 + ihl..f.len());
                f[at] ^= rng.random_range(1..=255u8);
            }
            let copies = if rng.random_bool(w.dup) {
                way.stats.duplicated += 1;
                2
            } else {
                1
            };
            if way.held.is_none() && rng.random_bool(w.reorder) {
                way.stats.reordered += 1;
                way.held = Some((f, corrupted));
                continue;
            }
            for _ in 0..copies {
                way.put(to, &f, corrupted);
            }
            if let Some((h, c)) = way.held.take() {
                way.put(to, &h, c);
            }
        }
        way.segs = segs;
    }
    moved
}

fn faulty_wire(w: &WireArgs) -> Result<WireReport, String> {
    let mut a = VnetPacketSocket::open(&w.a, 8 << 20).map_err(|e| format!("{}: {e}", w.a))?;
    let mut b = VnetPacketSocket::open(&w.b, 8 << 20).map_err(|e| format!("{}: {e}", w.b))?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Release))
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(w.seed);
    let new_way = || Way {
        segs: Vec::new(),
        held: None,
        stats: Direction::default(),
    };
    let (mut ab, mut ba) = (new_way(), new_way());
    let deadline = w
        .duration
        .and_then(|d| Duration::try_from_secs_f64(d).ok())
        .map(|d| Instant::now() + d);
    eprintln!(
        "link_tool: faulty wire {} <-> {} (seed {})",
        w.a, w.b, w.seed
    );
    while !stop.load(Ordering::Acquire) && deadline.is_none_or(|d| Instant::now() < d) {
        let moved_ab = pump(&mut a, &mut b, &mut ab, w, &mut rng);
        let moved_ba = pump(&mut b, &mut a, &mut ba, w, &mut rng);
        a.flush();
        b.flush();
        if moved_ab || moved_ba {
            continue;
        }
        // Idle: a frame held back for reordering goes now rather than wait for traffic.
        for (way, to) in [(&mut ab, &mut b), (&mut ba, &mut a)] {
            if let Some((h, c)) = way.held.take() {
                way.put(to, &h, c);
                to.flush();
            }
        }
        VnetPacketSocket::wait_any(&[&a, &b], Duration::from_millis(100))
            .map_err(|e| format!("poll: {e}"))?;
    }
    Ok(WireReport {
        seed: w.seed,
        a_to_b: ab.stats,
        b_to_a: ba.stats,
    })
}
