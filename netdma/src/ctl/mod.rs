//! The control socket: a running application's [`NetDma`](crate::NetDma) operated from outside the
//! process (what `netdmactl` talks to).
//!
//! [`control`](crate::control) holds the in-process controls ([`NetDma::get`](crate::NetDma::get),
//! [`NetDma::set`](crate::NetDma::set), [`NetDma::enable`](crate::NetDma::enable), [`NetDma::disable`](crate::NetDma::disable), the counters) and the
//! engine holds the device operations ([`Engine::unregister_device`](dmaengine::Engine::unregister_device),
//! [`Engine::remove_device`](dmaengine::Engine::remove_device)). This module puts all of them behind a Unix domain socket, so
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
//!   key, a bad value (the message is [`NetDma::set`](crate::NetDma::set)'s, naming the key and the accepted
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

mod client;
mod dispatch;
mod protocol;
mod server;

pub use client::CtlClient;
pub use dispatch::execute;
pub use protocol::*;
pub use server::{CtlOptions, CtlServer};

use std::io;
use std::path::PathBuf;

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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::dispatch::handle_line;
    use super::*;
    use crate::{NetDma, NetDmaConfig};
    use serde_json::Value;

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
