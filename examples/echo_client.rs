//! A plain `std::net` echo client: the Linux kernel's TCP as the peer of `echo_server`.
//!
//! Opens K connections (one thread each, plus a writer thread per connection), sends N
//! bytes of seeded random data on each, and checks the echo byte for byte.
//!
//! ```text
//! echo_client --addr 10.77.0.1:7000 --connections 4 --bytes 16MiB
//! ```
//!
//! Exit status: 0 when every byte came back intact, 1 on any mismatch or I/O error, 2 on
//! a usage error.

use clap::Parser;
use netdma_suite::pattern;
use netdma_suite::report::gbps;
use netdma_suite::size::{human_bytes, parse_size, parse_usize_at_least};
use serde::Serialize;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Echo client over the kernel's TCP: sends seeded data, verifies every echoed byte.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The echo server, HOST:PORT.
    #[arg(long, default_value = "10.77.0.1:7000")]
    addr: String,
    /// Connections, each in its own thread.
    #[arg(long, value_name = "K", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    connections: u32,
    /// Bytes per connection (accepts KiB, MiB, GiB).
    #[arg(long, value_name = "N", default_value = "16MiB", value_parser = parse_size)]
    bytes: u64,
    /// Size of each write and read (accepts KiB).
    #[arg(long, value_name = "N", default_value = "64KiB", value_parser = io_size)]
    io_size: usize,
    /// Seed of the random data.
    #[arg(long, default_value_t = 0x6e65_7464_6d61)]
    seed: u64,
    /// Keep retrying the connection (server starting) for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    connect_timeout: f64,
    /// Fail a connection when no byte arrives for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    io_timeout: f64,
    /// Print one JSON object on stdout at the end, and nothing else there.
    #[arg(long)]
    json: bool,
}

fn io_size(s: &str) -> Result<usize, String> {
    parse_usize_at_least(s, 1)
}

/// The client's report (`--json`).
#[derive(Debug, Serialize)]
struct ClientReport {
    integrity_ok: bool,
    server: String,
    connections: u32,
    bytes_per_connection: u64,
    bytes_echoed: u64,
    elapsed_s: f64,
    throughput_gbps: f64,
    /// Connection attempts the server refused (each retried until --connect-timeout).
    refused: u64,
    errors: Vec<String>,
}

/// Connection attempts refused so far, over all connections.
static REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn secs(name: &str, v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|e| format!("--{name} {v}: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (connect_timeout, io_timeout) = match (
        secs("connect-timeout", args.connect_timeout),
        secs("io-timeout", args.io_timeout),
    ) {
        (Ok(a), Ok(b)) if !b.is_zero() => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("echo_client: {e}");
            return ExitCode::from(2);
        }
        _ => {
            eprintln!("echo_client: --io-timeout must be positive");
            return ExitCode::from(2);
        }
    };
    let server = match args.addr.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => a,
        Ok(None) | Err(_) => {
            eprintln!(
                "echo_client: cannot resolve {:?} (expected HOST:PORT)",
                args.addr
            );
            return ExitCode::from(2);
        }
    };

    let start = Instant::now();
    let results: Vec<Result<u64, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.connections)
            .map(|i| {
                let args = &args;
                s.spawn(move || {
                    run_connection(i as usize, server, args, connect_timeout, io_timeout)
                        .map_err(|e| format!("connection {i}: {e}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a connection thread panicked".to_owned()))
            })
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let bytes_echoed: u64 = results.iter().filter_map(|r| r.as_ref().ok()).sum();
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    let report = ClientReport {
        integrity_ok: errors.is_empty(),
        server: server.to_string(),
        connections: args.connections,
        bytes_per_connection: args.bytes,
        bytes_echoed,
        elapsed_s: elapsed,
        throughput_gbps: gbps(bytes_echoed, elapsed),
        refused: REFUSED.load(std::sync::atomic::Ordering::Relaxed),
        errors,
    };
    if args.json {
        match serde_json::to_string(&report) {
            Ok(s) => {
                let _ = writeln!(std::io::stdout(), "{s}");
            }
            Err(e) => eprintln!("echo_client: cannot serialize the report: {e}"),
        }
    } else {
        let _ = writeln!(
            std::io::stdout(),
            "echo_client: {} connection(s) x {} to {}: {} echoed in {:.3} s = {:.2} Gbit/s, {} refused attempt(s), integrity {}",
            report.connections,
            human_bytes(report.bytes_per_connection),
            report.server,
            human_bytes(report.bytes_echoed),
            report.elapsed_s,
            report.throughput_gbps,
            report.refused,
            if report.integrity_ok { "OK" } else { "FAILED" }
        );
    }
    for e in &report.errors {
        eprintln!("echo_client: {e}");
    }
    if report.integrity_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Connects, retrying while the server is not up yet.
fn connect(server: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = TcpStream::connect_timeout(&server, Duration::from_secs(2));
        if let Err(e) = &attempt {
            if e.kind() == ErrorKind::ConnectionRefused {
                REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        match attempt {
            Ok(s) => return Ok(s),
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(format!("connect to {server}: {e}")),
        }
    }
}

/// One connection: a writer thread sends the stream and shuts down its side; this thread
/// reads the echo and verifies it. Returns the bytes verified.
fn run_connection(
    index: usize,
    server: SocketAddr,
    args: &Args,
    connect_timeout: Duration,
    io_timeout: Duration,
) -> Result<u64, String> {
    let stream = connect(server, connect_timeout)?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(io_timeout))
        .and_then(|()| stream.set_write_timeout(Some(io_timeout)))
        .map_err(|e| format!("socket options: {e}"))?;
    let mut writer = stream.try_clone().map_err(|e| format!("clone: {e}"))?;
    let seed = pattern::connection_seed(args.seed, index);
    let total = args.bytes;
    let io = args.io_size;
    std::thread::scope(|s| {
        let w = s.spawn(move || -> Result<(), String> {
            let mut buf = vec![0u8; io];
            let mut sent = 0u64;
            while sent < total {
                let n = (total - sent).min(io as u64) as usize;
                pattern::fill(seed, sent, &mut buf[..n]);
                writer
                    .write_all(&buf[..n])
                    .map_err(|e| format!("write at byte {sent}: {e}"))?;
                sent += n as u64;
            }
            writer
                .shutdown(Shutdown::Write)
                .map_err(|e| format!("shutdown: {e}"))
        });
        let mut reader = &stream;
        let mut buf = vec![0u8; io];
        let mut scratch = Vec::new();
        let mut got = 0u64;
        let read_result = loop {
            match reader.read(&mut buf) {
                Ok(0) => {
                    if got == total {
                        break Ok(got);
                    }
                    break Err(format!(
                        "the server closed the connection after {got} of {total} bytes"
                    ));
                }
                Ok(n) => {
                    if got + n as u64 > total {
                        break Err(format!("more bytes echoed than the {total} sent"));
                    }
                    if let Some(off) = pattern::verify(seed, got, &buf[..n], &mut scratch) {
                        break Err(format!("echoed data differs at byte {off}"));
                    }
                    got += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Err(format!("read after {got} of {total} bytes: {e}")),
            }
        };
        if read_result.is_err() {
            // Unblock the writer if it is stuck on a full window.
            let _ = stream.shutdown(Shutdown::Both);
        }
        let write_result = w
            .join()
            .unwrap_or_else(|_| Err("the writer thread panicked".to_owned()));
        let got = read_result?;
        write_result?;
        Ok(got)
    })
}
