//! The echo server's sockets on a real link (kernel peers: the FIN goes with the last
//! echoed bytes, [`FinAfter::Queued`]): a pool that keeps a few listening sockets
//! ready and grows as clients take them, up to a maximum of connections, so that a burst
//! of clients is accepted rather than refused.
//!
//! smoltcp accepts a connection on a socket that is listening on the port; when none is,
//! it answers a SYN with a reset (the client sees "connection refused"). The pool is
//! topped up *between received frames* ([`ListenerPool::replenish`], called through
//! `Stack::poll_each`), so every SYN of a burst finds a listener, up to
//! `max_connections` sockets. A finished connection's socket is re-armed while fewer than
//! `spare` sockets listen, and removed (its memory freed) otherwise.
//!
//! # Memory
//!
//! Each socket owns a receive and a transmit ring of `socket_buffer` bytes, and each
//! connection a read buffer of `read_size` bytes: [`ListenerPool::per_connection_bytes`].
//! The pool never holds more than `max_connections` sockets, so the server's buffer
//! memory is bounded by `max_connections * per_connection_bytes` (reported as
//! `memory.bound_bytes`); the pages are touched only as data flows.

use crate::echo::{EchoConn, FinAfter};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use std::mem::size_of;

/// One socket of the pool and the echo state of its connection.
pub struct Slot {
    /// The socket.
    pub handle: SocketHandle,
    /// The connection's echo state.
    pub conn: EchoConn,
    /// A client is connected (counted once in `served`).
    pub active: bool,
    /// Listening, as far as the pool knows.
    listening: bool,
}

/// The pool of listening and connected sockets on one port.
pub struct ListenerPool {
    port: u16,
    socket_buffer: usize,
    read_size: usize,
    spare: usize,
    max_connections: usize,
    /// Every socket of the pool.
    pub slots: Vec<Slot>,
    /// Indexes of `slots` believed to be listening.
    listening: Vec<usize>,
    /// Most sockets held at once.
    pub peak_sockets: usize,
    /// Most connections (sockets not listening) at once.
    pub peak_connections: usize,
    /// A listen call that failed (port 0 is refused by smoltcp, for one).
    pub error: Option<String>,
}

impl ListenerPool {
    /// An empty pool; [`replenish`](Self::replenish) opens the first `spare` listeners.
    pub fn new(
        port: u16,
        spare: usize,
        max_connections: usize,
        socket_buffer: usize,
        read_size: usize,
    ) -> ListenerPool {
        ListenerPool {
            port,
            socket_buffer,
            read_size,
            spare: spare.clamp(1, max_connections.max(1)),
            max_connections: max_connections.max(1),
            slots: Vec::new(),
            listening: Vec::new(),
            peak_sockets: 0,
            peak_connections: 0,
            error: None,
        }
    }

    /// Buffer bytes one connection holds: its socket's two rings, its read buffer and
    /// the socket itself.
    pub fn per_connection_bytes(&self) -> usize {
        2 * self.socket_buffer
            + self.read_size
            + size_of::<tcp::Socket<'static>>()
            + size_of::<Slot>()
    }

    /// The most connections served at once.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Tops the listeners up to `spare`, adding sockets while the pool holds fewer than
    /// `max_connections`. Cheap when nothing changed (one state check per listener).
    pub fn replenish(&mut self, sockets: &mut SocketSet<'static>) {
        let slots = &mut self.slots;
        self.listening.retain(|&i| {
            let still = sockets.get::<tcp::Socket>(slots[i].handle).state() == tcp::State::Listen;
            slots[i].listening = still;
            still
        });
        while self.listening.len() < self.spare && self.slots.len() < self.max_connections {
            let socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; self.socket_buffer]),
                tcp::SocketBuffer::new(vec![0; self.socket_buffer]),
            );
            let handle = sockets.add(socket);
            if let Err(e) = sockets.get_mut::<tcp::Socket>(handle).listen(self.port) {
                self.error = Some(format!("listen on port {}: {e}", self.port));
                sockets.remove(handle);
                return;
            }
            self.listening.push(self.slots.len());
            self.slots.push(Slot {
                handle,
                conn: EchoConn::new(self.read_size, FinAfter::Queued),
                active: false,
                listening: true,
            });
        }
        self.peak_sockets = self.peak_sockets.max(self.slots.len());
        self.peak_connections = self
            .peak_connections
            .max(self.slots.len() - self.listening.len());
    }

    /// A connection on `slots[i]` is over: re-arms its socket while fewer than `spare`
    /// listen, otherwise marks it for [`reap`](Self::reap).
    pub fn finished(&mut self, i: usize, socket: &mut tcp::Socket<'static>) -> Result<(), String> {
        let slot = &mut self.slots[i];
        slot.conn.reset();
        slot.active = false;
        if slot.listening {
            slot.listening = false;
            self.listening.retain(|&j| j != i);
        }
        socket.abort();
        if self.listening.len() < self.spare {
            socket
                .listen(self.port)
                .map_err(|e| format!("re-listen on slot {i}: {e}"))?;
            slot.listening = true;
            self.listening.push(i);
        }
        Ok(())
    }

    /// Whether `slots[i]` was listening when the pool last looked.
    pub fn is_armed(&self, i: usize) -> bool {
        self.slots[i].listening
    }

    /// `slots[i]` is listening: counts it among the listeners if it was not (smoltcp
    /// puts a socket whose handshake was reset back to listening).
    pub fn saw_listening(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if !slot.listening && !slot.active {
            slot.listening = true;
            self.listening.push(i);
        }
    }

    /// Removes the sockets of finished connections that were not re-armed (closed and
    /// not listening), freeing their rings.
    pub fn reap(&mut self, sockets: &mut SocketSet<'static>) {
        let mut i = 0;
        let mut removed = false;
        while i < self.slots.len() {
            let slot = &self.slots[i];
            let closed = !slot.listening
                && !slot.active
                && sockets.get::<tcp::Socket>(slot.handle).state() == tcp::State::Closed;
            if closed {
                sockets.remove(slot.handle);
                self.slots.swap_remove(i);
                removed = true;
            } else {
                i += 1;
            }
        }
        if removed {
            // Indexes moved: rebuild the listener list.
            self.listening = (0..self.slots.len())
                .filter(|&i| self.slots[i].listening)
                .collect();
        }
    }
}

/// The process's peak resident memory (`VmHWM` in `/proc/self/status`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
