//! The control socket: a running application's [`NetDma`] operated from outside the
//! process (what `netdmactl` talks to).
//!
//! [`control`](crate::control) holds the in-process controls ([`NetDma::get`],
//! [`NetDma::set`], [`NetDma::enable`], [`NetDma::disable`], the counters) and the
//! engine holds the device operations ([`Engine::unregister_device`],
//! [`Engine::remove_device`]). This module puts all of them behind a Unix domain socket, so
//! an administrator can change a setting, let go of the DMA device and remove it while the
//! network service keeps running, as `sysctl` and `rmmod` do for Linux.
//!
//! # The socket
//!
//! [`CtlServer::bind`] creates the socket at a path the application chooses, owner-only
//! (mode 0600): it is bound inside a fresh directory of mode 0700, set to 0600 there and
//! only then renamed to its final path, so nobody else can connect even for an instant.
//! A stale socket left at the path by a dead process is replaced; a live one (something
//! answers) or any other kind of file is an error. The socket is removed when the server
//! is dropped.
//!
//! The server runs on its own threads: one accepts, one serves each connection (at most
//! [`CtlOptions::max_connections`] at once; beyond that a connection gets an
//! `unavailable` error reply and is closed). The receive path never waits for a client:
//! every command is one of the controls above, which share the receive path's locks only
//! for a copy of the settings, or as a writer that readers skip (they copy with the CPU
//! meanwhile). Commands that change something run one at a time.
//!
//! # Protocol
//!
//! Line-delimited JSON: each request is one JSON object on one line, and gets exactly one
//! reply line. A connection may carry any number of requests. The command is the `cmd`
//! field ([`Request`]):
//!
//! ```text
//! {"cmd":"sysctl_get","key":"net.ipv4.tcp_dma_copybreak"}
//! {"cmd":"sysctl_set","key":"net.ipv4.tcp_dma_copybreak","value":"8192"}
//! {"cmd":"sysctl_all"}
//! {"cmd":"dma_disable"}          {"cmd":"dma_enable"}
//! {"cmd":"dev_list"}
//! {"cmd":"dev_remove","name":"swdma"}     {"cmd":"dev_remove","name":"dev0","force":true}
//! {"cmd":"stats"}
//! ```
//!
//! A reply ([`Response`]) is `{"ok":true,"result":...}` or
//! `{"ok":false,"error":{"kind":...,"message":...}}`, where `kind` is
//! - `refused`: the request was understood and declined — an unknown or read-only sysctl
//!   key, a bad value (the message is [`NetDma::set`]'s, naming the key and the accepted
//!   range), a busy device (naming how many clients pin it), an unknown device. Nothing
//!   changed.
//! - `bad_request`: not valid JSON, not an object, an unknown command, a missing field, or
//!   a line longer than [`CtlOptions::max_request_bytes`] (the connection is then closed).
//! - `unavailable`: too many control connections at once.
//!
//! The results, by command:
//! - `sysctl_get`: `{"key","value"}`; `sysctl_set`: `{"key","old","value"}`;
//!   `sysctl_all`: an array of [`SysctlEntry`].
//! - `dma_enable`, `dma_disable`: a [`DmaState`] (asking for the state already in force is
//!   not an error: `changed` is false).
//! - `dev_list`: an array of [`DeviceInfo`]; `dev_remove`: a [`Removed`].
//! - `stats`: a [`NetDmaSnapshot`](crate::NetDmaSnapshot) — `enabled`, `holds_client`,
//!   `config`, `recv` (with `dma_bytes` and `cpu_bytes`) and `engine`, the fields of the
//!   same names in the echo server's JSON report.
//!
//! A reply written to a client that already hung up may raise `SIGPIPE`, which Rust
//! programs ignore by default; a program that restores the signal's default action must
//! ignore it again before serving a control socket.
//!
//! # Devices and removal
//!
//! A device is named by its id (`dev0`) or by its provider's name (`swdma`) when that is
//! unique. `dev_remove` without `force` is `rmmod`: refused while anything pins the device
//! — in particular while netdma's offload holds its engine client; `dma_disable` lets go.
//! With `force` the device is removed even while pinned (hot removal): its in-flight
//! copies finish or fail, and netdma's reads fall back to the CPU.
//!
//! ```no_run
//! use netdma::ctl::{CtlClient, CtlServer, Request};
//! use netdma::{NetDma, NetDmaConfig};
//! use std::sync::Arc;
//!
//! let netdma = Arc::new(NetDma::from_config(NetDmaConfig::default())?);
//! let server = CtlServer::bind("/run/echo/netdma.sock", netdma.clone())?;
//! // ... from anywhere else:
//! let mut client = CtlClient::connect("/run/echo/netdma.sock")?;
//! let reply = client.request(&Request::DmaDisable)?;
//! assert!(reply.ok);
//! drop(server); // stops serving and removes the socket
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::config::NetDmaConfig;
use crate::control::{ControlError, NetDma};
use dmaengine::{DeviceSnapshot, Engine, UnregisterError};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::io::{self, BufRead, BufReader, ErrorKind as IoErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the accepting thread sleeps when no connection is waiting: from the first
/// value, doubling while idle up to the second (it checks for shutdown at this pace too).
const ACCEPT_POLL: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(50));
/// How often a connection's thread wakes from a read to check for shutdown and idleness.
const READ_SLICE: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why the control socket could not be set up or reached.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Something other than a socket is at the path: it is left alone.
    #[error("control socket {}: the path exists and is not a socket", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Another server answers at the path.
    #[error("control socket {}: another server is listening there", path.display())]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// The socket could not be created, secured or moved into place.
    #[error("control socket {}: {what}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// Connecting to, writing to or reading from a server failed.
    #[error("control socket {}: {source}", path.display())]
    Connect {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The server closed the connection without replying.
    #[error("control socket {}: the server closed the connection without a reply", path.display())]
    NoReply {
        /// The path.
        path: PathBuf,
    },
    /// The server's reply is not a valid [`Response`].
    #[error("control socket {}: invalid reply: {message}", path.display())]
    BadReply {
        /// The path.
        path: PathBuf,
        /// What was wrong with it.
        message: String,
    },
}

// ---------------------------------------------------------------------------------------
// Protocol
// ---------------------------------------------------------------------------------------

/// One request: a JSON object on one line whose `cmd` field names the command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Reads a setting by its sysctl name ([`NetDma::get`]).
    SysctlGet {
        /// The sysctl name, e.g. `net.ipv4.tcp_dma_copybreak`.
        key: String,
    },
    /// Changes a setting by its sysctl name ([`NetDma::set`]); on error nothing changes.
    SysctlSet {
        /// The sysctl name.
        key: String,
        /// The new value in sysctl form (a JSON number is accepted too).
        #[serde(deserialize_with = "string_or_number")]
        value: String,
    },
    /// Every key with its value, as `sysctl -a`.
    SysctlAll,
    /// Enables offload ([`NetDma::enable`]).
    DmaEnable,
    /// Disables offload and lets go of every DMA device ([`NetDma::disable`]).
    DmaDisable,
    /// The engine's devices, their channels and what pins them.
    DevList,
    /// Unregisters a device: refused while pinned, unless `force`.
    DevRemove {
        /// The device's id (`dev0`) or its provider's name if unique (`swdma`).
        name: String,
        /// Hot removal even while pinned ([`Engine::remove_device`]).
        #[serde(default)]
        force: bool,
    },
    /// Configuration, state, receive counters and the engine ([`NetDma::snapshot`]).
    Stats,
}

/// Every command's `cmd` name.
pub const COMMANDS: &[&str] = &[
    "sysctl_get",
    "sysctl_set",
    "sysctl_all",
    "dma_enable",
    "dma_disable",
    "dev_list",
    "dev_remove",
    "stats",
];

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "`value` must be a string or a number, not {other}"
        ))),
    }
}

/// The reply to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the command was carried out.
    pub ok: bool,
    /// The command's result (see the [module documentation](self)), when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why not, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReply>,
}

impl Response {
    fn ok(result: impl Serialize) -> Response {
        match serde_json::to_value(result) {
            Ok(v) => Response {
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => Response::err(ErrorKind::Unavailable, format!("cannot serialize: {e}")),
        }
    }

    fn err(kind: ErrorKind, message: impl Into<String>) -> Response {
        Response {
            ok: false,
            result: None,
            error: Some(ErrorReply {
                kind,
                message: message.into(),
            }),
        }
    }

    fn refused(message: impl Into<String>) -> Response {
        Response::err(ErrorKind::Refused, message)
    }

    fn bad_request(message: impl Into<String>) -> Response {
        Response::err(ErrorKind::BadRequest, message)
    }
}

/// A refused or failed request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What went wrong, naming the key or device at fault.
    pub message: String,
}

/// The kinds of failure a reply reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Understood and declined: a bad key or value, a busy or unknown device. Nothing
    /// changed.
    Refused,
    /// Not a request: malformed JSON, unknown command, missing field, line too long.
    BadRequest,
    /// The server cannot serve this connection now (too many connections).
    Unavailable,
}

/// One line of `sysctl_all`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysctlEntry {
    /// The sysctl name.
    pub key: String,
    /// Its value in sysctl form.
    pub value: String,
    /// Whether `sysctl_set` may change it.
    pub writable: bool,
    /// The accepted values.
    pub range: String,
}

/// The offload's state after `dma_enable` or `dma_disable`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmaState {
    /// Whether offload is enabled now.
    pub enabled: bool,
    /// Whether this request changed it (false: it was so already).
    pub changed: bool,
    /// Whether netdma holds its engine client (and so pins devices) now.
    pub holds_client: bool,
    /// The sum of all devices' references (0: nothing pinned, every device removable).
    pub references: usize,
    /// Devices registered with the engine.
    pub devices: usize,
    /// A remark for the operator, e.g. that no device is left to offload to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One channel in a [`DeviceInfo`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// The channel's name (`dma0`).
    pub name: String,
    /// Users of the channel (sysfs `in_use`).
    pub in_use: usize,
    /// Per-CPU table slots pointing at it.
    pub table_count: usize,
    /// Memcpy descriptors submitted.
    pub memcpy_count: u64,
    /// Bytes submitted.
    pub bytes_transferred: u64,
    /// Transfers that ended in error.
    pub errors: u64,
}

/// One device of `dev_list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The device's id (`dev0`).
    pub id: String,
    /// Its provider's name (`swdma`).
    pub name: String,
    /// Number of channels.
    pub channels: usize,
    /// The module pin: one reference per channel per user (as `lsmod`'s use count); the
    /// device can be unregistered only at 0.
    pub in_use: usize,
    /// Public clients pinning it.
    pub clients: usize,
    /// Channels of it held privately.
    pub private_channels: usize,
    /// Whether netdma's offload is among the clients pinning it.
    pub netdma_holds: bool,
    /// Its channels.
    pub channel_list: Vec<ChannelInfo>,
}

/// The result of `dev_remove`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// The removed device's id.
    pub id: String,
    /// Its provider's name.
    pub name: String,
    /// Whether it was a forced (hot) removal.
    pub forced: bool,
    /// References the removal dropped (0 for an ordinary unregister).
    pub references_dropped: usize,
}

// ---------------------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------------------

/// Parses one request line and carries it out.
fn handle_line(line: &[u8], netdma: &NetDma) -> Response {
    let text = match std::str::from_utf8(line) {
        Ok(t) => t,
        Err(e) => return Response::bad_request(format!("malformed request: not UTF-8 ({e})")),
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Response::bad_request(format!("malformed JSON: {e}")),
    };
    let Some(obj) = value.as_object() else {
        return Response::bad_request("a request must be a JSON object with a `cmd` field");
    };
    let cmd = match obj.get("cmd") {
        Some(Value::String(c)) => c.clone(),
        Some(_) => return Response::bad_request("`cmd` must be a string"),
        None => {
            return Response::bad_request(format!(
                "missing `cmd`; commands: {}",
                COMMANDS.join(", ")
            ))
        }
    };
    if !COMMANDS.contains(&cmd.as_str()) {
        return Response::bad_request(format!(
            "unknown command `{cmd}`; commands: {}",
            COMMANDS.join(", ")
        ));
    }
    match serde_json::from_value::<Request>(value) {
        // Concurrent operators cannot undo each other's changes: `NetDma`'s controls are
        // serialized where they change the configuration.
        Ok(req) => execute(&req, netdma),
        Err(e) => Response::bad_request(format!("invalid `{cmd}` request: {e}")),
    }
}

/// Carries out one request against `netdma` and its engine.
pub fn execute(req: &Request, netdma: &NetDma) -> Response {
    tracing::debug!(?req, "control request");
    match req {
        Request::SysctlGet { key } => match netdma.get(key) {
            Ok(value) => Response::ok(serde_json::json!({ "key": key, "value": value })),
            Err(e) => Response::refused(e.to_string()),
        },
        Request::SysctlSet { key, value } => {
            let old = match netdma.get(key) {
                Ok(v) => v,
                Err(e) => return Response::refused(e.to_string()),
            };
            match netdma.set(key, value) {
                Ok(()) => {
                    let new = netdma.get(key).unwrap_or_else(|_| value.clone());
                    tracing::info!(%key, %old, value = %new, "sysctl set over the control socket");
                    Response::ok(serde_json::json!({ "key": key, "old": old, "value": new }))
                }
                Err(e) => Response::refused(e.to_string()),
            }
        }
        Request::SysctlAll => {
            let cfg = netdma.config();
            Response::ok(sysctl_all(&cfg))
        }
        Request::DmaEnable => {
            let changed = match netdma.enable() {
                Ok(()) => true,
                Err(ControlError::AlreadyEnabled) => false,
                Err(e) => return Response::refused(e.to_string()),
            };
            Response::ok(dma_state(netdma, changed))
        }
        Request::DmaDisable => {
            let changed = match netdma.disable() {
                Ok(()) => true,
                Err(ControlError::AlreadyDisabled) => false,
                Err(e) => return Response::refused(e.to_string()),
            };
            Response::ok(dma_state(netdma, changed))
        }
        Request::DevList => Response::ok(dev_list(netdma)),
        Request::DevRemove { name, force } => dev_remove(netdma, name, *force),
        Request::Stats => Response::ok(netdma.snapshot()),
    }
}

fn sysctl_all(cfg: &NetDmaConfig) -> Vec<SysctlEntry> {
    NetDmaConfig::keys()
        .iter()
        .map(|k| SysctlEntry {
            key: k.sysctl.to_owned(),
            value: k.value(cfg),
            writable: k.writable,
            range: k.range(),
        })
        .collect()
}

fn dma_state(netdma: &NetDma, changed: bool) -> DmaState {
    let snap = netdma.engine().snapshot();
    let enabled = netdma.is_enabled();
    let note = (enabled && snap.devices.is_empty()).then(|| {
        "no DMA device is registered: every read is copied by the CPU (counted as no_channel) \
         until one is"
            .to_owned()
    });
    DmaState {
        enabled,
        changed,
        holds_client: netdma.holds_client(),
        references: snap.total_references(),
        devices: snap.devices.len(),
        note,
    }
}

fn device_info(d: &DeviceSnapshot, netdma_holds: bool) -> DeviceInfo {
    DeviceInfo {
        id: d.id.to_string(),
        name: d.name.clone(),
        channels: d.channels.len(),
        in_use: d.references,
        clients: d.clients,
        private_channels: d.private_channels,
        netdma_holds: netdma_holds && d.clients > 0,
        channel_list: d
            .channels
            .iter()
            .map(|c| ChannelInfo {
                name: c.id.to_string(),
                in_use: c.counters.in_use,
                table_count: c.table_count,
                memcpy_count: c.counters.memcpy_count,
                bytes_transferred: c.counters.bytes_transferred,
                errors: c.counters.errors,
            })
            .collect(),
    }
}

fn dev_list(netdma: &NetDma) -> Vec<DeviceInfo> {
    let holds = netdma.holds_client();
    netdma
        .engine()
        .snapshot()
        .devices
        .iter()
        .map(|d| device_info(d, holds))
        .collect()
}

/// Finds the device `name` names: its id (`dev0`), or its provider's name if unique.
fn resolve(engine: &Engine, name: &str) -> Result<DeviceSnapshot, String> {
    let devices = engine.snapshot().devices;
    if let Some(d) = devices.iter().find(|d| d.id.to_string() == name) {
        return Ok(d.clone());
    }
    let named: Vec<&DeviceSnapshot> = devices.iter().filter(|d| d.name == name).collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => {
            let known: Vec<String> = devices
                .iter()
                .map(|d| format!("{} ({})", d.name, d.id))
                .collect();
            Err(format!(
                "no device named `{name}`; devices: {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))
        }
        many => {
            let ids: Vec<String> = many.iter().map(|d| d.id.to_string()).collect();
            Err(format!(
                "`{name}` is ambiguous: devices {} share that name; name one by its id",
                ids.join(", ")
            ))
        }
    }
}

fn dev_remove(netdma: &NetDma, name: &str, force: bool) -> Response {
    let engine = netdma.engine();
    let dev = match resolve(engine, name) {
        Ok(d) => d,
        Err(msg) => return Response::refused(msg),
    };
    let label = format!("{} ({})", dev.name, dev.id);
    let result = if force {
        engine.remove_device(dev.id)
    } else {
        engine.unregister_device(dev.id).map(|()| 0)
    };
    match result {
        Ok(dropped) => {
            tracing::info!(device = %label, force, references_dropped = dropped, "device removed over the control socket");
            Response::ok(Removed {
                id: dev.id.to_string(),
                name: dev.name,
                forced: force,
                references_dropped: dropped,
            })
        }
        Err(UnregisterError::Busy {
            clients,
            private_channels,
            references,
            ..
        }) => {
            let holder = if netdma.holds_client() && clients > 0 {
                "; netdma offload holds it: run `dma disable` first"
            } else {
                ""
            };
            Response::refused(format!(
                "cannot remove device {label}: in use, pinned by {clients} client(s) and \
                 {private_channels} private channel(s) ({references} channel references)\
                 {holder} (or remove it by force)"
            ))
        }
        Err(e) => Response::refused(format!("cannot remove device {label}: {e}")),
    }
}

// ---------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------

/// Limits of a [`CtlServer`].
#[derive(Clone, Debug)]
pub struct CtlOptions {
    /// Connections served at once (default 16); more get an `unavailable` reply.
    pub max_connections: usize,
    /// The longest request line, in bytes without its newline (default 64 KiB); a longer
    /// one gets a `bad_request` reply and the connection is closed.
    pub max_request_bytes: usize,
    /// A connection that sends nothing for this long is closed (default 60 s).
    pub idle_timeout: Duration,
    /// A reply the client does not read within this long closes the connection
    /// (default 5 s).
    pub write_timeout: Duration,
}

impl Default for CtlOptions {
    fn default() -> Self {
        CtlOptions {
            max_connections: 16,
            max_request_bytes: 64 << 10,
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(5),
        }
    }
}

struct Shared {
    netdma: Arc<NetDma>,
    opts: CtlOptions,
    stop: AtomicBool,
    active: AtomicUsize,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// A control socket serving one [`NetDma`]. Dropping it stops the server and removes the
/// socket file; it returns once every connection is closed (within about 100 ms, or
/// [`CtlOptions::write_timeout`] for a client that does not read its reply).
pub struct CtlServer {
    path: PathBuf,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for CtlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtlServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl CtlServer {
    /// Serves `netdma` at `path` with the default [`CtlOptions`].
    pub fn bind(path: impl AsRef<Path>, netdma: Arc<NetDma>) -> Result<CtlServer, CtlError> {
        Self::bind_with(path, netdma, CtlOptions::default())
    }

    /// Serves `netdma` at `path` (created with mode 0600) with `opts`.
    pub fn bind_with(
        path: impl AsRef<Path>,
        netdma: Arc<NetDma>,
        opts: CtlOptions,
    ) -> Result<CtlServer, CtlError> {
        let path = path.as_ref().to_path_buf();
        let listener = create_listener(&path)?;
        let io_err = |what, source| CtlError::Io {
            path: path.clone(),
            what,
            source,
        };
        if let Err(e) = listener.set_nonblocking(true) {
            let _ = std::fs::remove_file(&path);
            return Err(io_err("cannot make the listener non-blocking", e));
        }
        let shared = Arc::new(Shared {
            netdma,
            opts,
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            workers: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("netdma-ctl".to_owned())
                .spawn(move || accept_loop(&listener, &shared))
        };
        let acceptor = match acceptor {
            Ok(h) => h,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(io_err("cannot start the server thread", e));
            }
        };
        tracing::info!(path = %path.display(), "netdma control socket listening");
        Ok(CtlServer {
            path,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Connections being served now.
    pub fn active_connections(&self) -> usize {
        self.shared.active.load(Ordering::Acquire)
    }
}

impl Drop for CtlServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        let workers = std::mem::take(&mut *lock(&self.shared.workers));
        for w in workers {
            let _ = w.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Binds the socket owner-only: inside a fresh 0700 directory next to `path`, set to 0600
/// there, then renamed into place.
fn create_listener(path: &Path) -> Result<UnixListener, CtlError> {
    let io_err = |what, source| CtlError::Io {
        path: path.to_path_buf(),
        what,
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(CtlError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            if UnixStream::connect(path).is_ok() {
                return Err(CtlError::InUse {
                    path: path.to_path_buf(),
                });
            }
            // A socket nobody listens on: left by a process that died.
            std::fs::remove_file(path).map_err(|e| io_err("cannot remove the stale socket", e))?;
        }
        Err(e) if e.kind() == IoErrorKind::NotFound => {}
        Err(e) => return Err(io_err("cannot inspect the path", e)),
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let dir = parent.join(format!(
        ".netdma-ctl.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| io_err("cannot create a private directory beside it", e))?;
    let staged = dir.join("s");
    let result = (|| {
        let listener =
            UnixListener::bind(&staged).map_err(|e| io_err("cannot bind the socket", e))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err("cannot set mode 0600", e))?;
        std::fs::rename(&staged, path)
            .map_err(|e| io_err("cannot move the socket into place", e))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&dir);
    result
}

fn accept_loop(listener: &UnixListener, shared: &Arc<Shared>) {
    let mut idle = ACCEPT_POLL.0;
    while !shared.stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                admit(stream, shared);
                idle = ACCEPT_POLL.0;
            }
            Err(e) if e.kind() == IoErrorKind::WouldBlock => {
                std::thread::sleep(idle);
                idle = (idle * 2).min(ACCEPT_POLL.1);
            }
            Err(e) if e.kind() == IoErrorKind::Interrupted => {}
            Err(e) => {
                // E.g. out of file descriptors: back off rather than spin.
                tracing::warn!(error = %e, "control socket: accept failed");
                std::thread::sleep(ACCEPT_POLL.1);
            }
        }
        lock(&shared.workers).retain(|w| !w.is_finished());
    }
}

/// Hands an accepted connection to its own thread, or turns it away when too many are
/// served already. Never blocks on the client.
fn admit(mut stream: UnixStream, shared: &Arc<Shared>) {
    if shared.active.load(Ordering::Acquire) >= shared.opts.max_connections {
        let _ = stream.set_nonblocking(true);
        let reply = Response::err(
            ErrorKind::Unavailable,
            format!(
                "too many control connections (at most {}); try again later",
                shared.opts.max_connections
            ),
        );
        let _ = write_reply(&mut stream, &reply);
        return;
    }
    shared.active.fetch_add(1, Ordering::AcqRel);
    let worker = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("netdma-ctl-conn".to_owned())
            .spawn(move || {
                serve_connection(stream, &shared);
                shared.active.fetch_sub(1, Ordering::AcqRel);
            })
    };
    match worker {
        Ok(h) => lock(&shared.workers).push(h),
        Err(e) => {
            shared.active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(error = %e, "control socket: cannot start a connection thread");
        }
    }
}

fn write_reply(stream: &mut UnixStream, reply: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    stream.flush()
}

/// Serves one connection: one reply per request line, until the client closes, stays
/// idle too long, sends an oversized line, stops reading replies, or the server stops.
fn serve_connection(mut stream: UnixStream, shared: &Shared) {
    let opts = &shared.opts;
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(READ_SLICE)).is_err()
        || stream
            .set_write_timeout(Some(opts.write_timeout.max(Duration::from_millis(1))))
            .is_err()
    {
        return;
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut last_activity = Instant::now();
    let mut scanned = 0; // bytes of `buf` known to hold no newline
    loop {
        while let Some(pos) = buf[scanned..].iter().position(|&b| b == b'\n') {
            let end = scanned + pos;
            let line: Vec<u8> = buf.drain(..=end).collect();
            scanned = 0;
            let line = &line[..end];
            if line.len() > opts.max_request_bytes {
                refuse_and_close(stream, &too_long(opts.max_request_bytes));
                return;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let reply = handle_line(line, &shared.netdma);
            if write_reply(&mut stream, &reply).is_err() {
                return;
            }
        }
        scanned = buf.len();
        if buf.len() > opts.max_request_bytes {
            refuse_and_close(stream, &too_long(opts.max_request_bytes));
            return;
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                // The client closed its side: a last request without a newline still
                // gets its reply.
                if !buf.iter().all(u8::is_ascii_whitespace) {
                    let reply = handle_line(&buf, &shared.netdma);
                    let _ = write_reply(&mut stream, &reply);
                }
                return;
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                last_activity = Instant::now();
            }
            Err(e) if matches!(e.kind(), IoErrorKind::WouldBlock | IoErrorKind::TimedOut) => {
                if last_activity.elapsed() >= opts.idle_timeout {
                    tracing::debug!("control connection idle: closed");
                    return;
                }
            }
            Err(e) if e.kind() == IoErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Sends a last reply and closes the connection gracefully: what the client is still
/// sending is read and dropped for up to a second, so its side sees the reply and an
/// orderly end rather than a reset.
fn refuse_and_close(mut stream: UnixStream, reply: &Response) {
    if write_reply(&mut stream, reply).is_err() {
        return;
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let until = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 4096];
    while Instant::now() < until {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), IoErrorKind::WouldBlock | IoErrorKind::TimedOut) => {}
            Err(e) if e.kind() == IoErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn too_long(max: usize) -> Response {
    Response::bad_request(format!(
        "request too long: more than {max} bytes without a newline; closing the connection"
    ))
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

/// A connection to a control socket, for `netdmactl` and tests.
#[derive(Debug)]
pub struct CtlClient {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl CtlClient {
    /// Connects to the server at `path`. Replies are awaited at most 30 s.
    pub fn connect(path: impl AsRef<Path>) -> Result<CtlClient, CtlError> {
        let path = path.as_ref().to_path_buf();
        let conn_err = |source| CtlError::Connect {
            path: path.clone(),
            source,
        };
        let stream = UnixStream::connect(&path).map_err(conn_err)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(conn_err)?;
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .map_err(conn_err)?;
        let writer = stream.try_clone().map_err(conn_err)?;
        Ok(CtlClient {
            path,
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends `req` and waits for its reply.
    pub fn request(&mut self, req: &Request) -> Result<Response, CtlError> {
        let line = serde_json::to_string(req).map_err(|e| CtlError::BadReply {
            path: self.path.clone(),
            message: format!("cannot serialize the request: {e}"),
        })?;
        self.request_line(&line)
    }

    /// Sends one raw line (a newline is added) and waits for its reply.
    pub fn request_line(&mut self, line: &str) -> Result<Response, CtlError> {
        let conn_err = |source| CtlError::Connect {
            path: self.path.clone(),
            source,
        };
        let mut out = line.as_bytes().to_vec();
        out.push(b'\n');
        self.writer.write_all(&out).map_err(conn_err)?;
        self.writer.flush().map_err(conn_err)?;
        self.read_reply()
    }

    /// Reads the next reply line.
    pub fn read_reply(&mut self) -> Result<Response, CtlError> {
        let mut reply = String::new();
        let n = self
            .reader
            .read_line(&mut reply)
            .map_err(|source| CtlError::Connect {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(CtlError::NoReply {
                path: self.path.clone(),
            });
        }
        serde_json::from_str(&reply).map_err(|e| CtlError::BadReply {
            path: self.path.clone(),
            message: format!("{e}: {}", reply.trim_end()),
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn netdma() -> NetDma {
        let mut cfg = NetDmaConfig::default();
        cfg.engine.channels = 1;
        NetDma::from_config(cfg).unwrap()
    }

    fn line(n: &NetDma, text: &str) -> Response {
        handle_line(text.as_bytes(), n)
    }

    fn kind(r: &Response) -> Option<ErrorKind> {
        r.error.as_ref().map(|e| e.kind)
    }

    #[test]
    fn requests_round_trip_through_json() {
        for req in [
            Request::SysctlGet { key: "k".into() },
            Request::SysctlSet {
                key: "k".into(),
                value: "1".into(),
            },
            Request::SysctlAll,
            Request::DmaEnable,
            Request::DmaDisable,
            Request::DevList,
            Request::DevRemove {
                name: "dev0".into(),
                force: true,
            },
            Request::Stats,
        ] {
            let text = serde_json::to_string(&req).unwrap();
            let back: Request = serde_json::from_str(&text).unwrap();
            assert_eq!(back, req);
            let cmd = serde_json::from_str::<Value>(&text).unwrap()["cmd"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(COMMANDS.contains(&cmd.as_str()), "{cmd} not listed");
        }
    }

    #[test]
    fn malformed_and_unknown_requests_are_bad_requests() {
        let n = netdma();
        let before = n.config();
        for (text, needle) in [
            ("{", "malformed JSON"),
            ("[1,2]", "JSON object"),
            ("{\"key\":1}", "missing `cmd`"),
            ("{\"cmd\":7}", "must be a string"),
            ("{\"cmd\":\"reboot\"}", "unknown command `reboot`"),
            (
                "{\"cmd\":\"sysctl_set\",\"key\":\"x\"}",
                "invalid `sysctl_set`",
            ),
            (
                "{\"cmd\":\"sysctl_set\",\"key\":\"net.netdma.enabled\",\"value\":[0]}",
                "must be a string or a number",
            ),
        ] {
            let r = line(&n, text);
            assert!(!r.ok, "{text}");
            assert_eq!(kind(&r), Some(ErrorKind::BadRequest), "{text}");
            let msg = &r.error.as_ref().unwrap().message;
            assert!(msg.contains(needle), "{text}: {msg}");
        }
        let r = handle_line(b"\xff\xfe", &n);
        assert_eq!(kind(&r), Some(ErrorKind::BadRequest));
        assert_eq!(n.config(), before);
        assert!(n.is_enabled());
    }

    #[test]
    fn sysctl_errors_are_netdmas_own_and_change_nothing() {
        let n = netdma();
        let before = n.config();
        for (key, value) in [
            ("net.netdma.chunk_size", "1"),
            ("net.ipv4.tcp_dma_copybreak", "-5"),
            ("net.netdma.nonsense", "1"),
            ("net.netdma.engine.channels", "4"),
        ] {
            let want = n.set(key, value).unwrap_err().to_string();
            let r = execute(
                &Request::SysctlSet {
                    key: key.into(),
                    value: value.into(),
                },
                &n,
            );
            assert_eq!(kind(&r), Some(ErrorKind::Refused));
            assert_eq!(r.error.unwrap().message, want);
            assert!(want.contains(key), "{want}");
        }
        assert_eq!(n.config(), before);
        let r = line(
            &n,
            r#"{"cmd":"sysctl_set","key":"net.ipv4.tcp_dma_copybreak","value":8192}"#,
        );
        assert!(r.ok, "{r:?}");
        assert_eq!(
            r.result.unwrap(),
            serde_json::json!({"key": "net.ipv4.tcp_dma_copybreak", "old": "auto", "value": "8192"})
        );
        assert_eq!(n.get("net.ipv4.tcp_dma_copybreak").unwrap(), "8192");
    }

    #[test]
    fn sysctl_all_lists_every_key() {
        let n = netdma();
        let r = execute(&Request::SysctlAll, &n);
        let all: Vec<SysctlEntry> = serde_json::from_value(r.result.unwrap()).unwrap();
        assert_eq!(all.len(), NetDmaConfig::keys().len());
        for e in &all {
            assert_eq!(n.get(&e.key).unwrap(), e.value);
        }
    }

    #[test]
    fn dev_remove_is_refused_while_offload_holds_the_device() {
        let n = netdma();
        let r = execute(
            &Request::DevRemove {
                name: "swdma".into(),
                force: false,
            },
            &n,
        );
        assert_eq!(kind(&r), Some(ErrorKind::Refused));
        let msg = r.error.unwrap().message;
        assert!(msg.contains("swdma (dev0)"), "{msg}");
        assert!(msg.contains("pinned by 1 client(s)"), "{msg}");
        assert!(msg.contains("dma disable"), "{msg}");
        let list: Vec<DeviceInfo> =
            serde_json::from_value(execute(&Request::DevList, &n).result.unwrap()).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].clients, 1);
        assert!(list[0].netdma_holds);

        let st: DmaState =
            serde_json::from_value(execute(&Request::DmaDisable, &n).result.unwrap()).unwrap();
        assert!(st.changed && !st.enabled && !st.holds_client);
        assert_eq!(st.references, 0);
        let again: DmaState =
            serde_json::from_value(execute(&Request::DmaDisable, &n).result.unwrap()).unwrap();
        assert!(!again.changed);

        let r = execute(
            &Request::DevRemove {
                name: "dev0".into(),
                force: false,
            },
            &n,
        );
        assert!(r.ok, "{r:?}");
        assert!(n.engine().snapshot().devices.is_empty());
        let r = execute(
            &Request::DevRemove {
                name: "dev0".into(),
                force: false,
            },
            &n,
        );
        assert!(r.error.unwrap().message.contains("no device named `dev0`"));

        let st: DmaState =
            serde_json::from_value(execute(&Request::DmaEnable, &n).result.unwrap()).unwrap();
        assert!(st.enabled && st.changed);
        assert_eq!(st.devices, 0);
        assert!(st.note.unwrap().contains("no DMA device"));
    }

    #[test]
    fn forced_removal_goes_through_while_pinned() {
        let n = netdma();
        let r = execute(
            &Request::DevRemove {
                name: "swdma".into(),
                force: true,
            },
            &n,
        );
        let removed: Removed = serde_json::from_value(r.result.unwrap()).unwrap();
        assert!(removed.forced);
        assert_eq!(removed.references_dropped, 1);
        assert!(n.engine().snapshot().devices.is_empty());
        assert!(n.is_enabled());
    }

    #[test]
    fn stats_carries_the_receive_counters() {
        let n = netdma();
        let v = execute(&Request::Stats, &n).result.unwrap();
        assert_eq!(v["recv"]["dma_bytes"], 0);
        assert_eq!(v["recv"]["cpu_bytes"], 0);
        assert_eq!(v["enabled"], true);
        assert!(v["engine"]["devices"].is_array());
    }
}
