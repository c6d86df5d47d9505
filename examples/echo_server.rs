//! The DMA-accelerated TCP echo server.
//!
//! With no arguments, the embedded run: a smoltcp echo server and a smoltcp client in one
//! process over the in-memory link, several connections of seeded random data, every
//! echoed byte verified; the server reads through netdma (copies at or above the
//! copybreak go to a DMA channel) and echoes with `send_slice`.
//!
//! ```text
//! cargo run --release --example echo_server
//! cargo run --release --example echo_server -- --copybreak 4096 --connections 8 --bytes 32MiB
//! cargo run --release --example echo_server -- --no-dma --json
//! ```
//!
//! On a real link it serves Linux (kernel TCP) clients such as `echo_client`, many at
//! once, until Ctrl-C or `--duration` (root needed):
//!
//! ```text
//! echo_server --tap ndtap0 --addr 10.77.0.1/24          # a TAP interface
//! echo_server --iface veth0 --addr 10.77.0.1/24         # AF_PACKET on an interface
//! ```
//!
//! At the end it disables netdma and unregisters the DMA device; the report says whether
//! that worked. Exit status: 0 on success, 1 if data was corrupted or lost or the device
//! could not be removed, 2 on a usage or setup error.

#[path = "common/mod.rs"]
mod common;

use clap::Parser;
use common::embedded::{run_embedded, EchoConn, EmbeddedOptions};
use common::report::{disable_and_unregister, gbps, EchoReport, LinkReport};
use common::setup::{build_netdma, DmaOptions};
use common::size::{parse_copybreak, parse_size, parse_usize_at_least};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use netdma::config::Copybreak;
use netdma::link::{Link, PacketLink, PacketOptions, TapLink, TapOptions};
use netdma::stack::{Stack, StackConfig};
use netdma::NetDma;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, IpCidr, Ipv4Address};
use std::io::{IsTerminal, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// DMA-accelerated TCP echo server (smoltcp + netdma).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// netdma configuration file (netdma.toml); NETDMA_* variables apply on top.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Reads of at least this many bytes go to DMA (e.g. 4096, 4KiB), or `auto`.
    #[arg(long, value_name = "N|auto", value_parser = parse_copybreak)]
    copybreak: Option<Copybreak>,
    /// Turn offload off: every byte is copied by the CPU.
    #[arg(long)]
    no_dma: bool,
    /// Number of DMA channels of the software DMA device (1..=64).
    #[arg(long, value_name = "N")]
    channels: Option<usize>,
    /// Embedded run: connections echoed at once.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    connections: u32,
    /// Embedded run: bytes per connection (accepts KiB, MiB, GiB).
    #[arg(long, value_name = "N", default_value = "16MiB", value_parser = parse_size)]
    bytes: u64,
    /// The server's read size (accepts KiB, MiB).
    #[arg(long, value_name = "N", default_value = "65536", value_parser = read_size)]
    read_size: usize,
    /// Embedded run: IP MTU of the in-memory link (68..=65535).
    #[arg(long, value_name = "N", default_value_t = 65535,
          value_parser = clap::value_parser!(u32).range(68..=65535))]
    mtu: u32,
    /// Receive and transmit buffer of every TCP socket (accepts KiB, MiB).
    #[arg(long, value_name = "N", default_value = "1MiB", value_parser = socket_buffer)]
    socket_buffer: usize,
    /// Embedded run: seed of the random data.
    #[arg(long, default_value_t = 0x6e65_7464_6d61)]
    seed: u64,
    /// Print one JSON object on stdout at the end, and nothing else there.
    #[arg(long)]
    json: bool,
    /// Serve kernel clients on this TAP interface (created if missing); needs --addr.
    #[arg(long, value_name = "NAME", requires = "addr", conflicts_with = "iface")]
    tap: Option<String>,
    /// Serve kernel clients on this interface through AF_PACKET; needs --addr.
    #[arg(long, value_name = "IFACE", requires = "addr")]
    iface: Option<String>,
    /// The server's own address and prefix on the link, e.g. 10.77.0.1/24.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    addr: Option<(Ipv4Addr, u8)>,
    /// TCP port to listen on.
    #[arg(long, default_value_t = 7000)]
    port: u16,
    /// Default gateway, for clients beyond the local subnet.
    #[arg(long, value_name = "ADDR")]
    gateway: Option<Ipv4Addr>,
    /// The smoltcp interface's own MAC address.
    #[arg(long, value_name = "MAC", default_value = "02:00:00:77:00:01", value_parser = parse_mac)]
    mac: EthernetAddress,
    /// Real links: listening sockets kept on the port (the most clients served at once).
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    listeners: u32,
    /// Real links: no virtio-net headers (the plain path: MTU-sized frames, one system
    /// call per frame, every checksum by smoltcp; an AF_PACKET peer then needs its
    /// transmit checksum offload off).
    #[arg(long)]
    plain_link: bool,
    /// Real links: read and discard instead of echoing (a one-way sink; the report's
    /// `bytes_echoed` counts the bytes received).
    #[arg(long)]
    sink: bool,
    /// Real links: stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    duration: Option<Duration>,
}

fn read_size(s: &str) -> Result<usize, String> {
    parse_usize_at_least(s, 1)
}

fn socket_buffer(s: &str) -> Result<usize, String> {
    let v = parse_usize_at_least(s, 1024)?;
    if v > 1 << 30 {
        return Err(format!("{s:?} is too large: at most 1GiB"));
    }
    Ok(v)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected seconds, e.g. 10 or 0.5"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| format!("invalid address {s:?}: expected ADDR/PREFIX, e.g. 10.77.0.1/24"))?;
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("invalid address {s:?}: {ip:?} is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("invalid address {s:?}: the prefix must be 0..=32"))?;
    Ok((ip, len))
}

fn parse_mac(s: &str) -> Result<EthernetAddress, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let bytes: Option<Vec<u8>> = parts
        .iter()
        .map(|p| u8::from_str_radix(p, 16).ok().filter(|_| p.len() <= 2))
        .collect();
    match bytes {
        Some(b) if b.len() == 6 => {
            let mac = EthernetAddress::from_bytes(&b);
            if mac.is_unicast() {
                Ok(mac)
            } else {
                Err(format!("MAC {s} is not a unicast address"))
            }
        }
        _ => Err(format!(
            "invalid MAC {s:?}: expected six hex bytes, e.g. 02:00:00:77:00:01"
        )),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    match run(&args) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(s) => {
                        let _ = writeln!(std::io::stdout(), "{s}");
                    }
                    Err(e) => {
                        eprintln!("echo_server: cannot serialize the report: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                let _ = write!(std::io::stdout(), "{}", report.human());
            }
            if report.integrity_ok && report.after_disable.unregister_ok {
                ExitCode::SUCCESS
            } else {
                if !report.integrity_ok {
                    eprintln!("echo_server: INTEGRITY FAILURE");
                }
                if !report.after_disable.unregister_ok {
                    eprintln!("echo_server: the DMA device could not be unregistered");
                }
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("echo_server: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<EchoReport, String> {
    let netdma = build_netdma(&DmaOptions {
        config: args.config.clone(),
        copybreak: args.copybreak,
        no_dma: args.no_dma,
        channels: args.channels,
    })?;
    if args.tap.is_some() || args.iface.is_some() {
        return serve_real(args, &netdma);
    }
    let opts = EmbeddedOptions {
        mtu: args.mtu as usize,
        connections: args.connections as usize,
        bytes_per_connection: args.bytes,
        read_size: args.read_size,
        socket_buffer: args.socket_buffer,
        seed: args.seed,
        ..EmbeddedOptions::default()
    };
    let total = opts.bytes_per_connection * opts.connections as u64;
    let bar = (!args.json && std::io::stderr().is_terminal()).then(|| {
        let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec})",
        ) {
            pb.set_style(style);
        }
        pb
    });
    let outcome = run_embedded(&netdma, &opts, bar.as_ref())?;
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    Ok(EchoReport::embedded(&netdma, &opts, outcome))
}

/// Serves kernel clients on a TAP or AF_PACKET link until Ctrl-C or `--duration`.
fn serve_real(args: &Args, netdma: &NetDma) -> Result<EchoReport, String> {
    let Some((ip, prefix)) = args.addr else {
        return Err("--addr is required with --tap and --iface".to_owned());
    };
    let [a, b, c, d] = ip.octets();
    let config = StackConfig {
        mac: args.mac,
        addr: IpCidr::new(Ipv4Address::new(a, b, c, d).into(), prefix),
        gateway: args.gateway.map(|g| {
            let [a, b, c, d] = g.octets();
            Ipv4Address::new(a, b, c, d)
        }),
        random_seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        if let Err(e) = ctrlc::set_handler(move || stop.store(true, Ordering::Release)) {
            eprintln!("echo_server: warning: cannot catch Ctrl-C: {e}");
        }
    }
    // The link is created and polled on this thread.
    if let Some(name) = &args.tap {
        let opts = TapOptions {
            vnet_hdr: !args.plain_link,
        };
        let link =
            TapLink::open_with(name, opts).map_err(|e| format!("opening TAP {name}: {e}"))?;
        let mtu = link.mtu();
        let stack = Stack::try_new(link, config).map_err(|e| format!("stack: {e}"))?;
        serve(stack, "tap", mtu, args, netdma, &stop)
    } else if let Some(name) = &args.iface {
        let opts = PacketOptions {
            vnet_hdr: !args.plain_link,
            ..PacketOptions::default()
        };
        let link = PacketLink::open_with(name, opts)
            .map_err(|e| format!("opening interface {name}: {e}"))?;
        let mtu = link.mtu();
        let stack = Stack::try_new(link, config).map_err(|e| format!("stack: {e}"))?;
        serve(stack, "iface", mtu, args, netdma, &stop)
    } else {
        Err("no link given".to_owned())
    }
}

/// One listening socket of the pool.
struct Slot {
    handle: SocketHandle,
    conn: EchoConn,
    active: bool,
}

fn serve<L: Link>(
    mut stack: Stack<L>,
    mode: &str,
    mtu: usize,
    args: &Args,
    netdma: &NetDma,
    stop: &AtomicBool,
) -> Result<EchoReport, String> {
    let mut pool = Vec::new();
    for _ in 0..args.listeners {
        let handle = stack.add_tcp_socket(args.socket_buffer, args.socket_buffer);
        stack
            .tcp_mut(handle)
            .listen(args.port)
            .map_err(|e| format!("listen on port {}: {e}", args.port))?;
        pool.push(Slot {
            handle,
            conn: EchoConn::new(args.read_size),
            active: false,
        });
    }
    // Always on stderr (scripts wait for this line), even with --json.
    {
        let off = stack.link().offloads();
        eprintln!(
            "echo_server: serving {} on {}:{} over {mode} (MTU {mtu}, {} listeners, {}); Ctrl-C stops",
            if netdma.is_enabled() {
                "with DMA offload"
            } else {
                "without offload"
            },
            args.addr.map(|a| a.0.to_string()).unwrap_or_default(),
            args.port,
            args.listeners,
            if off.gso {
                "virtio-net headers, GSO"
            } else if off.vnet_hdr {
                "virtio-net headers"
            } else {
                "plain frames"
            }
        );
    }
    let spinner = (!args.json && std::io::stderr().is_terminal()).then(|| {
        let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    });
    let started = Instant::now();
    let deadline = args.duration.map(|d| started + d);
    let mut served: u64 = 0;
    let mut echoed_done: u64 = 0;
    let mut first_data: Option<Instant> = None;
    let mut last_data = started;
    let mut errors = Vec::new();
    let mut last_ui = started;
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        let mut busy = stack.poll();
        for (i, slot) in pool.iter_mut().enumerate() {
            let sock = stack.tcp_mut(slot.handle);
            match sock.state() {
                tcp::State::Listen | tcp::State::SynReceived => {}
                tcp::State::Closed | tcp::State::TimeWait => {
                    // The connection is over: re-arm the socket for the next client.
                    if slot.active {
                        echoed_done += slot.conn.echoed;
                        slot.active = false;
                    }
                    slot.conn.reset();
                    sock.abort();
                    if let Err(e) = sock.listen(args.port) {
                        errors.push(format!("re-listen on slot {i}: {e}"));
                    }
                    busy = true;
                }
                _ => {
                    if !slot.active {
                        slot.active = true;
                        served += 1;
                    }
                    if slot.conn.closed {
                        continue;
                    }
                    let stepped = if args.sink {
                        slot.conn.sink_step(netdma, sock)
                    } else {
                        slot.conn.step(netdma, sock)
                    };
                    match stepped {
                        Ok(0) => {}
                        Ok(_) => {
                            busy = true;
                            first_data.get_or_insert(now);
                            last_data = now;
                        }
                        Err(e) => {
                            errors.push(format!("connection on slot {i}: {e}"));
                            sock.abort();
                        }
                    }
                }
            }
        }
        netdma.maintain(now);
        if let Some(pb) = &spinner {
            if now.duration_since(last_ui) > Duration::from_millis(200) {
                last_ui = now;
                let live: u64 = pool
                    .iter()
                    .filter(|s| s.active)
                    .map(|s| s.conn.echoed)
                    .sum();
                let st = netdma.stats();
                pb.set_message(format!(
                    "{served} connection(s), {} echoed, {} by DMA, {} by CPU",
                    common::size::human_bytes(echoed_done + live),
                    common::size::human_bytes(st.dma_bytes),
                    common::size::human_bytes(st.cpu_bytes)
                ));
            }
        }
        if !busy {
            let mut max = Duration::from_millis(100);
            if let Some(d) = deadline {
                max = max.min(d.saturating_duration_since(Instant::now()));
            }
            if let Err(e) = stack.poll_wait(Some(max)) {
                errors.push(format!("link: {e}"));
                break;
            }
        }
    }
    if let Some(pb) = spinner {
        pb.finish_and_clear();
    }
    let live: u64 = pool
        .iter()
        .filter(|s| s.active)
        .map(|s| s.conn.echoed)
        .sum();
    let bytes_echoed = echoed_done + live;
    let secs = first_data
        .map(|f| last_data.duration_since(f).as_secs_f64())
        .unwrap_or(0.0);
    let engine = netdma.engine().snapshot();
    let recv = netdma.stats();
    let config = netdma.config();
    let after_disable = disable_and_unregister(netdma);
    let link = Some(LinkReport {
        offloads: stack.link().offloads(),
        stats: stack.link().stats(),
    });
    Ok(EchoReport {
        mode: mode.to_owned(),
        integrity_ok: errors.is_empty(),
        integrity_verified_by: "clients".to_owned(),
        connections: served,
        bytes_per_connection: None,
        read_size: args.read_size,
        mtu,
        bytes_echoed,
        elapsed_s: secs,
        throughput_gbps: gbps(bytes_echoed, secs),
        errors,
        config,
        recv,
        engine,
        after_disable,
        link,
    })
}
