//! The echo server's end-of-run report: JSON (one object) or a short human table, and the
//! final "disable netdma, then unregister its DMA device" step.

use crate::size::human_bytes;
use dmaengine::EngineSnapshot;
use netdma::config::NetDmaConfig;
use netdma::{ControlError, Fallback, NetDma, RecvStats};
use serde::Serialize;

/// What happened when the run's end disabled offload and removed the DMA device.
#[derive(Clone, Debug, Serialize)]
pub struct AfterDisable {
    /// Whether offload was enabled when the run ended.
    pub was_enabled: bool,
    /// `disable()` succeeded (or offload was already off, e.g. `--no-dma`).
    pub disable_ok: bool,
    /// `Engine::unregister_device` accepted the removal of netdma's device (or it was
    /// removed already, through the control socket).
    pub unregister_ok: bool,
    /// The device had been removed before the run ended (`netdmactl dev remove`).
    pub already_removed: bool,
    /// Sum of all device references after the disable (0: nothing pinned).
    pub engine_references: usize,
    /// Devices still registered after the unregister.
    pub devices_left: usize,
    /// The error of the step that failed, if any.
    pub error: Option<String>,
}

/// Disables offload (waiting for in-flight copies), then unregisters netdma's device.
pub fn disable_and_unregister(netdma: &NetDma) -> AfterDisable {
    let was_enabled = netdma.is_enabled();
    let mut error = None;
    let disable_ok = match netdma.disable() {
        Ok(()) | Err(ControlError::AlreadyDisabled) => true,
        Err(e) => {
            error = Some(format!("disable: {e}"));
            false
        }
    };
    let engine_references = netdma.engine().snapshot().total_references();
    let mut already_removed = false;
    let unregister_ok = match netdma.device() {
        Some(id) => match netdma.engine().unregister_device(id) {
            Ok(()) => true,
            Err(dmaengine::UnregisterError::UnknownDevice(_)) => {
                already_removed = true;
                true
            }
            Err(e) => {
                error.get_or_insert(format!("unregister: {e}"));
                false
            }
        },
        None => {
            error.get_or_insert("unregister: netdma registered no device".to_owned());
            false
        }
    };
    AfterDisable {
        was_enabled,
        disable_ok,
        unregister_ok,
        already_removed,
        engine_references,
        devices_left: netdma.engine().snapshot().devices.len(),
        error,
    }
}

/// How the echo server reads its sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceivePath {
    /// `NetDma::recv`, one read at a time.
    Recv,
    /// The pipelined receive: reads posted ahead, filled while the stack polls.
    Pipelined,
}

impl ReceivePath {
    /// [`ReceivePath::Pipelined`] if `pipelined`, else [`ReceivePath::Recv`].
    pub fn of(pipelined: bool) -> ReceivePath {
        if pipelined {
            ReceivePath::Pipelined
        } else {
            ReceivePath::Recv
        }
    }
}

/// Everything the echo server reports at the end of a run (`--json` prints this).
#[derive(Clone, Debug, Serialize)]
pub struct EchoReport {
    /// `embedded` (in-process smoltcp client over the memory link), `tap` or `iface`.
    pub mode: String,
    /// How the server read its sockets.
    pub receive: ReceivePath,
    /// Every echoed byte matched (embedded mode), or: no connection ended in an error on
    /// the server side (real links, where the clients verify the data).
    pub integrity_ok: bool,
    /// Who compared the echoed bytes: `server` (embedded mode) or `clients`.
    pub integrity_verified_by: String,
    /// Connections served.
    pub connections: u64,
    /// Bytes per connection (embedded mode).
    pub bytes_per_connection: Option<u64>,
    /// Largest read the server makes.
    pub read_size: usize,
    /// IP MTU of the link.
    pub mtu: usize,
    /// Bytes echoed (embedded: received back by the client and verified).
    pub bytes_echoed: u64,
    /// Seconds the data flowed.
    pub elapsed_s: f64,
    /// `bytes_echoed` per second, in Gbit/s.
    pub throughput_gbps: f64,
    /// Errors met (empty on a clean run).
    pub errors: Vec<String>,
    /// The configuration in force.
    pub config: NetDmaConfig,
    /// netdma's receive counters: bytes by DMA and CPU, fallbacks by reason.
    pub recv: RecvStats,
    /// The engine (devices, channels and their counters, per-CPU table) before disable.
    pub engine: EngineSnapshot,
    /// The disable and device removal at the end.
    pub after_disable: AfterDisable,
    /// Real links: the server's connections and memory (absent in embedded mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<ServerMemory>,
    /// Real links: what the link negotiated with the kernel and its counters (super-frames
    /// received and sent, checksums trusted, verified and refused, system calls).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkReport>,
}

/// A real-link server's connections and memory (see [`crate::listeners`]).
#[derive(Clone, Debug, Serialize)]
pub struct ServerMemory {
    /// The most connections served at once (`--max-connections`).
    pub max_connections: usize,
    /// Listening sockets kept ready (`--listeners`).
    pub listeners: usize,
    /// Most connections open at once in this run.
    pub peak_connections: usize,
    /// Most sockets (connections and listeners) held at once.
    pub peak_sockets: usize,
    /// Buffer bytes one connection holds: two socket rings, the read buffer, the socket.
    pub per_connection_bytes: usize,
    /// `max_connections * per_connection_bytes`: the most the connections can hold.
    pub bound_bytes: u64,
    /// The process's peak resident memory (`VmHWM`), if the kernel reports it.
    pub peak_rss_bytes: Option<u64>,
}

/// A real link's offloads and counters at the end of a run.
#[derive(Clone, Debug, Serialize)]
pub struct LinkReport {
    /// What the link negotiated at open.
    pub offloads: netdma::link::Offloads,
    /// Its counters.
    pub stats: netdma::link::LinkStats,
}

/// Gbit/s for `bytes` in `secs`.
pub fn gbps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 * 8.0 / secs / 1e9
    } else {
        0.0
    }
}

impl EchoReport {
    /// The report of an embedded run: takes the counters and the engine snapshot, then
    /// disables offload and unregisters the device.
    pub fn embedded(
        netdma: &NetDma,
        opts: &crate::echo::EmbeddedOptions,
        outcome: crate::echo::EmbeddedOutcome,
    ) -> EchoReport {
        let engine = netdma.engine().snapshot();
        let recv = netdma.stats();
        let config = netdma.config();
        let after_disable = disable_and_unregister(netdma);
        let secs = outcome.elapsed.as_secs_f64();
        EchoReport {
            mode: "embedded".to_owned(),
            receive: ReceivePath::of(opts.pipelined),
            integrity_ok: outcome.integrity_ok,
            integrity_verified_by: "server".to_owned(),
            connections: opts.connections as u64,
            bytes_per_connection: (opts.bytes_per_connection != u64::MAX)
                .then_some(opts.bytes_per_connection),
            read_size: opts.read_size,
            mtu: opts.mtu,
            bytes_echoed: outcome.bytes_echoed,
            elapsed_s: secs,
            throughput_gbps: gbps(outcome.bytes_echoed, secs),
            errors: outcome.errors,
            config,
            recv,
            engine,
            after_disable,
            memory: None,
            link: None,
        }
    }

    /// The short human-readable table.
    pub fn human(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let r = &self.recv;
        let total = r.dma_bytes + r.cpu_bytes;
        let pct = |n: u64| {
            if total == 0 {
                0.0
            } else {
                n as f64 * 100.0 / total as f64
            }
        };
        let per_conn = self
            .bytes_per_connection
            .map(|b| format!(" x {}", human_bytes(b)))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "netdma echo ({}): {} connection(s){per_conn}, MTU {}, read size {}",
            self.mode, self.connections, self.mtu, self.read_size
        );
        let _ = writeln!(
            o,
            "  integrity         {} (verified by the {})",
            if self.integrity_ok { "OK" } else { "FAILED" },
            self.integrity_verified_by
        );
        let _ = writeln!(
            o,
            "  echoed            {} in {:.3} s = {:.2} Gbit/s",
            human_bytes(self.bytes_echoed),
            self.elapsed_s,
            self.throughput_gbps
        );
        let _ = writeln!(
            o,
            "  offload           {}, copybreak {}, {} channel(s)",
            if self.config.enabled || self.after_disable.was_enabled {
                "enabled"
            } else {
                "disabled"
            },
            self.config.tcp_dma_copybreak,
            self.config.engine.channels
        );
        let _ = writeln!(
            o,
            "  received by DMA   {:>12} B ({:5.1}%) in {} read(s)",
            r.dma_bytes,
            pct(r.dma_bytes),
            r.dma_reads
        );
        let _ = writeln!(
            o,
            "  received by CPU   {:>12} B ({:5.1}%) in {} CPU-only read(s)",
            r.cpu_bytes,
            pct(r.cpu_bytes),
            r.cpu_reads
        );
        let fallbacks: Vec<String> = Fallback::ALL
            .iter()
            .filter(|f| r.fallback.get(**f) > 0)
            .map(|f| {
                format!(
                    "{} {} ({})",
                    fallback_name(*f),
                    r.fallback.get(*f),
                    human_bytes(r.fallback_bytes.get(*f))
                )
            })
            .collect();
        let _ = writeln!(
            o,
            "  fallbacks         {}",
            if fallbacks.is_empty() {
                "none".to_owned()
            } else {
                fallbacks.join(", ")
            }
        );
        let _ = writeln!(
            o,
            "  {:<8} {:>6} {:>10} {:>16} {:>7} {:>7}",
            "channel", "table", "memcpy", "bytes", "in_use", "errors"
        );
        for d in &self.engine.devices {
            for c in &d.channels {
                let _ = writeln!(
                    o,
                    "  {:<8} {:>6} {:>10} {:>16} {:>7} {:>7}",
                    format!("{}", c.id),
                    c.table_count,
                    c.counters.memcpy_count,
                    c.counters.bytes_transferred,
                    c.counters.in_use,
                    c.counters.errors
                );
            }
        }
        let a = &self.after_disable;
        let _ = writeln!(
            o,
            "  after disable     references {}, device unregistered: {}{}",
            a.engine_references,
            match (a.unregister_ok, a.already_removed) {
                (true, true) => "yes (removed earlier through the control socket)",
                (true, false) => "yes",
                _ => "NO",
            },
            a.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        if let Some(m) = &self.memory {
            let _ = writeln!(
                o,
                "  connections       peak {} of at most {} ({} listeners kept ready), {} per connection, bound {}, peak RSS {}",
                m.peak_connections,
                m.max_connections,
                m.listeners,
                human_bytes(m.per_connection_bytes as u64),
                human_bytes(m.bound_bytes),
                m.peak_rss_bytes.map(human_bytes).unwrap_or_else(|| "unknown".to_owned())
            );
        }
        for e in &self.errors {
            let _ = writeln!(o, "  error: {e}");
        }
        o
    }
}

/// The snake_case name of a fallback reason (as in the JSON).
pub fn fallback_name(f: Fallback) -> String {
    serde_json::to_value(f)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{f:?}"))
}
