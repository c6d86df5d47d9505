//! A tour of the DMA engine: register a software DMA device, take a client, copy and verify
//! data through the per-CPU channel table, see the device refuse to unregister while the
//! client pins it, release, unregister.
//!
//! ```text
//! cargo run --release --example engine_tour            # a short human-readable tour
//! cargo run --release --example engine_tour -- --json  # one JSON object
//! ```

use clap::Parser;
use dmaengine::{scope, Cap, ChannelId, Client, Engine, EngineSnapshot, SoftwareDevice};
use netdma_suite::pattern;
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "A tour of the dmaengine crate with the software DMA device")]
struct Args {
    /// Print one JSON object instead of the human-readable tour.
    #[arg(long)]
    json: bool,
    /// Channels of the software DMA device.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Copies per size.
    #[arg(long, default_value_t = 8)]
    rounds: usize,
}

/// Copy sizes, from empty to 1 MiB, some deliberately unaligned.
const SIZES: [usize; 8] = [0, 1, 63, 4095, 4096, 65_537, 262_144, 1 << 20];

#[derive(Serialize)]
struct Report {
    device: String,
    channels: usize,
    copies_verified: usize,
    bytes_verified: u64,
    copies_failed: usize,
    unregister_while_pinned: String,
    unregister_after_release: String,
    references_after_release: usize,
    snapshot: EngineSnapshot,
}

/// Copies `rounds` buffers of `len` bytes on this CPU's channel, all in flight at once
/// behind one doorbell; returns the channel and how many were verified / failed.
fn copy_batch(
    client: &Client,
    len: usize,
    rounds: usize,
    seed: u64,
) -> (Option<ChannelId>, usize, usize) {
    let Some(chan) = client.find_channel(Cap::Memcpy) else {
        return (None, 0, rounds);
    };
    let srcs: Vec<Vec<u8>> = (0..rounds)
        .map(|r| {
            let mut data = vec![0u8; len];
            pattern::fill(seed * 1000 + r as u64, 0, &mut data);
            data
        })
        .collect();
    let mut dsts: Vec<Vec<u8>> = vec![vec![0u8; len]; rounds];
    let outcomes: Vec<bool> = scope(|s| {
        let transfers: Vec<_> = dsts
            .iter_mut()
            .zip(&srcs)
            .map(|(dst, src)| s.memcpy(&chan, dst, src))
            .collect();
        chan.issue_pending();
        transfers
            .iter()
            .map(|t| t.as_ref().is_ok_and(|t| t.wait().is_ok()))
            .collect()
    });
    let ok = outcomes
        .iter()
        .zip(dsts.iter().zip(&srcs))
        .filter(|(done, (dst, src))| **done && dst == src)
        .count();
    (Some(chan.id()), ok, rounds - ok)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let say = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };

    let engine = Engine::new();
    let device = engine.register_device(
        SoftwareDevice::builder()
            .name("swdma")
            .channels(args.channels)
            .build(),
    )?;
    say(format!(
        "registered {device}: software DMA device with {} channels, online CPUs {:?}",
        args.channels,
        engine.online_cpus()
    ));

    // dmaengine_get(): from now on the device's memcpy channels hold references.
    let client = engine.client(Cap::Memcpy.into());
    say(format!(
        "client taken: device references = {}",
        engine.total_references()
    ));

    let (mut verified, mut failed, mut bytes) = (0usize, 0usize, 0u64);
    let cpus = engine.online_cpus();
    for (i, &len) in SIZES.iter().enumerate() {
        // Each size from a thread pinned to the next online CPU: find_channel reads that
        // CPU's entry of the per-CPU table.
        let cpu = cpus[i % cpus.len()];
        let batch = std::thread::scope(|s| {
            s.spawn(|| {
                let pinned = dmaengine::cpu::pin_current_thread(cpu).is_ok();
                (pinned, copy_batch(&client, len, args.rounds, i as u64))
            })
            .join()
            .expect("copy thread panicked")
        });
        let (pinned, (chan, ok, bad)) = batch;
        let chan = chan.ok_or("no DMA channel for this CPU")?;
        verified += ok;
        failed += bad;
        bytes += (ok * len) as u64;
        say(format!(
            "  {len:>8} B x {}: CPU {cpu}{} -> {chan}, {ok} verified, {bad} failed",
            args.rounds,
            if pinned { "" } else { " (unpinned)" },
        ));
    }

    let snapshot = engine.snapshot();
    let pinned = match engine.unregister_device(device) {
        Ok(()) => "unexpectedly succeeded".to_owned(),
        Err(e) => e.to_string(),
    };
    say(format!("unregister while pinned: {pinned}"));

    // dmaengine_put(): the references go, and with them the worker threads.
    drop(client);
    let references = engine.total_references();
    say(format!("client dropped: device references = {references}"));
    let released = match engine.unregister_device(device) {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.to_string(),
    };
    say(format!("unregister after release: {released}"));
    say(format!(
        "{verified} copies ({bytes} bytes) verified byte for byte, {failed} failed"
    ));

    if args.json {
        let report = Report {
            device: device.to_string(),
            channels: args.channels,
            copies_verified: verified,
            bytes_verified: bytes,
            copies_failed: failed,
            unregister_while_pinned: pinned,
            unregister_after_release: released,
            references_after_release: references,
            snapshot,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("while the client was held:");
        let table: Vec<String> = snapshot
            .table
            .memcpy
            .iter()
            .enumerate()
            .map(|(cpu, c)| match c {
                Some(id) => format!("CPU{cpu}->{id}"),
                None => format!("CPU{cpu}->none"),
            })
            .collect();
        println!("  per-CPU memcpy table: {}", table.join(" "));
        for dev in &snapshot.devices {
            for c in &dev.channels {
                println!(
                    "  {}: in_use {}, table_count {}, resources {}, memcpy_count {}, bytes {}",
                    c.id,
                    c.counters.in_use,
                    c.table_count,
                    c.resources,
                    c.counters.memcpy_count,
                    c.counters.bytes_transferred
                );
            }
        }
    }
    if failed > 0 {
        return Err(format!("{failed} copies failed").into());
    }
    Ok(())
}
