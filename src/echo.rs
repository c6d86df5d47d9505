//! The echo itself: the server side of one connection ([`EchoConn`], reads with
//! [`NetDma::recv`], echoes with `send_slice`), shared by the embedded run and the real
//! links, and the embedded run ([`run_embedded`]): a smoltcp echo server and a smoltcp
//! client in one process over the in-memory link, every echoed byte verified.

use crate::pattern;
use indicatif::ProgressBar;
use netdma::pair::StackPair;
use netdma::{NetDma, RecvError};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reads per [`EchoConn::step`] at most, so one busy connection cannot starve the others.
const READS_PER_STEP: usize = 16;

/// When the server closes its side, once the peer has closed and every byte is echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinAfter {
    /// As soon as the last echoed byte is queued: the FIN rides on the last data
    /// segment, as a kernel-socket server's `close()` sends it. For kernel peers, which
    /// would otherwise hold the stream's end for their delayed ACK (up to 40 ms) before
    /// the FIN could go.
    Queued,
    /// Once every echoed byte is acknowledged, so the FIN travels alone: for smoltcp 0.14
    /// peers, whose receiver acts on the FIN of a segment it trimmed to its window and
    /// ends the stream without the trimmed bytes (a bare FIN cannot be trimmed).
    Acknowledged,
}

impl FinAfter {
    /// Whether the FIN may go now on `sock`, whose echo is all queued.
    pub fn ready(self, sock: &tcp::Socket<'_>) -> bool {
        match self {
            FinAfter::Queued => true,
            FinAfter::Acknowledged => sock.send_queue() == 0,
        }
    }
}

/// The server side of one echoed connection: data read by netdma waits in `buf` until the
/// socket's transmit buffer takes it, and only then is the next read made (so every read
/// asks for the full read size, as an application's `read()` would).
#[derive(Debug)]
pub struct EchoConn {
    fin_after: FinAfter,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes handed back to the socket for sending.
    pub echoed: u64,
    /// The peer closed its side and every byte was read.
    pub finished: bool,
    /// We closed our side after echoing everything.
    pub closed: bool,
}

impl EchoConn {
    /// A connection state with reads of up to `read_size` bytes, closing as `fin_after`
    /// says.
    pub fn new(read_size: usize, fin_after: FinAfter) -> EchoConn {
        EchoConn {
            fin_after,
            buf: vec![0; read_size.max(1)],
            start: 0,
            end: 0,
            echoed: 0,
            finished: false,
            closed: false,
        }
    }

    /// Forgets the previous connection (the socket was re-armed).
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
        self.echoed = 0;
        self.finished = false;
        self.closed = false;
    }

    /// Moves what can be moved now: flushes pending echo data, reads more with
    /// `netdma.recv`, and closes our side once the peer's data is all echoed. Returns the
    /// bytes read plus the bytes queued for sending (0: nothing to do right now).
    pub fn step(&mut self, netdma: &NetDma, sock: &mut tcp::Socket<'_>) -> Result<usize, String> {
        let mut moved = 0;
        for _ in 0..READS_PER_STEP {
            if self.start < self.end {
                if !sock.can_send() {
                    break;
                }
                let n = sock
                    .send_slice(&self.buf[self.start..self.end])
                    .map_err(|e| format!("echo send: {e}"))?;
                self.start += n;
                self.echoed += n as u64;
                moved += n;
                if self.start < self.end {
                    break;
                }
            }
            if self.finished {
                break;
            }
            match netdma.recv(sock, &mut self.buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.start = 0;
                    self.end = n;
                    moved += n;
                }
                Err(RecvError::Finished) => {
                    self.finished = true;
                    break;
                }
                Err(e) => return Err(format!("netdma recv: {e}")),
            }
        }
        if self.finished && self.start == self.end && !self.closed && self.fin_after.ready(sock) {
            sock.close();
            self.closed = true;
        }
        Ok(moved)
    }
}

impl EchoConn {
    /// Like [`step`](Self::step) for a sink: reads with `netdma.recv` and discards the
    /// data (counted in `echoed`), closes once the peer has closed. Returns the bytes read.
    pub fn sink_step(
        &mut self,
        netdma: &NetDma,
        sock: &mut tcp::Socket<'_>,
    ) -> Result<usize, String> {
        let mut moved = 0;
        for _ in 0..READS_PER_STEP {
            match netdma.recv(sock, &mut self.buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.echoed += n as u64;
                    moved += n;
                }
                Err(RecvError::Finished) => {
                    self.finished = true;
                    break;
                }
                Err(e) => return Err(format!("netdma recv: {e}")),
            }
        }
        if self.finished && !self.closed {
            sock.close();
            self.closed = true;
        }
        Ok(moved)
    }
}

/// What the embedded run does.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// IP MTU of the in-memory link (68..=65535).
    pub mtu: usize,
    /// Connections, all echoed at once.
    pub connections: usize,
    /// Bytes sent (and echoed) per connection; `u64::MAX`: until `stop_sending`.
    pub bytes_per_connection: u64,
    /// The server's read size.
    pub read_size: usize,
    /// Receive and transmit buffer of every socket.
    pub socket_buffer: usize,
    /// Receive buffers this many times `socket_buffer` (default 1). Larger receive than
    /// transmit buffers keep the two receive windows from closing at once, which long
    /// streams on a loaded machine otherwise can: smoltcp 0.14 then stalls, since each
    /// side's window updates arrive beyond the other's zero window and are dropped.
    pub rx_buffer_factor: usize,
    /// Seed of the data.
    pub seed: u64,
    /// Give up when no byte moves for this long.
    pub stall_timeout: Duration,
    /// When this turns true, every client stops sending, closes, and the run ends once
    /// what was sent has come back (for runs controlled from outside, e.g. `--control`).
    pub stop_sending: Option<Arc<AtomicBool>>,
    /// The server reads through the pipelined receive (`Pipeline`: reads posted ahead,
    /// copies in flight while it polls) instead of `NetDma::recv`.
    pub pipelined: bool,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            mtu: 65535,
            connections: 4,
            bytes_per_connection: 16 << 20,
            read_size: 65536,
            socket_buffer: 1 << 20,
            seed: 0x6e65_7464_6d61,
            stall_timeout: Duration::from_secs(30),
            stop_sending: None,
            rx_buffer_factor: 1,
            pipelined: false,
        }
    }
}

/// What the embedded run found.
#[derive(Clone, Debug)]
pub struct EmbeddedOutcome {
    /// Every connection got all its bytes back, each equal to what it sent.
    pub integrity_ok: bool,
    /// Bytes received back by the clients and verified.
    pub bytes_echoed: u64,
    /// Time from the first byte sent to the last byte verified.
    pub elapsed: Duration,
    /// What went wrong (mismatches, stalls, socket errors).
    pub errors: Vec<String>,
}

/// The client side of one connection: sends the seeded stream, verifies the echo.
struct ClientConn {
    handle: SocketHandle,
    seed: u64,
    /// Bytes this connection sends: the configured total, cut short by `stop_sending`.
    target: u64,
    sent: u64,
    verified: u64,
    fin_sent: bool,
    failed: bool,
}

impl ClientConn {
    fn done(&self) -> bool {
        self.failed || (self.fin_sent && self.verified == self.target)
    }
}

/// Runs the embedded echo with offload `netdma` (the server's receive path). `progress`,
/// if given, advances by every verified byte.
pub fn run_embedded(
    netdma: &Arc<NetDma>,
    opts: &EmbeddedOptions,
    progress: Option<&ProgressBar>,
) -> Result<EmbeddedOutcome, String> {
    if !(68..=65535).contains(&opts.mtu) {
        return Err(format!("MTU {} outside 68..=65535", opts.mtu));
    }
    if opts.connections == 0 {
        return Err("at least one connection is needed".to_owned());
    }
    let mut pair = StackPair::new(opts.mtu);
    let mut handles = Vec::with_capacity(opts.connections);
    for i in 0..opts.connections {
        let (s, c) = pair
            .connect(
                opts.socket_buffer
                    .saturating_mul(opts.rx_buffer_factor.max(1)),
                opts.socket_buffer,
            )
            .map_err(|e| format!("connection {i}: {e}"))?;
        handles.push((s, c));
    }
    let StackPair {
        server: mut server_stack,
        client: mut client_stack,
        ..
    } = pair;
    let total = opts.bytes_per_connection;
    let stop = AtomicBool::new(false);
    let start = Instant::now();

    let (server_errors, client_result) = std::thread::scope(|scope| {
        let stop = &stop;
        let handles = &handles;
        let server = scope.spawn(move || {
            if opts.pipelined {
                return crate::pipelined::serve_embedded(
                    server_stack,
                    netdma.clone(),
                    handles,
                    opts,
                    stop,
                );
            }
            let server_stack = &mut server_stack;
            let mut conns: Vec<(SocketHandle, EchoConn)> = handles
                .iter()
                .map(|(s, _)| (*s, EchoConn::new(opts.read_size, FinAfter::Acknowledged)))
                .collect();
            let mut errors = Vec::new();
            while !stop.load(Ordering::Acquire) {
                let mut busy = server_stack.poll();
                for (i, (h, conn)) in conns.iter_mut().enumerate() {
                    if conn.closed {
                        continue;
                    }
                    match conn.step(netdma, server_stack.tcp_mut(*h)) {
                        Ok(n) => busy |= n > 0,
                        Err(e) => {
                            errors.push(format!("server connection {i}: {e}"));
                            conn.closed = true;
                        }
                    }
                }
                netdma.release_if_idle(Instant::now());
                if !busy {
                    if let Err(e) = server_stack.poll_wait(Some(Duration::from_millis(1))) {
                        errors.push(format!("server link: {e}"));
                        stop.store(true, Ordering::Release);
                        break;
                    }
                }
            }
            // Where each unfinished connection stands, to explain a stall.
            let states: Vec<String> = conns
                .iter()
                .enumerate()
                .filter(|(_, (_, c))| !c.closed)
                .map(|(i, (h, c))| {
                    let sock = server_stack.tcp_mut(*h);
                    format!(
                        "server connection {i}: {} echoed, socket {}, {} B unread, {} B unsent",
                        c.echoed,
                        sock.state(),
                        sock.recv_queue(),
                        sock.send_queue()
                    )
                })
                .collect();
            (errors, states)
        });

        let mut conns: Vec<ClientConn> = handles
            .iter()
            .enumerate()
            .map(|(i, (_, c))| ClientConn {
                handle: *c,
                seed: pattern::connection_seed(opts.seed, i),
                target: total,
                sent: 0,
                verified: 0,
                fin_sent: false,
                failed: false,
            })
            .collect();
        let mut errors = Vec::new();
        let mut scratch = Vec::new();
        let mut last_progress = Instant::now();
        while !conns.iter().all(ClientConn::done) {
            let mut busy = client_stack.poll();
            let cut = opts
                .stop_sending
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Acquire));
            for (i, c) in conns.iter_mut().enumerate() {
                if c.done() {
                    continue;
                }
                if cut {
                    c.target = c.sent;
                }
                let sock = client_stack.tcp_mut(c.handle);
                if c.sent < c.target && sock.can_send() {
                    let (seed, sent, target) = (c.seed, c.sent, c.target);
                    let r = sock.send(|buf| {
                        let n = (buf.len() as u64).min(target - sent) as usize;
                        pattern::fill(seed, sent, &mut buf[..n]);
                        (n, n)
                    });
                    match r {
                        Ok(n) => {
                            c.sent += n as u64;
                            busy |= n > 0;
                        }
                        Err(e) => {
                            errors.push(format!("client connection {i}: send: {e}"));
                            c.failed = true;
                            continue;
                        }
                    }
                }
                // FIN_ALONE: close only once every byte sent is acknowledged, so the FIN
                // travels on a segment without data. smoltcp 0.14's receiver trims a
                // segment to its window but still acts on the segment's FIN, which ends
                // the stream without the trimmed bytes; a bare FIN cannot be trimmed.
                if c.sent == c.target && !c.fin_sent && sock.send_queue() == 0 {
                    sock.close();
                    c.fin_sent = true;
                }
                while sock.can_recv() {
                    let (seed, at) = (c.seed, c.verified);
                    let r = sock.recv(|buf| {
                        let bad = pattern::verify(seed, at, buf, &mut scratch);
                        (buf.len(), (buf.len(), bad))
                    });
                    match r {
                        Ok((0, _)) => break,
                        Ok((n, bad)) => {
                            busy = true;
                            if let Some(off) = bad {
                                errors.push(format!(
                                    "connection {i}: echoed data differs at byte {off}"
                                ));
                                c.failed = true;
                                break;
                            }
                            c.verified += n as u64;
                            if let Some(pb) = progress {
                                pb.inc(n as u64);
                            }
                            if c.verified > c.sent {
                                errors.push(format!(
                                    "connection {i}: {} bytes echoed, more than the {} sent",
                                    c.verified, c.sent
                                ));
                                c.failed = true;
                                break;
                            }
                        }
                        Err(e) => {
                            errors.push(format!("client connection {i}: recv: {e}"));
                            c.failed = true;
                            break;
                        }
                    }
                }
            }
            if busy {
                last_progress = Instant::now();
            } else {
                if stop.load(Ordering::Acquire) {
                    errors.push("the server stopped before every byte was echoed".to_owned());
                    break;
                }
                if last_progress.elapsed() > opts.stall_timeout {
                    let done: u64 = conns.iter().map(|c| c.verified).sum();
                    let sent: u64 = conns.iter().map(|c| c.sent).sum();
                    let stuck: Vec<String> = conns
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| !c.done())
                        .map(|(i, c)| {
                            let sock = client_stack.tcp_mut(c.handle);
                            format!(
                                "connection {i}: {} sent, {} echoed, client socket {}, \
                                 {} B unsent/unacked, {} B unread",
                                c.sent,
                                c.verified,
                                sock.state(),
                                sock.send_queue(),
                                sock.recv_queue()
                            )
                        })
                        .collect();
                    errors.push(format!(
                        "stalled: no progress for {:?} with {done} of {sent} bytes sent echoed ({})",
                        opts.stall_timeout,
                        stuck.join("; ")
                    ));
                    break;
                }
                if let Err(e) = client_stack.poll_wait(Some(Duration::from_millis(1))) {
                    errors.push(format!("client link: {e}"));
                    break;
                }
            }
        }
        let elapsed = start.elapsed();
        stop.store(true, Ordering::Release);
        let all_ok = conns
            .iter()
            .all(|c| !c.failed && c.fin_sent && c.verified == c.target);
        let echoed: u64 = conns.iter().map(|c| c.verified).sum();
        let (mut server_errors, states) = server
            .join()
            .unwrap_or_else(|_| (vec!["the server thread panicked".to_owned()], Vec::new()));
        if !errors.is_empty() {
            server_errors.extend(states);
        }
        (server_errors, (all_ok, echoed, elapsed, errors))
    });
    let (all_ok, bytes_echoed, elapsed, mut errors) = client_result;
    errors.extend(server_errors);
    Ok(EmbeddedOutcome {
        integrity_ok: all_ok && errors.is_empty(),
        bytes_echoed,
        elapsed,
        errors,
    })
}
