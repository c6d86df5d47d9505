//! What a [`Pipeline`](super::Pipeline) drives: a smoltcp socket set, and whatever moves
//! its packets.
//!
//! The pipeline must own the socket set: a copy in flight reads a socket's receive ring,
//! so nobody else may remove the socket, re-`listen` it or drop the set meanwhile. It
//! drives the set through [`Driver`], implemented by netdma's [`Stack`] and by [`Parts`],
//! which holds an application's own smoltcp `Interface`, device and `SocketSet`.

use crate::link::Link;
use crate::stack::Stack;
use smoltcp::iface::{Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use std::io;
use std::time::Duration;

/// A smoltcp socket set and what moves its packets, driven by a pipeline.
pub trait Driver {
    /// Processes packets both ways (smoltcp's `Interface::poll`). Returns whether a
    /// socket's state may have changed.
    fn poll(&mut self) -> bool;

    /// Sleeps until there may be work, at most `max` (`None`: no cap beyond smoltcp's
    /// next timer).
    fn poll_wait(&mut self, max: Option<Duration>) -> io::Result<()>;

    /// The sockets.
    fn sockets(&self) -> &SocketSet<'static>;

    /// The sockets, mutably (for the pipeline only: it owns them while copies are in
    /// flight).
    fn sockets_mut(&mut self) -> &mut SocketSet<'static>;

    /// The TCP socket `handle`.
    ///
    /// # Panics
    ///
    /// If `handle` names no TCP socket of the set (the pipeline checks handles when a read
    /// is posted).
    fn tcp_mut(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets_mut().get_mut::<tcp::Socket>(handle)
    }

    /// Adds a TCP socket with `rx_bytes` of receive and `tx_bytes` of transmit buffer.
    fn add_tcp_socket(&mut self, rx_bytes: usize, tx_bytes: usize) -> SocketHandle {
        let rx = tcp::SocketBuffer::new(vec![0; rx_bytes]);
        let tx = tcp::SocketBuffer::new(vec![0; tx_bytes]);
        self.sockets_mut().add(tcp::Socket::new(rx, tx))
    }
}

impl<L: Link> Driver for Stack<L> {
    fn poll(&mut self) -> bool {
        Stack::poll(self)
    }

    fn poll_wait(&mut self, max: Option<Duration>) -> io::Result<()> {
        Stack::poll_wait(self, max)
    }

    fn sockets(&self) -> &SocketSet<'static> {
        Stack::sockets(self)
    }

    fn sockets_mut(&mut self) -> &mut SocketSet<'static> {
        Stack::sockets_mut(self)
    }

    fn add_tcp_socket(&mut self, rx_bytes: usize, tx_bytes: usize) -> SocketHandle {
        Stack::add_tcp_socket(self, rx_bytes, tx_bytes)
    }
}

/// Longest sleep of [`Parts::poll_wait`]: a device in general cannot say when a frame
/// arrives, so the wait is a bounded nap rather than a block on the device.
pub const PARTS_MAX_NAP: Duration = Duration::from_millis(1);

/// An application's own smoltcp `Interface`, device and `SocketSet`, for a pipeline. The
/// pipeline takes them by value and hands them back with
/// [`Pipeline::into_driver`](super::Pipeline::into_driver).
///
/// ```no_run
/// use netdma::pipeline::{Parts, Pipeline};
/// # fn build() -> (smoltcp::iface::Interface, smoltcp::phy::Loopback) { unimplemented!() }
/// # let netdma = std::sync::Arc::new(netdma::NetDma::from_config(Default::default()).unwrap());
/// let (iface, device) = build(); // your own interface and device
/// let sockets = smoltcp::iface::SocketSet::new(Vec::new());
/// let mut pipeline = Pipeline::new(Parts::new(iface, device, sockets), netdma);
/// let handle = pipeline.add_tcp_socket(1 << 20, 1 << 20);
/// pipeline.with_socket(handle, |s| s.listen(7000)).unwrap().unwrap();
/// loop {
///     pipeline.poll();
///     // post_recv, take_completed, send ...
///     pipeline.poll_wait(None).unwrap();
/// }
/// ```
pub struct Parts<D: Device> {
    iface: Interface,
    device: D,
    sockets: SocketSet<'static>,
}

impl<D: Device> Parts<D> {
    /// The pieces, to be driven by a pipeline.
    pub fn new(iface: Interface, device: D, sockets: SocketSet<'static>) -> Self {
        Parts {
            iface,
            device,
            sockets,
        }
    }

    /// The interface.
    pub fn iface(&self) -> &Interface {
        &self.iface
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The pieces back.
    pub fn into_inner(self) -> (Interface, D, SocketSet<'static>) {
        (self.iface, self.device, self.sockets)
    }
}

impl<D: Device> Driver for Parts<D> {
    fn poll(&mut self) -> bool {
        self.iface
            .poll(Instant::now(), &mut self.device, &mut self.sockets)
            == PollResult::SocketStateChanged
    }

    fn poll_wait(&mut self, max: Option<Duration>) -> io::Result<()> {
        let timer = self
            .iface
            .poll_delay(Instant::now(), &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()));
        let nap = [timer, max]
            .into_iter()
            .flatten()
            .fold(PARTS_MAX_NAP, Duration::min);
        if !nap.is_zero() {
            std::thread::sleep(nap);
        }
        Ok(())
    }

    fn sockets(&self) -> &SocketSet<'static> {
        &self.sockets
    }

    fn sockets_mut(&mut self) -> &mut SocketSet<'static> {
        &mut self.sockets
    }
}
