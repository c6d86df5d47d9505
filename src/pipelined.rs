//! The echo over the pipelined receive ([`Pipeline`]): per connection, reads posted ahead
//! and filled by DMA while the stack polls, their data echoed in order as they complete,
//! and their buffers posted again. [`PipelinedConn`] is one connection; the embedded run
//! uses it over the in-memory link ([`serve_embedded`]) and the echo server over a real
//! link ([`PipelinedServer`]).

use crate::echo::{EmbeddedOptions, FinAfter};
use netdma::link::Link;
use netdma::pipeline::{Completed, Driver, Pipeline};
use netdma::stack::Stack;
use netdma::{NetDma, RecvError};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How many reads a connection keeps posted.
pub const DEPTH: usize = 4;

/// One connection echoed through the pipelined receive: completed reads waiting to be
/// echoed, and free buffers to post.
#[derive(Debug)]
pub struct PipelinedConn {
    handle: SocketHandle,
    fin_after: FinAfter,
    /// Completed reads not yet fully echoed, and how far the oldest is.
    pending: VecDeque<(Completed, usize)>,
    free: Vec<Vec<u8>>,
    /// Bytes handed back to the socket for sending.
    pub echoed: u64,
    /// The peer closed its side and every byte was read.
    pub finished: bool,
    /// We closed our side after echoing everything (or gave the connection up).
    pub closed: bool,
}

impl PipelinedConn {
    /// A connection on `handle` with [`DEPTH`] buffers of `read_size` bytes.
    pub fn new(handle: SocketHandle, read_size: usize, fin_after: FinAfter) -> PipelinedConn {
        PipelinedConn {
            handle,
            fin_after,
            pending: VecDeque::new(),
            free: (0..DEPTH).map(|_| vec![0u8; read_size.max(1)]).collect(),
            echoed: 0,
            finished: false,
            closed: false,
        }
    }

    /// The connection's socket.
    pub fn handle(&self) -> SocketHandle {
        self.handle
    }

    /// Moves what can be moved now: takes completed reads, echoes their data in order as
    /// far as the transmit buffer takes it, posts the free buffers again unless the peer
    /// is done, and closes our side once everything is echoed (as `fin_after` says).
    /// Returns whether anything moved; an error ends the connection (`closed`).
    pub fn step<S: Driver>(&mut self, pipeline: &mut Pipeline<S>) -> Result<bool, String> {
        let mut moved = false;
        while let Some(done) = pipeline.take_completed(self.handle) {
            match done.error {
                None => {}
                Some(RecvError::Finished) => self.finished = true,
                Some(e) => {
                    self.closed = true;
                    return Err(format!("pipelined read: {e}"));
                }
            }
            moved = true;
            self.pending.push_back((done, 0));
        }
        while let Some((done, at)) = self.pending.front_mut() {
            if *at < done.len {
                let n = pipeline
                    .send(self.handle, &done.buf[*at..done.len])
                    .map_err(|e| {
                        self.closed = true;
                        format!("echo send: {e}")
                    })?;
                *at += n;
                self.echoed += n as u64;
                moved |= n > 0;
                if *at < done.len {
                    break;
                }
            }
            let (done, _) = self.pending.pop_front().expect("front exists");
            self.free.push(done.buf);
        }
        while !self.finished {
            let Some(buf) = self.free.pop() else { break };
            if let Err(e) = pipeline.post_recv(self.handle, buf, 1) {
                self.closed = true;
                return Err(format!("post: {e}"));
            }
        }
        // Only with no read posted may the socket be touched (`with_socket`).
        if self.finished && self.pending.is_empty() && pipeline.posted(self.handle) == 0 {
            let fin_after = self.fin_after;
            let closed = pipeline.with_socket(self.handle, |sock| {
                let ready = fin_after.ready(sock);
                if ready {
                    sock.close();
                }
                ready
            });
            self.closed = closed == Some(true);
            moved |= self.closed;
        }
        Ok(moved)
    }

    /// Ends the connection's reads (cancelling their copies, see [`Pipeline::cancel`])
    /// and takes their buffers back: the state is that of a new connection.
    pub fn reset<S: Driver>(&mut self, pipeline: &mut Pipeline<S>) {
        while let Some(done) = pipeline.take_completed(self.handle) {
            self.free.push(done.buf);
        }
        self.free
            .extend(pipeline.cancel(self.handle).into_iter().map(|c| c.buf));
        self.free.extend(self.pending.drain(..).map(|(c, _)| c.buf));
        self.echoed = 0;
        self.finished = false;
        self.closed = false;
    }

    /// Where the connection stands, to explain a stall.
    pub fn describe<S: Driver>(&self, pipeline: &Pipeline<S>) -> String {
        format!(
            "{} echoed, {} reads posted, {} waiting to be echoed",
            self.echoed,
            pipeline.posted(self.handle),
            self.pending.len()
        )
    }
}

/// The embedded run's server over the pipelined receive, on the server sockets of the
/// connected pairs in `handles`. Returns the errors and, for a stall, each unfinished
/// connection's state.
pub fn serve_embedded<L: Link>(
    stack: Stack<L>,
    netdma: Arc<NetDma>,
    handles: &[(SocketHandle, SocketHandle)],
    opts: &EmbeddedOptions,
    stop: &AtomicBool,
) -> (Vec<String>, Vec<String>) {
    let mut pipeline = Pipeline::new(stack, netdma);
    let mut conns: Vec<PipelinedConn> = handles
        .iter()
        .map(|(h, _)| PipelinedConn::new(*h, opts.read_size, FinAfter::Acknowledged))
        .collect();
    let mut errors = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let mut busy = pipeline.poll();
        for (i, c) in conns.iter_mut().enumerate() {
            if c.closed {
                continue;
            }
            match c.step(&mut pipeline) {
                Ok(moved) => busy |= moved,
                Err(e) => errors.push(format!("server connection {i}: {e}")),
            }
        }
        if !busy {
            if let Err(e) = pipeline.poll_wait(Some(Duration::from_millis(1))) {
                errors.push(format!("server link: {e}"));
                stop.store(true, Ordering::Release);
                break;
            }
        }
    }
    let states = conns
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.closed)
        .map(|(i, c)| {
            format!(
                "server connection {i} (pipelined): {}",
                c.describe(&pipeline)
            )
        })
        .collect();
    (errors, states)
}

/// An echo server over the pipelined receive on a real link: a fixed set of sockets
/// listening on one port, each serving one client at a time and listening again once
/// its connection is over (the pipeline owns the sockets, so the set does not grow as
/// [`ListenerPool`](crate::listeners::ListenerPool)'s does).
pub struct PipelinedServer<L: Link> {
    pipeline: Pipeline<Stack<L>>,
    port: u16,
    /// Each socket's connection, and whether a client is connected.
    pub conns: Vec<(PipelinedConn, bool)>,
    /// Clients served so far.
    pub served: u64,
    /// Bytes echoed on connections that are over.
    pub echoed_done: u64,
}

impl<L: Link> PipelinedServer<L> {
    /// `listeners` sockets of `socket_buffer` bytes each way listening on `port`, with
    /// reads of `read_size`.
    pub fn new(
        stack: Stack<L>,
        netdma: Arc<NetDma>,
        port: u16,
        listeners: usize,
        socket_buffer: usize,
        read_size: usize,
    ) -> Result<PipelinedServer<L>, String> {
        let mut pipeline = Pipeline::new(stack, netdma);
        let mut conns = Vec::with_capacity(listeners);
        for _ in 0..listeners.max(1) {
            let h = pipeline.add_tcp_socket(socket_buffer, socket_buffer);
            listen(&mut pipeline, h, port)?;
            conns.push((PipelinedConn::new(h, read_size, FinAfter::Queued), false));
        }
        Ok(PipelinedServer {
            pipeline,
            port,
            conns,
            served: 0,
            echoed_done: 0,
        })
    }

    /// One round: polls the pipeline, moves every connection, and re-arms the sockets
    /// whose connection is over. Returns whether anything moved (with the bytes echoed
    /// in this round) and the errors of connections that were given up.
    pub fn step(&mut self, errors: &mut Vec<String>) -> bool {
        let mut busy = self.pipeline.poll();
        for (i, (conn, active)) in self.conns.iter_mut().enumerate() {
            match self.pipeline.state(conn.handle()) {
                tcp::State::Listen | tcp::State::SynReceived => {}
                tcp::State::Closed | tcp::State::TimeWait => {
                    if *active {
                        self.echoed_done += conn.echoed;
                        *active = false;
                    }
                    conn.reset(&mut self.pipeline);
                    if let Err(e) = listen(&mut self.pipeline, conn.handle(), self.port) {
                        errors.push(format!("slot {i}: {e}"));
                    }
                    busy = true;
                }
                _ => {
                    if !*active {
                        *active = true;
                        self.served += 1;
                    }
                    if conn.closed {
                        continue;
                    }
                    match conn.step(&mut self.pipeline) {
                        Ok(moved) => busy |= moved,
                        Err(e) => {
                            errors.push(format!("connection on slot {i}: {e}"));
                            self.pipeline.abort(conn.handle());
                        }
                    }
                }
            }
        }
        busy
    }

    /// Bytes echoed so far, connections over and live.
    pub fn echoed(&self) -> u64 {
        self.echoed_done
            + self
                .conns
                .iter()
                .filter(|(_, active)| *active)
                .map(|(c, _)| c.echoed)
                .sum::<u64>()
    }

    /// Sleeps until there may be work, at most `max` ([`Pipeline::poll_wait`]).
    pub fn poll_wait(&mut self, max: Duration) -> std::io::Result<()> {
        self.pipeline.poll_wait(Some(max))
    }

    /// The pipeline (its stack and link, read-only).
    pub fn pipeline(&self) -> &Pipeline<Stack<L>> {
        &self.pipeline
    }

    /// Where each connection that is not over stands, to explain a stall.
    pub fn unfinished(&self) -> Vec<String> {
        self.conns
            .iter()
            .enumerate()
            .filter(|(_, (c, active))| *active && !c.closed)
            .map(|(i, (c, _))| format!("slot {i}: {}", c.describe(&self.pipeline)))
            .collect()
    }
}

/// Aborts whatever is left on the socket and listens on `port` (no read is posted on it).
fn listen<S: Driver>(
    pipeline: &mut Pipeline<S>,
    handle: SocketHandle,
    port: u16,
) -> Result<(), String> {
    match pipeline.with_socket(handle, |sock| {
        sock.abort();
        sock.listen(port)
    }) {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(format!("listen on port {port}: {e}")),
        None => Err("listen: a read is still posted".to_owned()),
    }
}
