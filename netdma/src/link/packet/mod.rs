//! An existing network interface as a link, through an `AF_PACKET` socket.
//!
//! Two paths, chosen at open:
//!
//! - **virtio-net headers** ([`VnetPacketSocket`], the project's own code on `libc`):
//!   `PACKET_VNET_HDR` for whole GSO/GRO frames and checksum flags, `recvmmsg`/`sendmmsg`
//!   batches, `PACKET_QDISC_BYPASS` on send;
//! - **plain** (`pnet_datalink`): one frame per system call, every checksum computed
//!   and verified by smoltcp; taken when the kernel refuses the header, with one log
//!   line saying so.
//!
//! The code is split by concern: [`socket`] holds the virtio-net socket, [`batch`] its
//! `recvmmsg`/`sendmmsg` batches, [`plain`] the pnet fallback, and [`sys`] the system
//! calls both share; this file holds [`PacketLink`] itself: its options, the choice of
//! path at open, and its smoltcp `Device` and [`Link`] faces.

use std::io;
use std::time::Duration;

use pnet_datalink::NetworkInterface;
use smoltcp::phy::{self, Device, DeviceCapabilities, PacketMeta};
use smoltcp::time::Instant;

use super::{Link, LinkStats, Offloads, GSO_MAX_FRAME};

mod batch;
mod plain;
mod socket;
mod sys;
#[cfg(test)]
mod tests;

use plain::{Plain, PlainTx};
pub use socket::VnetPacketSocket;
use socket::VnetTx;
pub(crate) use sys::{control_socket, ifreq_for, interface_mtu};
use sys::{find_interface, wait_readable};

/// Socket receive (and send) buffer [`PacketLink::open`] asks the kernel for: 8 MiB.
///
/// With the default (`net.core.rmem_default`, about 208 KiB) a 1 MiB TCP window
/// overflows the socket queue and collapses from drops.
pub const DEFAULT_RCVBUF_BYTES: usize = 8 << 20;

/// Receive buffer size: the largest frame an interface can hand us (64 KiB IP packet
/// plus Ethernet header), so nothing is truncated.
const MAX_FRAME: usize = GSO_MAX_FRAME;

/// How [`PacketLink::open_with`] sets up its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketOptions {
    /// Socket receive (and send) buffer to ask for, in bytes.
    pub rcvbuf_bytes: usize,
    /// Try virtio-net headers, GSO and batches (default `true`); `false` takes the
    /// plain path at once.
    pub vnet_hdr: bool,
}

impl Default for PacketOptions {
    fn default() -> Self {
        PacketOptions {
            rcvbuf_bytes: DEFAULT_RCVBUF_BYTES,
            vnet_hdr: true,
        }
    }
}

/// An Ethernet link on an existing interface (veth end, bridge port, NIC), through an
/// `AF_PACKET`/`SOCK_RAW` socket.
///
/// smoltcp uses its own MAC address on the wire, so the interface is put in
/// promiscuous mode. Give smoltcp an IP address the kernel does not use on that
/// interface; frames for smoltcp's MAC reach the kernel too, which ignores them.
///
/// **Privileges:** raw packet sockets need root (or `CAP_NET_RAW`).
///
/// **Offloads:** [`open`](Self::open) asks for virtio-net headers
/// (`PACKET_VNET_HDR`). With them the peer keeps the kernel's default offloads: the
/// kernel's TSO super-frames (up to 64 KiB, partial checksums) arrive whole and are
/// accepted on the header's word, frames without checksum flags are verified by the
/// link and dropped if bad ([`LinkStats::rx_csum_bad`]), smoltcp sends TCP segments of
/// up to 64 KiB with `NEEDS_CSUM` for the kernel to cut, and frames move in batches
/// (`recvmmsg`/`sendmmsg`, sends bypassing the queueing discipline). A kernel that
/// refuses the header gets the plain path (pnet, one frame per system call, smoltcp
/// computing and verifying every checksum), logged once; the peer then needs its
/// transmit checksum offload off (see [`set_tx_checksum_offload`](super::set_tx_checksum_offload)),
/// since its partial checksums would fail verification. [`offloads`](Self::offloads)
/// says which path was taken.
///
/// **Socket buffers:** raised to [`DEFAULT_RCVBUF_BYTES`] with
/// `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` (root, ignores `net.core.rmem_max`), falling back
/// to `SO_RCVBUF`/`SO_SNDBUF` (capped by `net.core.rmem_max`/`wmem_max`).
/// [`rcvbuf_bytes`](Self::rcvbuf_bytes) reports what the kernel granted.
///
/// Our own transmitted frames are not looped back to us (`PACKET_IGNORE_OUTGOING`,
/// Linux >= 4.20; on older kernels they are, and smoltcp ignores them).
///
/// [`wait`](Link::wait) sleeps in poll(2) on the socket. Frames smoltcp sends during a
/// poll are queued and sent together by [`flush`](Link::flush), which
/// [`Stack::poll`](crate::stack::Stack::poll) calls after each poll; driven by a bare
/// smoltcp `Interface`, they go at the latest when the next poll receives or when
/// [`wait`](Link::wait) is about to sleep.
pub struct PacketLink {
    name: String,
    frame_mtu: usize,
    rcvbuf_bytes: usize,
    path: Path,
    rx_errors: u64,
    stats: LinkStats,
}

enum Path {
    Vnet(Box<VnetPacketSocket>),
    Plain(Plain),
}

impl std::fmt::Debug for PacketLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketLink")
            .field("name", &self.name)
            .field("frame_mtu", &self.frame_mtu)
            .field("rcvbuf_bytes", &self.rcvbuf_bytes)
            .field("offloads", &self.offloads())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl PacketLink {
    /// Opens an `AF_PACKET` link on the interface called `iface_name`, with
    /// [`DEFAULT_RCVBUF_BYTES`] of socket buffer and virtio-net headers if the kernel
    /// takes them.
    ///
    /// Fails with [`io::ErrorKind::NotFound`] if there is no such interface, and with
    /// the kernel's error (typically `PermissionDenied`) if the socket cannot be opened.
    pub fn open(iface_name: &str) -> io::Result<Self> {
        Self::open_with(iface_name, PacketOptions::default())
    }

    /// Like [`open`](Self::open), asking for `rcvbuf_bytes` of socket receive (and
    /// send) buffer.
    pub fn open_with_rcvbuf(iface_name: &str, rcvbuf_bytes: usize) -> io::Result<Self> {
        Self::open_with(
            iface_name,
            PacketOptions {
                rcvbuf_bytes,
                ..PacketOptions::default()
            },
        )
    }

    /// Opens the link with explicit [`PacketOptions`].
    pub fn open_with(iface_name: &str, opts: PacketOptions) -> io::Result<Self> {
        let iface = find_interface(iface_name)?;
        let frame_mtu = interface_mtu(iface_name)? + 14;
        let fast = if opts.vnet_hdr {
            Some(VnetPacketSocket::open_index(
                iface_name,
                iface.index,
                opts.rcvbuf_bytes,
            ))
        } else {
            None
        };
        Self::choose(iface_name, &iface, frame_mtu, opts, fast)
    }

    /// Takes the fast path if it opened, the plain one otherwise (saying why, once).
    fn choose(
        name: &str,
        iface: &NetworkInterface,
        frame_mtu: usize,
        opts: PacketOptions,
        fast: Option<io::Result<VnetPacketSocket>>,
    ) -> io::Result<Self> {
        let why = match fast {
            Some(Ok(sock)) => {
                let rcvbuf = sock.rcvbuf_bytes;
                return Ok(PacketLink {
                    name: name.to_owned(),
                    frame_mtu,
                    rcvbuf_bytes: rcvbuf,
                    path: Path::Vnet(Box::new(sock)),
                    rx_errors: 0,
                    stats: LinkStats::default(),
                });
            }
            Some(Err(e)) if e.kind() == io::ErrorKind::Unsupported => {
                format!("the kernel refused virtio-net headers ({e})")
            }
            // Anything else (permissions, the interface) would fail the plain path too.
            Some(Err(e)) => return Err(e),
            None => "virtio-net headers not requested".to_owned(),
        };
        tracing::warn!(
            iface = name,
            "packet link: {why}; plain path: one frame per system call, no GSO, the peer needs \
             its transmit checksum offload off"
        );
        let (plain, rcvbuf) = Plain::open(iface, frame_mtu, opts.rcvbuf_bytes)?;
        Ok(PacketLink {
            name: name.to_owned(),
            frame_mtu,
            rcvbuf_bytes: rcvbuf,
            path: Path::Plain(plain),
            rx_errors: 0,
            stats: LinkStats::default(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface's IP MTU when the link was opened.
    pub fn mtu(&self) -> usize {
        self.frame_mtu - 14
    }

    /// The socket receive buffer the kernel granted, in bytes (as `SO_RCVBUF` reports
    /// it, i.e. including the kernel's bookkeeping share).
    pub fn rcvbuf_bytes(&self) -> usize {
        self.rcvbuf_bytes
    }

    /// Which offloads the link runs with (all off on the plain path).
    pub fn offloads(&self) -> Offloads {
        match &self.path {
            Path::Vnet(s) => Offloads {
                vnet_hdr: true,
                gso: true,
                batched: true,
                qdisc_bypass: s.qdisc_bypass(),
            },
            Path::Plain(_) => Offloads::default(),
        }
    }

    /// Frame and byte counters. Frames the kernel refused on send are `tx_dropped`.
    pub fn stats(&self) -> LinkStats {
        match &self.path {
            Path::Vnet(s) => s.stats(),
            Path::Plain(_) => self.stats,
        }
    }

    /// Receive errors other than "no frame ready" (e.g. `ENETDOWN`).
    pub fn rx_errors(&self) -> u64 {
        match &self.path {
            Path::Vnet(s) => s.rx_errors,
            Path::Plain(_) => self.rx_errors,
        }
    }
}

impl Device for PacketLink {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        match &mut self.path {
            Path::Vnet(sock) => sock.receive_token(self.frame_mtu),
            Path::Plain(plain) => {
                plain.receive_token(&self.name, &mut self.stats, &mut self.rx_errors)
            }
        }
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        match &mut self.path {
            Path::Vnet(sock) => Some(sock.transmit_token()),
            Path::Plain(plain) => Some(plain.transmit_token(&mut self.stats)),
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        match self.path {
            Path::Vnet(_) => super::vnet_capabilities(self.frame_mtu, true),
            Path::Plain(_) => super::kernel_peer_capabilities(self.frame_mtu),
        }
    }
}

impl Link for PacketLink {
    /// Sleeps in poll(2) until the socket is readable or `timeout` passes; returns at
    /// once while received frames wait in the current batch.
    ///
    /// A pending socket error (e.g. `ENETDOWN` when the interface goes down) is
    /// cleared and logged, so that it cannot make poll(2) return at once forever.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let fd = match &mut self.path {
            Path::Vnet(sock) => return sock.wait(timeout),
            Path::Plain(plain) => plain.fd,
        };
        if wait_readable(fd, timeout)? {
            self.rx_errors += 1;
        }
        Ok(())
    }

    /// Sends the frames queued during the last poll, in one `sendmmsg` per batch.
    fn flush(&mut self) {
        if let Path::Vnet(sock) = &mut self.path {
            sock.flush();
        }
    }

    fn stats(&self) -> LinkStats {
        PacketLink::stats(self)
    }

    fn offloads(&self) -> Offloads {
        PacketLink::offloads(self)
    }
}

/// Receive token of a [`PacketLink`]: borrows the frame from the link's buffer.
pub use super::FrameRxToken as RxToken;

/// Transmit token of a [`PacketLink`].
#[doc(hidden)]
pub enum TxToken<'a> {
    Vnet(VnetTx<'a>),
    Plain(PlainTx<'a>),
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        match self {
            TxToken::Vnet(t) => t.consume(len, f),
            TxToken::Plain(t) => t.consume(len, f),
        }
    }

    fn set_meta(&mut self, meta: PacketMeta) {
        if let TxToken::Vnet(t) = self {
            t.set_meta(meta);
        }
    }
}
