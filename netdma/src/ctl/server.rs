//! The server: the socket, its accept thread and one thread per connection.

use crate::control::NetDma;
use std::io::{self, ErrorKind as IoErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::dispatch::handle_line;
use super::protocol::*;
use super::CtlError;

/// How long the accepting thread sleeps when no connection is waiting: from the first
/// value, doubling while idle up to the second (it checks for shutdown at this pace too).
const ACCEPT_POLL: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(50));
/// How often a connection's thread wakes from a read to check for shutdown and idleness.
const READ_SLICE: Duration = Duration::from_millis(100);

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

/// A control socket serving one [`NetDma`](crate::NetDma). Dropping it stops the server and removes the
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
