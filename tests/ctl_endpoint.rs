//! The control socket alone (`netdma::ctl`), spoken to over real Unix sockets: its file
//! mode, bad input of every kind, clients that stall or crowd it, and many clients at once.

use netdma::ctl::{CtlClient, CtlError, CtlOptions, CtlServer, DmaState, ErrorKind, Request};
use netdma::{NetDma, NetDmaConfig};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ct-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn sock(&self) -> PathBuf {
        self.0.join("ctl.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn netdma() -> Arc<NetDma> {
    let mut cfg = NetDmaConfig::default();
    cfg.engine.channels = 2;
    Arc::new(NetDma::from_config(cfg).unwrap())
}

/// Waits (bounded) for `cond`; a test fails rather than hangs.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn raw(path: &Path) -> (UnixStream, BufReader<UnixStream>) {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

fn read_reply(r: &mut BufReader<UnixStream>) -> Value {
    let mut line = String::new();
    let n = r.read_line(&mut line).unwrap();
    assert!(n > 0, "connection closed without a reply");
    serde_json::from_str(&line).unwrap()
}

fn error_of(v: &Value) -> (String, String) {
    assert_eq!(v["ok"], false, "{v}");
    (
        v["error"]["kind"].as_str().unwrap().to_owned(),
        v["error"]["message"].as_str().unwrap().to_owned(),
    )
}

/// Reads until the server closes the connection (bounded by the read timeout).
fn assert_closed(r: &mut BufReader<UnixStream>) {
    let mut rest = Vec::new();
    if let Err(e) = r.read_to_end(&mut rest) {
        // A close with our data unread may surface as a reset: still closed.
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    assert!(
        rest.is_empty(),
        "unexpected data: {}",
        String::from_utf8_lossy(&rest)
    );
}

#[test]
fn the_socket_is_owner_only_and_removed_on_drop() {
    let dir = TempDir::new("mode");
    let path = dir.sock();
    let server = CtlServer::bind(&path, netdma()).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Nothing left of the private staging directory.
    let entries: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("ctl.sock")]);
    let mut c = CtlClient::connect(&path).unwrap();
    assert!(c.request(&Request::Stats).unwrap().ok);
    drop(server);
    assert!(!path.exists(), "the socket outlived its server");
    assert!(UnixStream::connect(&path).is_err());
}

#[test]
fn a_stale_socket_is_replaced_but_live_sockets_and_files_are_not() {
    let dir = TempDir::new("stale");
    let path = dir.sock();
    // A socket left behind by a dead server.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = CtlServer::bind(&path, netdma()).unwrap();
    // A second server at the same path is refused; the first keeps serving.
    match CtlServer::bind(&path, netdma()) {
        Err(CtlError::InUse { .. }) => {}
        other => panic!("expected InUse, got {other:?}"),
    }
    assert!(
        CtlClient::connect(&path)
            .unwrap()
            .request(&Request::DevList)
            .unwrap()
            .ok
    );
    drop(server);
    // A regular file is never removed.
    std::fs::write(&path, b"precious").unwrap();
    match CtlServer::bind(&path, netdma()) {
        Err(CtlError::NotASocket { .. }) => {}
        other => panic!("expected NotASocket, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn malformed_json_and_unknown_commands_get_error_replies_and_the_connection_goes_on() {
    let dir = TempDir::new("bad");
    let n = netdma();
    let _server = CtlServer::bind(dir.sock(), n.clone()).unwrap();
    let before = n.config();
    let (mut w, mut r) = raw(&dir.sock());
    for (line, needle) in [
        ("{\"cmd\": \"stats\"", "malformed JSON"),
        ("not json at all", "malformed JSON"),
        ("\"stats\"", "JSON object"),
        ("{\"cmd\":\"format_disk\"}", "unknown command `format_disk`"),
        ("{\"cmd\":\"sysctl_get\"}", "missing field `key`"),
        (
            "{\"cmd\":\"dev_remove\",\"force\":true}",
            "missing field `name`",
        ),
    ] {
        w.write_all(line.as_bytes()).unwrap();
        w.write_all(b"\n").unwrap();
        let (kind, msg) = error_of(&read_reply(&mut r));
        assert_eq!(kind, "bad_request", "{line}");
        assert!(msg.contains(needle), "{line}: {msg}");
    }
    // Invalid UTF-8.
    w.write_all(b"\xc3\x28{\"cmd\":\"stats\"}\n").unwrap();
    assert_eq!(error_of(&read_reply(&mut r)).0, "bad_request");
    // Blank lines are skipped; the same connection still serves good requests.
    w.write_all(b"\n  \n{\"cmd\":\"sysctl_get\",\"key\":\"net.netdma.enabled\"}\n")
        .unwrap();
    let v = read_reply(&mut r);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["result"]["value"], "1");
    // Unknown keys and bad values are refused by name, and change nothing.
    w.write_all(
        b"{\"cmd\":\"sysctl_set\",\"key\":\"net.ipv4.tcp_dma_copybrake\",\"value\":\"1\"}\n",
    )
    .unwrap();
    let (kind, msg) = error_of(&read_reply(&mut r));
    assert_eq!(kind, "refused");
    assert!(msg.contains("net.ipv4.tcp_dma_copybrake"), "{msg}");
    w.write_all(b"{\"cmd\":\"sysctl_set\",\"key\":\"net.netdma.max_inflight\",\"value\":\"0\"}\n")
        .unwrap();
    let (kind, msg) = error_of(&read_reply(&mut r));
    assert_eq!(kind, "refused");
    assert_eq!(
        msg,
        "value `0` for `net.netdma.max_inflight` is out of range: accepted 1..=1024"
    );
    assert_eq!(n.config(), before);
    // A last request without a newline is still answered when the client closes its side.
    w.write_all(b"{\"cmd\":\"dev_list\"}").unwrap();
    w.shutdown(std::net::Shutdown::Write).unwrap();
    let v = read_reply(&mut r);
    assert_eq!(v["result"][0]["name"], "swdma", "{v}");
    assert_closed(&mut r);
}

#[test]
fn an_oversized_line_gets_an_error_and_its_connection_is_closed() {
    let dir = TempDir::new("big");
    let opts = CtlOptions {
        max_request_bytes: 4096,
        ..CtlOptions::default()
    };
    let server = CtlServer::bind_with(dir.sock(), netdma(), opts).unwrap();
    // One long line with a newline, and one that never ends.
    for terminated in [true, false] {
        let (mut w, mut r) = raw(&dir.sock());
        let writer = std::thread::spawn(move || {
            let mut big = vec![b' '; 1 << 20];
            if terminated {
                big.push(b'\n');
            }
            // The server may close before reading it all: a broken pipe is expected.
            let _ = w.write_all(&big);
            w
        });
        let (kind, msg) = error_of(&read_reply(&mut r));
        assert_eq!(kind, "bad_request");
        assert!(
            msg.contains("request too long: more than 4096 bytes"),
            "{msg}"
        );
        assert_closed(&mut r);
        drop(writer.join().unwrap());
    }
    // The server is unharmed.
    let mut c = CtlClient::connect(dir.sock()).unwrap();
    assert!(c.request(&Request::Stats).unwrap().ok);
    wait_for("the closed connections to be released", || {
        server.active_connections() == 1
    });
}

#[test]
fn a_stalled_client_does_not_hold_up_others_and_is_closed_when_idle() {
    let dir = TempDir::new("stall");
    let opts = CtlOptions {
        idle_timeout: Duration::from_secs(2),
        write_timeout: Duration::from_secs(1),
        ..CtlOptions::default()
    };
    let server = CtlServer::bind_with(dir.sock(), netdma(), opts).unwrap();
    // Half a request, then nothing.
    let (mut stalled, mut stalled_r) = raw(&dir.sock());
    stalled.write_all(b"{\"cmd\":\"sta").unwrap();
    // A client that sends requests but never reads its replies (more than the socket
    // buffers hold).
    let mut deaf = UnixStream::connect(dir.sock()).unwrap();
    let requests = b"{\"cmd\":\"sysctl_all\"}\n".repeat(2000);
    deaf.write_all(&requests).unwrap();
    wait_for("both to be served", || server.active_connections() == 2);
    // Meanwhile another client is served at once, many times over.
    let mut c = CtlClient::connect(dir.sock()).unwrap();
    for _ in 0..100 {
        let reply = c.request(&Request::DevList).unwrap();
        assert!(reply.ok);
    }
    drop(c);
    // The stalled connection is closed once idle, without a reply to its fragment; the
    // deaf one once a reply cannot be written in time.
    assert_closed(&mut stalled_r);
    wait_for("every connection to be released", || {
        server.active_connections() == 0
    });
    drop(deaf);
}

#[test]
fn connections_beyond_the_limit_are_turned_away_with_a_reply() {
    let dir = TempDir::new("full");
    let opts = CtlOptions {
        max_connections: 2,
        ..CtlOptions::default()
    };
    let server = CtlServer::bind_with(dir.sock(), netdma(), opts).unwrap();
    let a = UnixStream::connect(dir.sock()).unwrap();
    let b = UnixStream::connect(dir.sock()).unwrap();
    wait_for("two connections", || server.active_connections() == 2);
    let (_w, mut r) = raw(&dir.sock());
    let (kind, msg) = error_of(&read_reply(&mut r));
    assert_eq!(kind, "unavailable");
    assert!(msg.contains("at most 2"), "{msg}");
    assert_closed(&mut r);
    drop((a, b));
    wait_for("the slots to free up", || server.active_connections() == 0);
    let mut c = CtlClient::connect(dir.sock()).unwrap();
    assert!(c.request(&Request::Stats).unwrap().ok);
}

/// Many clients at once toggling offload, changing and reading settings, and reading
/// counters: every reply is well-formed, refusals are exact, and the end state is
/// consistent (references held exactly when enabled).
#[test]
fn many_clients_at_once() {
    let dir = TempDir::new("many");
    let n = netdma();
    let opts = CtlOptions {
        max_connections: 64,
        ..CtlOptions::default()
    };
    let _server = CtlServer::bind_with(dir.sock(), n.clone(), opts).unwrap();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let path = dir.sock();
            std::thread::spawn(move || {
                let mut c = CtlClient::connect(&path).unwrap();
                for i in 0..100usize {
                    let req = match (t + i) % 6 {
                        0 => Request::DmaDisable,
                        1 => Request::DmaEnable,
                        2 => Request::SysctlSet {
                            key: "net.ipv4.tcp_dma_copybreak".into(),
                            value: (4096 * (1 + t)).to_string(),
                        },
                        3 => Request::SysctlSet {
                            key: "net.netdma.chunk_size".into(),
                            value: "63".into(),
                        },
                        4 => Request::Stats,
                        _ => Request::DevList,
                    };
                    let reply = c.request(&req).unwrap();
                    match req {
                        Request::SysctlSet { ref key, .. } if key == "net.netdma.chunk_size" => {
                            let e = reply.error.expect("63 is below the minimum");
                            assert_eq!(e.kind, ErrorKind::Refused);
                            assert!(e.message.contains("net.netdma.chunk_size"));
                        }
                        Request::DmaEnable | Request::DmaDisable => {
                            let s: DmaState =
                                serde_json::from_value(reply.result.unwrap()).unwrap();
                            assert_eq!(s.devices, 1);
                        }
                        _ => assert!(reply.ok, "{req:?}: {reply:?}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        n.config().chunk_size,
        65536,
        "refused values changed nothing"
    );
    let cb = n.get("net.ipv4.tcp_dma_copybreak").unwrap();
    assert!(
        (1..=16).any(|k| cb == (4096 * k).to_string()),
        "copybreak {cb} is one of the values set"
    );
    let refs = n.engine().total_references();
    if n.is_enabled() {
        assert!(n.holds_client());
        assert_eq!(refs, 2, "one client over two channels");
    } else {
        assert!(!n.holds_client());
        assert_eq!(refs, 0);
    }
}

/// Operators changing different settings at the same moment never undo each other's
/// changes: each thread owns one key and sets it over and over; at the end every key
/// holds its owner's last value.
#[test]
fn concurrent_changes_to_different_keys_are_all_kept() {
    let dir = TempDir::new("keys");
    let n = netdma();
    let _server = CtlServer::bind(dir.sock(), n.clone()).unwrap();
    // Each key with the values its thread writes, in order.
    let keys: Vec<(&str, Vec<String>)> = vec![
        (
            "net.ipv4.tcp_dma_copybreak",
            (1..=300).map(|i| (i * 512).to_string()).collect(),
        ),
        (
            "net.ipv4.tcp_low_latency",
            (1..=300).map(|i| (i % 2).to_string()).collect(),
        ),
        (
            "net.netdma.chunk_size",
            (1..=300).map(|i| (i * 1024).to_string()).collect(),
        ),
        (
            "net.netdma.max_inflight",
            (1..=300).map(|i| i.to_string()).collect(),
        ),
        (
            "net.netdma.idle_release_ms",
            (1..=300).map(|i| (i * 10).to_string()).collect(),
        ),
        (
            "net.netdma.wait_timeout_ms",
            (1..=300).map(|i| (i * 100).to_string()).collect(),
        ),
        (
            "net.netdma.cpu_fraction",
            (1..=300)
                .map(|i| ((i % 10) as f64 / 10.0).to_string())
                .collect(),
        ),
    ];
    let threads: Vec<_> = keys
        .iter()
        .cloned()
        .map(|(key, values)| {
            let path = dir.sock();
            std::thread::spawn(move || {
                let mut c = CtlClient::connect(&path).unwrap();
                for v in values {
                    let r = c
                        .request(&Request::SysctlSet {
                            key: key.to_owned(),
                            value: v.clone(),
                        })
                        .unwrap();
                    assert!(r.ok, "{key}: {r:?}");
                    // Nobody else writes this key: it must read back as just set.
                    let r = c
                        .request(&Request::SysctlGet {
                            key: key.to_owned(),
                        })
                        .unwrap();
                    assert_eq!(r.result.unwrap()["value"], v.as_str(), "{key}: lost update");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for (key, values) in &keys {
        assert_eq!(&n.get(key).unwrap(), values.last().unwrap(), "{key}");
    }
}
