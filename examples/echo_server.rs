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
//! On a real link it keeps `--listeners` sockets listening and adds more between received
//! frames as clients take them, so a burst of connections is accepted, up to
//! `--max-connections` (default 1024) at once; a client beyond that is refused. Each
//! connection holds two socket rings of `--socket-buffer` bytes and a read buffer of
//! `--read-size` bytes, so the connections' memory is bounded by `--max-connections` x
//! (2 x `--socket-buffer` + `--read-size`); finished connections' sockets beyond the
//! listeners are freed. The report's `memory` object gives these figures and the peak
//! resident memory of the run.
//!
//! `--control PATH` opens a control socket there for `netdmactl` (sysctl get/set, dma
//! disable/enable, dev list/remove, stats), on every link. The embedded run then streams
//! until `--duration` or Ctrl-C (or `--bytes` per connection, if given), so it can be
//! operated while traffic flows:
//!
//! ```text
//! echo_server --control /tmp/echo.sock --duration 60 &
//! netdmactl --socket /tmp/echo.sock dma disable
//! ```
//!
//! At the end it disables netdma and unregisters the DMA device; the report says whether
//! that worked. Exit status: 0 on success, 1 if data was corrupted or lost or the device
//! could not be removed, 2 on a usage or setup error.

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use netdma::config::Copybreak;
use netdma::ctl::CtlServer;
use netdma::link::{Link, Offloads, PacketLink, PacketOptions, TapLink, TapOptions};
use netdma::stack::{Stack, StackConfig};
use netdma::NetDma;
use netdma_suite::echo::{run_embedded, EmbeddedOptions};
use netdma_suite::listeners::{peak_rss_bytes, ListenerPool};
use netdma_suite::pipelined::{self, PipelinedServer};
use netdma_suite::report::{
    disable_and_unregister, gbps, EchoReport, LinkReport, ReceivePath, ServerMemory,
};
use netdma_suite::setup::{build_netdma, DmaOptions};
use netdma_suite::size::{parse_copybreak, parse_size, parse_usize_at_least};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, Ipv4Cidr};
use std::io::{IsTerminal, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// DMA-accelerated TCP echo server (smoltcp + netdma).
#[derive(Parser, Debug)]
#[command(version)]
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
    /// The server reads through the pipelined receive (reads posted ahead, copies in
    /// flight while it polls) instead of `NetDma::recv`. On a real link it serves at most
    /// --listeners clients at once (the pipeline owns its sockets; they do not grow).
    #[arg(long)]
    pipelined: bool,
    /// Embedded run: connections echoed at once.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    connections: u32,
    /// Embedded run: bytes per connection (accepts KiB, MiB, GiB) [default: 16MiB;
    /// with --control or --duration, unlimited].
    #[arg(long, value_name = "N", value_parser = parse_size)]
    bytes: Option<u64>,
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
    addr: Option<Ipv4Cidr>,
    /// TCP port to listen on.
    #[arg(long, default_value_t = 7000)]
    port: u16,
    /// Default gateway, for clients beyond the local subnet.
    #[arg(long, value_name = "ADDR")]
    gateway: Option<Ipv4Addr>,
    /// The smoltcp interface's own MAC address.
    #[arg(long, value_name = "MAC", default_value = "02:00:00:77:00:01", value_parser = parse_mac)]
    mac: EthernetAddress,
    /// Real links: listening sockets kept ready on the port; the pool grows as clients
    /// take them, up to --max-connections.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    listeners: u32,
    /// Real links: the most connections served at once; a client beyond them is refused.
    /// Buffer memory is bounded by this times (2 x --socket-buffer + --read-size).
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    max_connections: u32,
    /// Real links: no virtio-net headers (the plain path: MTU-sized frames, one system
    /// call per frame, every checksum by smoltcp; an AF_PACKET peer then needs its
    /// transmit checksum offload off).
    #[arg(long)]
    plain_link: bool,
    /// Real links: read and discard instead of echoing (a one-way sink; the report's
    /// `bytes_echoed` counts the bytes received).
    #[arg(long)]
    sink: bool,
    /// Stop after this many seconds (real links: default until Ctrl-C; the embedded run
    /// stops sending then and ends when the echo is verified).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Serve a control socket for netdmactl at this path (mode 0600).
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
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

fn parse_cidr(s: &str) -> Result<Ipv4Cidr, String> {
    s.parse()
        .map_err(|()| format!("invalid address {s:?}: expected ADDR/PREFIX, e.g. 10.77.0.1/24"))
}

fn parse_mac(s: &str) -> Result<EthernetAddress, String> {
    let mac: EthernetAddress = s.parse().map_err(|()| {
        format!("invalid MAC {s:?}: expected six hex bytes, e.g. 02:00:00:77:00:01")
    })?;
    if mac.is_unicast() {
        Ok(mac)
    } else {
        Err(format!("MAC {s} is not a unicast address"))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    netdma_suite::setup::init_logging();
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
    let netdma = Arc::new(build_netdma(&DmaOptions {
        config: args.config.clone(),
        copybreak: args.copybreak,
        no_dma: args.no_dma,
        channels: args.channels,
    })?);
    let _control = match &args.control {
        Some(path) => {
            let server = CtlServer::bind(path, netdma.clone()).map_err(|e| e.to_string())?;
            eprintln!("echo_server: control socket at {}", path.display());
            Some(server)
        }
        None => None,
    };
    if args.tap.is_some() || args.iface.is_some() {
        return serve_real(args, &netdma);
    }
    // Controlled or timed: stream until the deadline or Ctrl-C.
    let streaming = args.control.is_some() || args.duration.is_some();
    let stop_sending = streaming.then(|| {
        let stop = Arc::new(AtomicBool::new(false));
        let on_int = stop.clone();
        if let Err(e) = ctrlc::set_handler(move || on_int.store(true, Ordering::Release)) {
            eprintln!("echo_server: warning: cannot catch Ctrl-C: {e}");
        }
        if let Some(d) = args.duration {
            let at_deadline = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(d);
                at_deadline.store(true, Ordering::Release);
            });
        }
        stop
    });
    let opts = EmbeddedOptions {
        mtu: args.mtu as usize,
        connections: args.connections as usize,
        bytes_per_connection: args
            .bytes
            .unwrap_or(if streaming { u64::MAX } else { 16 << 20 }),
        stop_sending,
        // Long streams: receive buffers larger than transmit buffers (see the option).
        rx_buffer_factor: if streaming { 4 } else { 1 },
        pipelined: args.pipelined,
        read_size: args.read_size,
        socket_buffer: args.socket_buffer,
        seed: args.seed,
        ..EmbeddedOptions::default()
    };
    let total = opts
        .bytes_per_connection
        .saturating_mul(opts.connections as u64);
    let bar = (!args.json && std::io::stderr().is_terminal()).then(|| {
        let total = (total != u64::MAX).then_some(total);
        let pb = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
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
fn serve_real(args: &Args, netdma: &Arc<NetDma>) -> Result<EchoReport, String> {
    let Some(addr) = args.addr else {
        return Err("--addr is required with --tap and --iface".to_owned());
    };
    let config = StackConfig {
        mac: args.mac,
        addr: addr.into(),
        gateway: args.gateway,
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

fn serve<L: Link>(
    mut stack: Stack<L>,
    mode: &str,
    mtu: usize,
    args: &Args,
    netdma: &Arc<NetDma>,
    stop: &AtomicBool,
) -> Result<EchoReport, String> {
    if args.pipelined {
        return serve_pipelined(stack, mode, mtu, args, netdma, stop);
    }
    let mut pool = ListenerPool::new(
        args.port,
        args.listeners as usize,
        args.max_connections as usize,
        args.socket_buffer,
        args.read_size,
    );
    pool.replenish(stack.sockets_mut());
    if let Some(e) = pool.error.take() {
        return Err(e);
    }
    announce(
        stack.link().offloads(),
        mode,
        mtu,
        args,
        netdma,
        args.max_connections,
    );
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
        // Listeners are topped up between received frames: a burst of SYNs finds them.
        let mut busy = stack.poll_each(|sockets| pool.replenish(sockets));
        for i in 0..pool.slots.len() {
            let sock = stack.tcp_mut(pool.slots[i].handle);
            let state = sock.state();
            match state {
                tcp::State::Listen => pool.saw_listening(i),
                tcp::State::SynReceived => {}
                tcp::State::Closed | tcp::State::TimeWait => {
                    let slot = &pool.slots[i];
                    if slot.active || state == tcp::State::TimeWait || pool.is_armed(i) {
                        // The connection is over: re-arm the socket for the next client,
                        // or free it (`reap`) if enough others listen.
                        if slot.active {
                            echoed_done += slot.conn.echoed;
                        }
                        if let Err(e) = pool.finished(i, sock) {
                            errors.push(e);
                        }
                        busy = true;
                    }
                }
                _ => {
                    let slot = &mut pool.slots[i];
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
        pool.reap(stack.sockets_mut());
        if let Some(e) = pool.error.take() {
            errors.push(e);
        }
        netdma.release_if_idle(now);
        if let Some(pb) = &spinner {
            if now.duration_since(last_ui) > Duration::from_millis(200) {
                last_ui = now;
                let live: u64 = pool
                    .slots
                    .iter()
                    .filter(|s| s.active)
                    .map(|s| s.conn.echoed)
                    .sum();
                let st = netdma.stats();
                pb.set_message(format!(
                    "{served} connection(s), {} echoed, {} by DMA, {} by CPU",
                    netdma_suite::size::human_bytes(echoed_done + live),
                    netdma_suite::size::human_bytes(st.dma_bytes),
                    netdma_suite::size::human_bytes(st.cpu_bytes)
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
    // Where each unfinished connection stands, to explain a stall.
    for (i, slot) in pool.slots.iter().enumerate() {
        if slot.active && !slot.conn.closed {
            let sock = stack.tcp_mut(slot.handle);
            tracing::warn!(
                "connection on slot {i} unfinished: {} echoed, socket {}, {} B unread, {} B unsent, can_send {}, can_recv {}",
                slot.conn.echoed,
                sock.state(),
                sock.recv_queue(),
                sock.send_queue(),
                sock.can_send(),
                sock.can_recv()
            );
        }
    }
    let live: u64 = pool
        .slots
        .iter()
        .filter(|s| s.active)
        .map(|s| s.conn.echoed)
        .sum();
    let bytes_echoed = echoed_done + live;
    let secs = first_data
        .map(|f| last_data.duration_since(f).as_secs_f64())
        .unwrap_or(0.0);
    let memory = ServerMemory {
        max_connections: pool.max_connections(),
        listeners: args.listeners as usize,
        peak_connections: pool.peak_connections,
        peak_sockets: pool.peak_sockets,
        per_connection_bytes: pool.per_connection_bytes(),
        bound_bytes: pool.max_connections() as u64 * pool.per_connection_bytes() as u64,
        peak_rss_bytes: peak_rss_bytes(),
    };
    let link = LinkReport {
        offloads: stack.link().offloads(),
        stats: stack.link().stats(),
    };
    let outcome = RealOutcome {
        served,
        bytes_echoed,
        secs,
        errors,
    };
    Ok(real_report(mode, mtu, args, netdma, outcome, memory, link))
}

/// The line scripts wait for: always on stderr, even with --json.
fn announce(off: Offloads, mode: &str, mtu: usize, args: &Args, netdma: &NetDma, max: u32) {
    eprintln!(
        "echo_server: serving {} on {}:{} over {mode} (MTU {mtu}, {} listeners, at most {max} connections, {}{}); Ctrl-C stops",
        if netdma.is_enabled() {
            "with DMA offload"
        } else {
            "without offload"
        },
        args.addr
            .map(|a| a.address().to_string())
            .unwrap_or_default(),
        args.port,
        args.listeners,
        if off.gso {
            "virtio-net headers, GSO"
        } else if off.vnet_hdr {
            "virtio-net headers"
        } else {
            "plain frames"
        },
        if args.pipelined { ", pipelined receive" } else { "" }
    );
}

/// What a run on a real link did, for its report.
struct RealOutcome {
    served: u64,
    bytes_echoed: u64,
    secs: f64,
    errors: Vec<String>,
}

/// The report of a run on a real link; drops the engine references on the way.
fn real_report(
    mode: &str,
    mtu: usize,
    args: &Args,
    netdma: &NetDma,
    outcome: RealOutcome,
    memory: ServerMemory,
    link: LinkReport,
) -> EchoReport {
    let engine = netdma.engine().snapshot();
    let recv = netdma.stats();
    let config = netdma.config();
    let after_disable = disable_and_unregister(netdma);
    EchoReport {
        mode: mode.to_owned(),
        receive: ReceivePath::of(args.pipelined),
        integrity_ok: outcome.errors.is_empty(),
        integrity_verified_by: "clients".to_owned(),
        connections: outcome.served,
        bytes_per_connection: None,
        read_size: args.read_size,
        mtu,
        bytes_echoed: outcome.bytes_echoed,
        elapsed_s: outcome.secs,
        throughput_gbps: gbps(outcome.bytes_echoed, outcome.secs),
        errors: outcome.errors,
        config,
        recv,
        engine,
        after_disable,
        memory: Some(memory),
        link: Some(link),
    }
}

/// [`serve`] through the pipelined receive: `--listeners` sockets, each serving one
/// client at a time.
fn serve_pipelined<L: Link>(
    stack: Stack<L>,
    mode: &str,
    mtu: usize,
    args: &Args,
    netdma: &Arc<NetDma>,
    stop: &AtomicBool,
) -> Result<EchoReport, String> {
    let socket_buffer = args.socket_buffer;
    let listeners = args.listeners as usize;
    let offloads = stack.link().offloads();
    let mut server = PipelinedServer::new(
        stack,
        netdma.clone(),
        args.port,
        listeners,
        socket_buffer,
        args.read_size,
    )?;
    announce(offloads, mode, mtu, args, netdma, args.listeners);
    let started = Instant::now();
    let deadline = args.duration.map(|d| started + d);
    let mut errors = Vec::new();
    let mut first_data: Option<Instant> = None;
    let mut last_data = started;
    let mut echoed = 0;
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        let busy = server.step(&mut errors);
        let total = server.echoed();
        if total != echoed {
            echoed = total;
            first_data.get_or_insert(now);
            last_data = now;
        }
        if !busy {
            let mut max = Duration::from_millis(100);
            if let Some(d) = deadline {
                max = max.min(d.saturating_duration_since(Instant::now()));
            }
            if let Err(e) = server.poll_wait(max) {
                errors.push(format!("link: {e}"));
                break;
            }
        }
    }
    for state in server.unfinished() {
        tracing::warn!("connection unfinished: {state}");
    }
    let per_connection_bytes = 2 * socket_buffer + pipelined::DEPTH * args.read_size;
    let memory = ServerMemory {
        max_connections: listeners,
        listeners,
        peak_connections: listeners,
        peak_sockets: listeners,
        per_connection_bytes,
        bound_bytes: (listeners * per_connection_bytes) as u64,
        peak_rss_bytes: peak_rss_bytes(),
    };
    let link = server.pipeline().driver().link();
    let link = LinkReport {
        offloads: link.offloads(),
        stats: link.stats(),
    };
    let outcome = RealOutcome {
        served: server.served,
        bytes_echoed: server.echoed(),
        secs: first_data.map_or(0.0, |f| last_data.duration_since(f).as_secs_f64()),
        errors,
    };
    Ok(real_report(mode, mtu, args, netdma, outcome, memory, link))
}
