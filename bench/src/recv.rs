//! The receive comparison: one TCP connection between two smoltcp stacks over the
//! in-memory link, streamed through and received by each [`RecvMode`] in turn.
//!
//! Each run measures the wall-clock throughput and the receiving side's own CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`, via [`netdma::thread_cpu_ns`]) per MiB. With
//! [`Pump::SameThread`] one thread drives both stacks (so on a 2-core machine the DMA
//! worker has the other core to itself) and the receiving side's CPU is the time spent in
//! the server stack's poll and in the reads: timed with the monotonic clock (reading the
//! thread CPU clock is a system call, far too slow to wrap every poll), then scaled by the
//! thread's share of CPU over the run (CPU time / wall time, < 1 only if preempted). With
//! [`Pump::SenderThread`] the sender runs on its own thread and the receiving thread's
//! whole CPU time counts.
//!
//! The sender enqueues bytes without copying them (`tcp::Socket::send` with a closure
//! that only claims space), so the stream's cost is the protocol processing, smoltcp's own
//! packet copies, and the copy under test. Add a mode by adding a [`RecvMode`] variant.

use dmaengine::cpu;
use netdma::link::MemoryLink;
use netdma::pair::StackPair;
use netdma::pipeline::Pipeline;
use netdma::stack::Stack;
use netdma::{thread_cpu_ns, Copybreak, NetDma, NetDmaConfig};
use serde::Serialize;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the receiver consumes the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum RecvMode {
    /// smoltcp's own `recv_slice` (no netdma at all): the baseline.
    #[serde(rename = "smoltcp")]
    Plain,
    /// Consumes the bytes without copying them (`tcp::Socket::recv` returning the length):
    /// the floor no offload can beat.
    #[serde(rename = "nocopy")]
    NoCopy,
    /// `NetDma::recv` with the copybreak at `Copybreak::NEVER`: every read below the copybreak,
    /// copied by the CPU.
    #[serde(rename = "netdma-cpu")]
    NetDmaCpu,
    /// `NetDma::recv` with the copybreak at 0: every read offloaded (64 KiB descriptors,
    /// up to 8 in flight).
    #[serde(rename = "netdma-dma")]
    NetDmaDma,
    /// As [`RecvMode::NetDmaDma`], with 25% of each copy done by the CPU meanwhile.
    #[serde(rename = "netdma-dma-split")]
    NetDmaDmaSplit,
    /// `NetDma::recv` with `tcp_dma_copybreak = "auto"`.
    #[serde(rename = "netdma-auto")]
    Auto,
    /// `netdma::pipeline::Pipeline`: posted buffers filled by DMA while the stack polls,
    /// copies in flight across polls (NET_DMA's early copy); copybreak 0.
    #[serde(rename = "netdma-pipelined")]
    Pipelined,
    /// The pipelined receive with `tcp_dma_copybreak = "auto"`: each posted read goes to
    /// DMA or the CPU as the adaptive policy decides.
    #[serde(rename = "netdma-pipelined-auto")]
    PipelinedAuto,
}

impl RecvMode {
    /// Every mode, in the order the report runs them.
    pub const ALL: [RecvMode; 8] = [
        RecvMode::Plain,
        RecvMode::NetDmaCpu,
        RecvMode::NetDmaDma,
        RecvMode::NetDmaDmaSplit,
        RecvMode::Pipelined,
        RecvMode::Auto,
        RecvMode::PipelinedAuto,
        RecvMode::NoCopy,
    ];

    /// A short name (JSON keys, tables, bench ids).
    pub fn name(self) -> &'static str {
        match self {
            RecvMode::Plain => "smoltcp",
            RecvMode::NoCopy => "nocopy",
            RecvMode::NetDmaCpu => "netdma-cpu",
            RecvMode::NetDmaDma => "netdma-dma",
            RecvMode::NetDmaDmaSplit => "netdma-dma-split",
            RecvMode::Auto => "netdma-auto",
            RecvMode::Pipelined => "netdma-pipelined",
            RecvMode::PipelinedAuto => "netdma-pipelined-auto",
        }
    }

    /// Whether the mode offloads copies to DMA (a candidate for "the best DMA mode").
    pub fn is_dma(self) -> bool {
        matches!(
            self,
            RecvMode::NetDmaDma | RecvMode::NetDmaDmaSplit | RecvMode::Pipelined
        )
    }

    /// The netdma configuration the mode runs with; `None` for modes without netdma.
    pub fn config(self) -> Option<NetDmaConfig> {
        let base = NetDmaConfig {
            idle_release_ms: 0,
            ..NetDmaConfig::default()
        };
        match self {
            RecvMode::Plain | RecvMode::NoCopy => None,
            RecvMode::NetDmaCpu => Some(NetDmaConfig {
                tcp_dma_copybreak: Copybreak::NEVER,
                ..base
            }),
            RecvMode::NetDmaDma | RecvMode::Pipelined => Some(NetDmaConfig {
                tcp_dma_copybreak: Copybreak::Bytes(0),
                ..base
            }),
            RecvMode::NetDmaDmaSplit => Some(NetDmaConfig {
                tcp_dma_copybreak: Copybreak::Bytes(0),
                cpu_fraction: 0.25,
                ..base
            }),
            RecvMode::Auto | RecvMode::PipelinedAuto => Some(NetDmaConfig {
                tcp_dma_copybreak: Copybreak::Auto,
                ..base
            }),
        }
    }
}

impl fmt::Display for RecvMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Reads the pipelined mode keeps posted: enough for the default `max_inflight` (8) copies
/// of 64 KiB to stay in flight across read boundaries.
pub const PIPELINE_DEPTH: usize = 8;

/// Who drives the sending stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Pump {
    /// The receiving thread polls both stacks.
    SameThread,
    /// A sender thread polls the client stack; the receiving thread only the server's.
    SenderThread,
}

/// One streamed run.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct StreamResult {
    /// Bytes received.
    pub bytes: u64,
    /// Wall-clock nanoseconds from the first poll to the last byte received.
    pub wall_ns: u64,
    /// CPU nanoseconds the receiving side spent (see the module docs).
    pub recv_cpu_ns: u64,
}

impl StreamResult {
    /// Throughput in MiB/s.
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / crate::MIB as f64 / (self.wall_ns.max(1) as f64 / 1e9)
    }

    /// Receiving-side CPU microseconds per MiB.
    pub fn cpu_us_per_mib(&self) -> f64 {
        self.recv_cpu_ns as f64 / 1e3 / (self.bytes.max(1) as f64 / crate::MIB as f64)
    }
}

/// A connection and the netdma instances for the modes, reused across runs so that every
/// mode sees the same connection state (and the adaptive mode keeps what it learned).
pub struct RecvBed {
    mtu: usize,
    /// Always `Some`, except while a pipelined run owns it.
    server: Option<Stack<MemoryLink>>,
    client: Option<Stack<MemoryLink>>,
    sh: SocketHandle,
    ch: SocketHandle,
    netdmas: Vec<(RecvMode, Arc<NetDma>)>,
    buf: Vec<u8>,
    pump: Pump,
}

impl fmt::Debug for RecvBed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvBed")
            .field("mtu", &self.mtu)
            .field("pump", &self.pump)
            .finish_non_exhaustive()
    }
}

/// Socket buffer size (each direction, each side) used unless told otherwise: 1 MiB.
pub const DEFAULT_SOCKET_BYTES: usize = crate::MIB;

impl RecvBed {
    /// Connects two stacks at IP MTU `mtu` with `socket_bytes` of socket buffer and
    /// builds a netdma instance for each mode in `modes` that needs one; reads up to
    /// `max_read` bytes at a time.
    pub fn new(
        mtu: usize,
        socket_bytes: usize,
        max_read: usize,
        pump: Pump,
        modes: &[RecvMode],
    ) -> Result<RecvBed, String> {
        let mut pair = StackPair::new(mtu);
        let (sh, ch) = pair
            .connect(socket_bytes, socket_bytes)
            .map_err(|e| e.to_string())?;
        let StackPair {
            server, mut client, ..
        } = pair;
        // The sender is a pump, not the system under test: without Nagle it never holds
        // back a short segment waiting for the receiver's delayed ACK (a 10 ms stall).
        client.tcp_mut(ch).set_nagle_enabled(false);
        let mut netdmas = Vec::new();
        for &mode in modes {
            if let Some(cfg) = mode.config() {
                if !netdmas.iter().any(|(m, _)| *m == mode) {
                    netdmas.push((
                        mode,
                        Arc::new(NetDma::from_config(cfg).map_err(|e| e.to_string())?),
                    ));
                }
            }
        }
        Ok(RecvBed {
            mtu,
            server: Some(server),
            client: Some(client),
            sh,
            ch,
            netdmas,
            buf: vec![0u8; max_read.max(1)],
            pump,
        })
    }

    /// The link MTU.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// The netdma instance of `mode`, if it has one.
    pub fn netdma(&self, mode: RecvMode) -> Option<&NetDma> {
        self.netdmas
            .iter()
            .find(|(m, _)| *m == mode)
            .map(|(_, n)| &**n)
    }

    /// Streams `total` bytes and receives them with `mode`, `read_size` bytes per read.
    ///
    /// # Panics
    ///
    /// If `read_size` exceeds the bed's `max_read`, or the stream stalls for 10 s.
    pub fn run(&mut self, mode: RecvMode, read_size: usize, total: usize) -> StreamResult {
        assert!(read_size > 0 && read_size <= self.buf.len());
        if matches!(mode, RecvMode::Pipelined | RecvMode::PipelinedAuto) {
            return self.run_pipelined(mode, read_size, total);
        }
        match self.pump {
            Pump::SameThread => self.run_same_thread(mode, read_size, total),
            Pump::SenderThread => self.run_sender_thread(mode, read_size, total),
        }
    }

    /// The pipelined receive: keeps [`PIPELINE_DEPTH`] buffers of `read_size` posted
    /// (each completes when full) and polls; the pump is always [`Pump::SameThread`],
    /// where the overlap happens.
    fn run_pipelined(&mut self, mode: RecvMode, read_size: usize, total: usize) -> StreamResult {
        let netdma = self
            .netdmas
            .iter()
            .find(|(m, _)| *m == mode)
            .map(|(_, n)| n.clone())
            .expect("a netdma instance for the pipelined mode");
        let server = self.server.take().expect("server stack present");
        let mut pipeline = Pipeline::new(server, netdma);
        let client = self.client.as_mut().expect("client stack present");
        let sh = self.sh;
        let mut spare: Vec<Vec<u8>> = (0..PIPELINE_DEPTH).map(|_| vec![0u8; read_size]).collect();
        let mut claimed = 0; // bytes the posted reads will take
        let result = pump_same_thread(client, self.ch, total, mode, |_| {
            while claimed < total {
                let Some(mut buf) = spare.pop() else { break };
                let want = read_size.min(total - claimed);
                buf.truncate(want);
                pipeline
                    .post_recv(sh, buf, want)
                    .expect("a non-empty buffer, under MAX_POSTED");
                claimed += want;
            }
            pipeline.poll();
            let mut got = 0;
            while let Some(mut done) = pipeline.take_completed(sh) {
                got += done.len;
                done.buf.resize(read_size, 0);
                spare.push(done.buf);
            }
            got
        });
        self.server = Some(pipeline.into_driver());
        result
    }

    fn run_same_thread(&mut self, mode: RecvMode, read_size: usize, total: usize) -> StreamResult {
        let netdma = self
            .netdmas
            .iter()
            .find(|(m, _)| *m == mode)
            .map(|(_, n)| &**n);
        let client = self.client.as_mut().expect("client stack present");
        let server = self.server.as_mut().expect("server stack present");
        let (sh, buf) = (self.sh, &mut self.buf[..read_size]);
        pump_same_thread(client, self.ch, total, mode, |remaining| {
            server.poll();
            drain(mode, netdma, server.tcp_mut(sh), buf, remaining)
        })
    }

    fn run_sender_thread(
        &mut self,
        mode: RecvMode,
        read_size: usize,
        total: usize,
    ) -> StreamResult {
        let mut client = self.client.take().expect("client stack present");
        let ch = self.ch;
        let done = Arc::new(AtomicBool::new(false));
        let sender = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut sent = 0;
                while !done.load(Ordering::Relaxed) {
                    if sent < total {
                        sent += fill(client.tcp_mut(ch), total - sent);
                    }
                    client.poll();
                }
                client
            })
        };
        let netdma = self
            .netdmas
            .iter()
            .find(|(m, _)| *m == mode)
            .map(|(_, n)| &**n);
        let (mut received, c0) = (0usize, thread_cpu_ns());
        let start = Instant::now();
        let mut last_progress = start;
        let mut stalled = false;
        while received < total {
            let server = self.server.as_mut().expect("server stack present");
            server.poll();
            let sock = server.tcp_mut(self.sh);
            let got = drain(
                mode,
                netdma,
                sock,
                &mut self.buf[..read_size],
                total - received,
            );
            received += got;
            if got > 0 {
                last_progress = Instant::now();
            } else if last_progress.elapsed() > Duration::from_secs(10) {
                stalled = true;
                break;
            }
        }
        let result = StreamResult {
            bytes: received as u64,
            wall_ns: start.elapsed().as_nanos() as u64,
            recv_cpu_ns: thread_cpu_ns().saturating_sub(c0),
        };
        // Let the sender see its last ACKs, so the next run starts with an idle connection.
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_millis(2) {
            self.server.as_mut().expect("server stack present").poll();
        }
        done.store(true, Ordering::Relaxed);
        self.client = Some(sender.join().expect("sender thread panicked"));
        assert!(
            !stalled,
            "stream stalled at {received}/{total} bytes ({mode})"
        );
        result
    }
}

/// One thread sends `total` bytes on `client` and receives them with `receive` (given the
/// bytes still due, returning the bytes it got); times the receiving side.
fn pump_same_thread(
    client: &mut Stack<MemoryLink>,
    ch: SocketHandle,
    total: usize,
    mode: RecvMode,
    mut receive: impl FnMut(usize) -> usize,
) -> StreamResult {
    let (mut sent, mut received, mut recv_wall) = (0usize, 0usize, 0u64);
    let cpu0 = thread_cpu_ns();
    let start = Instant::now();
    let mut last_progress = start;
    while received < total {
        if sent < total {
            sent += fill(client.tcp_mut(ch), total - sent);
        }
        client.poll();
        let t0 = Instant::now();
        let got = receive(total - received);
        recv_wall += t0.elapsed().as_nanos() as u64;
        received += got;
        if got > 0 {
            last_progress = Instant::now();
        } else {
            assert!(
                last_progress.elapsed() < Duration::from_secs(10),
                "stream stalled at {received}/{total} bytes ({mode})"
            );
        }
    }
    let wall_ns = start.elapsed().as_nanos() as u64;
    // The thread runs flat out, so its CPU time is its wall time less preemption; scale
    // the receiving side's wall time by that share.
    let on_cpu = (thread_cpu_ns().saturating_sub(cpu0) as f64 / wall_ns.max(1) as f64).min(1.0);
    StreamResult {
        bytes: received as u64,
        wall_ns,
        recv_cpu_ns: (recv_wall as f64 * on_cpu) as u64,
    }
}

/// Claims up to `want` bytes of the send buffer without writing them; returns how many.
fn fill(sock: &mut tcp::Socket<'_>, want: usize) -> usize {
    if !sock.can_send() {
        return 0;
    }
    sock.send(|b| {
        let n = b.len().min(want);
        (n, n)
    })
    .unwrap_or(0)
}

/// Reads with `mode` until the socket has nothing more (or `limit` bytes were read).
fn drain(
    mode: RecvMode,
    netdma: Option<&NetDma>,
    sock: &mut tcp::Socket<'_>,
    buf: &mut [u8],
    limit: usize,
) -> usize {
    let mut got = 0;
    while got < limit {
        let want = buf.len().min(limit - got);
        let n = read_once(mode, netdma, sock, &mut buf[..want]);
        if n == 0 {
            break;
        }
        got += n;
    }
    got
}

/// One read of at most `buf.len()` bytes with `mode`; 0 when nothing is waiting.
pub fn read_once(
    mode: RecvMode,
    netdma: Option<&NetDma>,
    sock: &mut tcp::Socket<'_>,
    buf: &mut [u8],
) -> usize {
    match (mode, netdma) {
        (RecvMode::Plain, _) => sock.recv_slice(buf).unwrap_or(0),
        (RecvMode::NoCopy, _) => {
            // Two regions at most (the ring wraps), as recv_slice does.
            let mut got = 0;
            for _ in 0..2 {
                let want = buf.len() - got;
                let n = sock
                    .recv(|region| {
                        let n = region.len().min(want);
                        (n, n)
                    })
                    .unwrap_or(0);
                got += n;
                if n == 0 || got == buf.len() {
                    break;
                }
            }
            got
        }
        (_, Some(n)) => n.recv(sock, buf).unwrap_or(0),
        (_, None) => panic!("mode {mode} needs a netdma instance"),
    }
}

/// The pair of CPUs the process may use, for pinning a harness (best effort).
pub fn pin_receiver() -> Option<usize> {
    let cpus = cpu::process_affinity();
    let first = *cpus.first()?;
    cpu::pin_current_thread(first).ok().map(|_| first)
}
