//! The pipelined receive over your own smoltcp pieces: an `Interface`, a device (here
//! smoltcp's `Loopback`) and a `SocketSet`, handed to `Pipeline` through `Parts`.
//!
//! A client socket and a server socket on one interface; the client sends seeded data,
//! the server receives it through posted buffers that DMA fills while the pipeline polls,
//! and every byte is checked.
//!
//! ```text
//! cargo run --release --example pipeline_parts -- --bytes 64MiB
//! ```

use clap::Parser;
use netdma::config::{Copybreak, NetDmaConfig};
use netdma::pipeline::{Parts, Pipeline};
use netdma::NetDma;
use netdma_suite::pattern;
use netdma_suite::size::{human_bytes, parse_size};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{Loopback, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};
use std::process::ExitCode;
use std::sync::Arc;

/// The pipelined receive over an application's own smoltcp Interface, device and SocketSet.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Bytes to send and verify (accepts KiB, MiB, GiB).
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    bytes: u64,
    /// Bytes per posted buffer.
    #[arg(long, default_value = "256KiB", value_parser = parse_size)]
    post: u64,
}

const PORT: u16 = 7000;
const SEED: u64 = 0x5eed;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pipeline_parts: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let total = usize::try_from(args.bytes).map_err(|_| "--bytes is too large")?;
    let post = usize::try_from(args.post)
        .ok()
        .filter(|&p| p > 0)
        .ok_or("--post must be at least 1 byte")?;
    let config = NetDmaConfig {
        tcp_dma_copybreak: Copybreak::Bytes(4096),
        ..NetDmaConfig::default()
    };
    let netdma = Arc::new(NetDma::from_config(config).map_err(|e| e.to_string())?);

    // Your own pieces: an interface over a device, and the sockets, set up as usual.
    let mut device = Loopback::new(Medium::Ethernet);
    let mac = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
    let mut iface = Interface::new(Config::new(mac.into()), &mut device, Instant::now());
    iface.update_ip_addrs(|addrs| {
        addrs
            .push(IpCidr::new(IpAddress::v4(127, 0, 0, 1), 8))
            .expect("room for one address");
    });
    let mut sockets = SocketSet::new(Vec::new());
    let socket = || {
        tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 1 << 20]),
            tcp::SocketBuffer::new(vec![0; 1 << 20]),
        )
    };
    let server = sockets.add(socket());
    let client = sockets.add(socket());
    sockets
        .get_mut::<tcp::Socket>(server)
        .listen(PORT)
        .map_err(|e| format!("listen: {e}"))?;
    sockets
        .get_mut::<tcp::Socket>(client)
        .connect(iface.context(), (IpAddress::v4(127, 0, 0, 1), PORT), 49152)
        .map_err(|e| format!("connect: {e}"))?;

    // From here the pipeline owns them.
    let mut pipeline = Pipeline::new(Parts::new(iface, device, sockets), netdma.clone());
    let mut data = vec![0u8; total];
    pattern::fill(SEED, 0, &mut data);
    let (mut sent, mut claimed) = (0, 0);
    let mut received = Vec::with_capacity(total);
    let mut idle = 0u64;
    while received.len() < total {
        let mut progress = pipeline.poll();
        if sent < total {
            if let Ok(n) = pipeline.send(client, &data[sent..]) {
                sent += n;
                progress |= n > 0;
            }
        }
        let established = pipeline.state(server) == tcp::State::Established;
        while established && pipeline.posted(server) < 4 && claimed < total {
            let want = post.min(total - claimed);
            pipeline
                .post_recv(server, vec![0; want], want)
                .map_err(|e| format!("post: {e}"))?;
            claimed += want;
        }
        while let Some(done) = pipeline.take_completed(server) {
            if let Some(e) = done.error {
                return Err(format!("read ended early: {e}"));
            }
            received.extend_from_slice(&done.buf[..done.len]);
            progress = true;
        }
        idle = if progress { 0 } else { idle + 1 };
        if idle > 10_000_000 {
            return Err(format!("stalled at {} of {total} bytes", received.len()));
        }
    }
    if received != data {
        let at = received.iter().zip(&data).position(|(a, b)| a != b);
        return Err(format!("data differs from byte {at:?}"));
    }
    let stats = netdma.stats();
    let (iface, _device, _sockets) = pipeline.into_driver().into_inner();
    println!(
        "{} verified over your own interface ({} addresses): {} by DMA, {} by the CPU",
        human_bytes(total as u64),
        iface.ip_addrs().len(),
        human_bytes(stats.dma_bytes),
        human_bytes(stats.cpu_bytes)
    );
    Ok(())
}
