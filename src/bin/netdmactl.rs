//! `netdmactl`: operates a running netdma application through its control socket
//! (`echo_server --control PATH`, or any program serving [`netdma::ctl::CtlServer`]).
//!
//! ```text
//! netdmactl --socket PATH sysctl -a | get KEY | set KEY VALUE
//! netdmactl --socket PATH dma disable | enable
//! netdmactl --socket PATH dev list | remove NAME [--force]
//! netdmactl --socket PATH stats [--watch SECS [--count N]]
//! ```
//!
//! Human-readable output by default; `--json` prints the server's result as JSON instead.
//! Exit status: 0 done; 1 refused (a busy device, a bad key or value, an unknown device —
//! the message names it and says why); 2 a usage error or no connection to the server.

use clap::{Args, Parser, Subcommand};
use netdma::ctl::{
    CtlClient, DeviceInfo, DmaState, ErrorKind, Removed, Request, Response, SysctlEntry,
};
use serde_json::Value;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Controls a running netdma application through its control socket.
#[derive(Parser, Debug)]
#[command(name = "netdmactl", version)]
struct Cli {
    /// The application's control socket (e.g. what `echo_server --control` was given).
    #[arg(long, short = 's', value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// Print the result as JSON on stdout instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read or change settings by their sysctl names (`sysctl -a` lists them all).
    Sysctl(SysctlArgs),
    /// Turn offload off (netdma lets go of every DMA device) or on.
    Dma {
        #[command(subcommand)]
        op: DmaOp,
    },
    /// List the DMA devices, or remove one (refused while pinned, unless --force).
    Dev {
        #[command(subcommand)]
        op: DevOp,
    },
    /// Configuration, state and receive counters; --watch samples them periodically.
    Stats {
        /// Print a sample every SECS seconds (Ctrl-C stops).
        #[arg(long, value_name = "SECS", value_parser = parse_secs)]
        watch: Option<Duration>,
        /// With --watch: stop after N samples.
        #[arg(long, value_name = "N", requires = "watch",
              value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct SysctlArgs {
    /// List every key with its value.
    #[arg(short = 'a', long = "all")]
    all: bool,
    #[command(subcommand)]
    op: Option<SysctlOp>,
}

#[derive(Subcommand, Debug)]
enum SysctlOp {
    /// Print one key's value.
    Get {
        /// The sysctl name, e.g. net.ipv4.tcp_dma_copybreak.
        key: String,
    },
    /// Change one key; a bad key or value is refused and nothing changes.
    Set {
        /// The sysctl name.
        key: String,
        /// The new value (booleans as 0/1).
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
}

#[derive(Subcommand, Debug)]
enum DmaOp {
    /// Enable offload (netdma takes its engine client again).
    Enable,
    /// Disable offload: wait for copies in flight, then drop every device reference.
    Disable,
}

#[derive(Subcommand, Debug)]
enum DevOp {
    /// Devices with their channels, use counts and pinning clients.
    List,
    /// Unregister a device, named by id (dev0) or name (swdma); refused while pinned.
    Remove {
        /// The device's id or name.
        name: String,
        /// Remove it even while pinned (hot removal: reads fall back to the CPU).
        #[arg(long)]
        force: bool,
    },
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid interval {s:?}: expected seconds, e.g. 1 or 0.5"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err(format!("invalid interval {s:?}: must be more than 0"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid interval {s:?}: {e}"))
}

/// How a command ended.
enum Failure {
    /// The server declined (exit 1).
    Refused(String),
    /// Usage, connection or protocol error (exit 2).
    Usage(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(socket) = cli.socket.clone() else {
        eprintln!("netdmactl: --socket PATH is required (the application's control socket)");
        return ExitCode::from(2);
    };
    match run(&cli, &socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(m)) => {
            eprintln!("netdmactl: {m}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(m)) => {
            eprintln!("netdmactl: {m}");
            ExitCode::from(2)
        }
    }
}

fn connect(socket: &PathBuf) -> Result<CtlClient, Failure> {
    CtlClient::connect(socket).map_err(|e| {
        Failure::Usage(format!(
            "{e} (is the application running with its control socket there?)"
        ))
    })
}

/// Sends `req`; a refused or failed request becomes a [`Failure`].
fn call(client: &mut CtlClient, req: &Request) -> Result<Value, Failure> {
    let reply: Response = client
        .request(req)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    if reply.ok {
        return Ok(reply.result.unwrap_or(Value::Null));
    }
    match reply.error {
        Some(e) if e.kind == ErrorKind::Refused => Err(Failure::Refused(e.message)),
        Some(e) => Err(Failure::Usage(format!(
            "the server rejected the request: {}",
            e.message
        ))),
        None => Err(Failure::Usage(
            "the server failed without saying why".to_owned(),
        )),
    }
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Failure> {
    serde_json::from_value(v).map_err(|e| Failure::Usage(format!("unexpected reply: {e}")))
}

fn print(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Usage(format!("writing to stdout: {e}")))
}

fn print_json(v: &Value) -> Result<(), Failure> {
    print(&format!("{v}\n"))
}

fn run(cli: &Cli, socket: &PathBuf) -> Result<(), Failure> {
    let req = match &cli.command {
        Command::Sysctl(a) => match (&a.op, a.all) {
            (None, true) => Request::SysctlAll,
            (Some(SysctlOp::Get { key }), false) => Request::SysctlGet { key: key.clone() },
            (Some(SysctlOp::Set { key, value }), false) => Request::SysctlSet {
                key: key.clone(),
                value: value.clone(),
            },
            _ => {
                return Err(Failure::Usage(
                    "sysctl needs -a, `get KEY` or `set KEY VALUE`".to_owned(),
                ))
            }
        },
        Command::Dma { op: DmaOp::Enable } => Request::DmaEnable,
        Command::Dma { op: DmaOp::Disable } => Request::DmaDisable,
        Command::Dev { op: DevOp::List } => Request::DevList,
        Command::Dev {
            op: DevOp::Remove { name, force },
        } => Request::DevRemove {
            name: name.clone(),
            force: *force,
        },
        Command::Stats { watch, count } => {
            let mut client = connect(socket)?;
            return match watch {
                None => {
                    let v = call(&mut client, &Request::Stats)?;
                    if cli.json {
                        print_json(&with_totals(v))
                    } else {
                        print(&stats_table(&v))
                    }
                }
                Some(every) => watch_stats(&mut client, *every, *count, cli.json),
            };
        }
    };
    let mut client = connect(socket)?;
    let v = call(&mut client, &req)?;
    if cli.json {
        return print_json(&v);
    }
    let text = match req {
        Request::SysctlAll => {
            let all: Vec<SysctlEntry> = typed(v)?;
            all.iter()
                .map(|e| format!("{} = {}\n", e.key, e.value))
                .collect()
        }
        Request::SysctlGet { .. } => {
            format!("{} = {}\n", str_field(&v, "key"), str_field(&v, "value"))
        }
        Request::SysctlSet { .. } => format!(
            "{} = {} (was {})\n",
            str_field(&v, "key"),
            str_field(&v, "value"),
            str_field(&v, "old")
        ),
        Request::DmaEnable | Request::DmaDisable => dma_text(&typed(v)?),
        Request::DevList => dev_table(&typed::<Vec<DeviceInfo>>(v)?),
        Request::DevRemove { .. } => {
            let r: Removed = typed(v)?;
            if r.forced {
                format!(
                    "device {} ({}) removed by force; {} reference(s) dropped\n",
                    r.name, r.id, r.references_dropped
                )
            } else {
                format!("device {} ({}) unregistered\n", r.name, r.id)
            }
        }
        Request::Stats => stats_table(&v),
    };
    print(&text)
}

fn str_field<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("?")
}

fn u64_at(v: &Value, path: &[&str]) -> u64 {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

fn dma_text(s: &DmaState) -> String {
    let mut o = format!(
        "netdma offload {}{}; it {} its engine client; {} device reference(s), {} device(s) \
         registered\n",
        if s.enabled { "enabled" } else { "disabled" },
        if s.changed { "" } else { " (already)" },
        if s.holds_client {
            "holds"
        } else {
            "does not hold"
        },
        s.references,
        s.devices
    );
    if let Some(n) = &s.note {
        let _ = writeln!(o, "note: {n}");
    }
    o
}

fn dev_table(devs: &[DeviceInfo]) -> String {
    if devs.is_empty() {
        return "no DMA devices registered\n".to_owned();
    }
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<6} {:<12} {:>8} {:>6} {:>7} {:>7}  HELD BY",
        "DEVICE", "NAME", "CHANNELS", "REFS", "CLIENTS", "PRIVATE"
    );
    for d in devs {
        let _ = writeln!(
            o,
            "{:<6} {:<12} {:>8} {:>6} {:>7} {:>7}  {}",
            d.id,
            d.name,
            d.channels,
            d.references,
            d.clients,
            d.private_channels,
            if d.netdma_holds {
                "netdma offload"
            } else if d.clients > 0 || d.private_channels > 0 {
                "other clients"
            } else {
                "-"
            }
        );
        for c in &d.channel_list {
            let _ = writeln!(
                o,
                "  {:<6} in_use {:>2}  table {:>3}  memcpy {:>10}  bytes {:>14}  errors {}",
                c.name, c.in_use, c.table_count, c.memcpy_count, c.bytes_transferred, c.errors
            );
        }
    }
    o
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

const FALLBACKS: [&str; 9] = [
    "below_copybreak",
    "disabled",
    "low_latency",
    "peek",
    "no_channel",
    "ring_full",
    "channel_error",
    "timeout",
    "adaptive",
];

fn stats_table(v: &Value) -> String {
    let mut o = String::new();
    let dma = u64_at(v, &["recv", "dma_bytes"]);
    let cpu = u64_at(v, &["recv", "cpu_bytes"]);
    let total = dma + cpu;
    let pct = |n: u64| {
        if total == 0 {
            0.0
        } else {
            n as f64 * 100.0 / total as f64
        }
    };
    let enabled = v.get("enabled").and_then(Value::as_bool).unwrap_or(false);
    let holds = v
        .get("holds_client")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let copybreak = v
        .pointer("/config/tcp_dma_copybreak")
        .map(|c| match c {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_else(|| "?".to_owned());
    let devices = v
        .pointer("/engine/devices")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let _ = writeln!(
        o,
        "offload           {}{}, copybreak {copybreak}, {devices} device(s)",
        if enabled { "enabled" } else { "disabled" },
        if enabled && !holds {
            " (engine client released while idle)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "received by DMA   {:>16} B ({:5.1}%) in {} read(s)",
        dma,
        pct(dma),
        u64_at(v, &["recv", "dma_reads"])
    );
    let _ = writeln!(
        o,
        "received by CPU   {:>16} B ({:5.1}%) in {} CPU-only read(s)",
        cpu,
        pct(cpu),
        u64_at(v, &["recv", "cpu_reads"])
    );
    let fb: Vec<String> = FALLBACKS
        .iter()
        .filter_map(|name| {
            let n = u64_at(v, &["recv", "fallback", name]);
            (n > 0).then(|| {
                format!(
                    "{name} {n} ({})",
                    human_bytes(u64_at(v, &["recv", "fallback_bytes", name]))
                )
            })
        })
        .collect();
    let _ = writeln!(
        o,
        "fallbacks         {}",
        if fb.is_empty() {
            "none".to_owned()
        } else {
            fb.join(", ")
        }
    );
    o
}

/// The stats snapshot with the receive totals (`dma_bytes`, `cpu_bytes`) also at the top
/// level, for scripts.
fn with_totals(mut v: Value) -> Value {
    let totals = ["dma_bytes", "cpu_bytes"].map(|k| (k, v["recv"][k].clone()));
    if let Some(top) = v.as_object_mut() {
        for (k, total) in totals {
            top.insert(k.to_owned(), total);
        }
    }
    v
}

fn watch_stats(
    client: &mut CtlClient,
    every: Duration,
    count: Option<u64>,
    json: bool,
) -> Result<(), Failure> {
    let started = Instant::now();
    let mut prev: Option<(Instant, u64, u64)> = None;
    let mut n = 0u64;
    loop {
        let v = call(client, &Request::Stats)?;
        let now = Instant::now();
        if json {
            print_json(&with_totals(v.clone()))?;
        } else {
            if prev.is_none() {
                print(&format!(
                    "{:>8} {:>8} {:>12} {:>12} {:>16} {:>16} {:>7}\n",
                    "time_s",
                    "offload",
                    "dma MiB/s",
                    "cpu MiB/s",
                    "dma_bytes",
                    "cpu_bytes",
                    "devices"
                ))?;
            }
            let dma = u64_at(&v, &["recv", "dma_bytes"]);
            let cpu = u64_at(&v, &["recv", "cpu_bytes"]);
            let (dr, cr) = match prev {
                Some((t, d0, c0)) => {
                    let s = now.duration_since(t).as_secs_f64().max(1e-9);
                    let mib = |a: u64, b: u64| a.saturating_sub(b) as f64 / s / (1 << 20) as f64;
                    (
                        format!("{:.1}", mib(dma, d0)),
                        format!("{:.1}", mib(cpu, c0)),
                    )
                }
                None => ("-".to_owned(), "-".to_owned()),
            };
            let enabled = v.get("enabled").and_then(Value::as_bool).unwrap_or(false);
            let devices = v
                .pointer("/engine/devices")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            print(&format!(
                "{:>8.1} {:>8} {:>12} {:>12} {:>16} {:>16} {:>7}\n",
                now.duration_since(started).as_secs_f64(),
                if enabled { "on" } else { "off" },
                dr,
                cr,
                dma,
                cpu,
                devices
            ))?;
            prev = Some((now, dma, cpu));
        }
        n += 1;
        if count.is_some_and(|c| n >= c) {
            return Ok(());
        }
        std::thread::sleep(every);
    }
}
