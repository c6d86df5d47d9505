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

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::io::RawFd;
use std::time::Duration;

use pnet_datalink::{Channel, DataLinkReceiver, DataLinkSender, NetworkInterface};
use smoltcp::phy::{self, Device, DeviceCapabilities, PacketMeta};
use smoltcp::time::Instant;

use super::vnet::{self, VnetHeader, VNET_HDR_LEN};
use super::{poll_readable, Link, LinkStats, Offloads, GSO_MAX_FRAME};

/// Socket receive (and send) buffer [`PacketLink::open`] asks the kernel for: 8 MiB.
///
/// With the default (`net.core.rmem_default`, about 208 KiB) a 1 MiB TCP window
/// overflows the socket queue and collapses from drops.
pub const DEFAULT_RCVBUF_BYTES: usize = 8 << 20;

/// Receive buffer size: the largest frame an interface can hand us (64 KiB IP packet
/// plus Ethernet header), so nothing is truncated.
const MAX_FRAME: usize = GSO_MAX_FRAME;

/// One receive buffer of the batched path: header, largest frame, room for a VLAN tag.
const RX_BUF: usize = VNET_HDR_LEN + MAX_FRAME + 64;

/// Frames per `recvmmsg`/`sendmmsg` call.
const BATCH: usize = 32;

/// Receive batches one poll may take before the link lets smoltcp transmit: bounds the
/// time between a frame's arrival and the ACKs it triggers under a flood.
const MAX_RX_BATCHES_PER_POLL: u32 = 8;

/// How long a send may wait for room in the socket's send buffer before the frame is
/// dropped (counted in `tx_dropped`), on the plain path.
const WRITE_TIMEOUT: Duration = Duration::from_millis(10);

// Not exported by every libc version for every target: values from <asm-generic/socket.h>
// and <linux/if_packet.h>.
#[cfg(not(any(target_arch = "mips", target_arch = "mips64", target_arch = "sparc64")))]
const SO_RCVBUFFORCE: libc::c_int = 33;
#[cfg(not(any(target_arch = "mips", target_arch = "mips64", target_arch = "sparc64")))]
const SO_SNDBUFFORCE: libc::c_int = 32;
#[cfg(any(target_arch = "mips", target_arch = "mips64"))]
const SO_RCVBUFFORCE: libc::c_int = 33;
#[cfg(any(target_arch = "mips", target_arch = "mips64"))]
const SO_SNDBUFFORCE: libc::c_int = 31;
#[cfg(target_arch = "sparc64")]
const SO_RCVBUFFORCE: libc::c_int = 0x100b;
#[cfg(target_arch = "sparc64")]
const SO_SNDBUFFORCE: libc::c_int = 0x100a;
const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_MR_PROMISC: libc::c_ushort = 1;
const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// `struct packet_mreq` from `<linux/if_packet.h>`.
#[repr(C)]
struct PacketMreq {
    mr_ifindex: libc::c_int,
    mr_type: libc::c_ushort,
    mr_alen: libc::c_ushort,
    mr_address: [u8; 8],
}

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

struct Plain {
    fd: RawFd,
    tx: Box<dyn DataLinkSender>,
    rx: Box<dyn DataLinkReceiver>,
    tx_buf: Vec<u8>,
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
                qdisc_bypass: s.tx.bypass,
            },
            Path::Plain(_) => Offloads::default(),
        }
    }

    /// Frame and byte counters. Frames the kernel refused on send are `tx_dropped`.
    pub fn stats(&self) -> LinkStats {
        match &self.path {
            Path::Vnet(s) => s.stats,
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

fn find_interface(name: &str) -> io::Result<NetworkInterface> {
    pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no network interface named {name:?}"),
            )
        })
}

/// An `ifreq` carrying the interface name `name` (NUL-terminated), the rest zeroed.
pub(crate) fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IF_NAMESIZE || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?} (1 to 15 bytes, no NUL)"),
        ));
    }
    // SAFETY: `ifreq` is a C struct of integers, byte arrays and a union of those and
    // raw pointers; the all-zero bit pattern is a valid value of each.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// A datagram socket to issue interface ioctls on.
pub(crate) fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; a failure is reported as -1 with errno.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The IP MTU of `name` in the calling thread's network namespace (`SIOCGIFMTU`).
pub(crate) fn interface_mtu(name: &str) -> io::Result<usize> {
    let mut req = ifreq_for(name)?;
    let sock = control_socket()?;
    // SAFETY: `req` is an initialised `ifreq` with a NUL-terminated name; SIOCGIFMTU
    // writes the MTU into its union, which lives on this stack frame for the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU as _, &mut req) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after a successful SIOCGIFMTU the kernel has set `ifru_mtu`, an int.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(mtu.max(68) as usize)
}

fn open_packet_socket(protocol: u16) -> io::Result<RawFd> {
    let proto = protocol.to_be() as libc::c_int;
    // SAFETY: socket(2) takes no pointers; a failure is reported as -1 with errno.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn close_fd(fd: RawFd) {
    // SAFETY: `fd` was returned by socket(2) in this module, is owned by the caller, and
    // is closed exactly once here.
    unsafe {
        libc::close(fd);
    }
}

impl Plain {
    /// The pnet path: returns it and the receive buffer the kernel granted.
    fn open(
        iface: &NetworkInterface,
        frame_mtu: usize,
        rcvbuf: usize,
    ) -> io::Result<(Self, usize)> {
        let fd = open_packet_socket(libc::ETH_P_ALL as u16)?;
        let granted = match configure_socket(fd, rcvbuf) {
            Ok(granted) => granted,
            Err(e) => {
                close_fd(fd);
                return Err(e);
            }
        };
        let config = pnet_datalink::Config {
            write_buffer_size: frame_mtu,
            read_buffer_size: frame_mtu.max(MAX_FRAME),
            // A zero read timeout makes `next()` non-blocking (poll(2) with 0 ms); we
            // block in `wait` instead.
            read_timeout: Some(Duration::ZERO),
            write_timeout: Some(WRITE_TIMEOUT),
            promiscuous: true,
            // pnet binds this socket to the interface and takes ownership of it: it
            // closes it on error and when the channel is dropped.
            socket_fd: Some(fd),
            ..Default::default()
        };
        let (tx, rx) = match pnet_datalink::channel(iface, config)? {
            Channel::Ethernet(tx, rx) => (tx, rx),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "pnet_datalink returned a non-Ethernet channel",
                ))
            }
        };
        Ok((
            Plain {
                fd,
                tx,
                rx,
                tx_buf: Vec::with_capacity(frame_mtu),
            },
            granted,
        ))
    }
}

/// An `AF_PACKET` socket with virtio-net headers, bound to one interface in promiscuous
/// mode, moving frames in batches: the fast path of [`PacketLink`], also usable on its
/// own (e.g. by a program that forwards frames between two interfaces).
///
/// Every buffer it receives or sends is `[virtio-net header][Ethernet frame]`.
/// [`recv`](Self::recv) hands out received buffers one at a time from a batch filled by
/// one `recvmmsg`; [`send`](Self::send) queues a copy and [`flush`](Self::flush) sends
/// the queue with `sendmmsg` (it flushes by itself when the queue is full).
pub struct VnetPacketSocket {
    fd: OwnedFd,
    rcvbuf_bytes: usize,
    rx: RxBatch,
    tx: TxBatch,
    rx_errors: u64,
    stats: LinkStats,
    /// Flushes since the kernel's drop counter was last read.
    flushes: u32,
    guard: super::ackguard::AckGuard,
}

impl std::fmt::Debug for VnetPacketSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VnetPacketSocket")
            .field("fd", &self.fd)
            .field("qdisc_bypass", &self.tx.bypass)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Received buffers: filled by one `recvmmsg`, handed out in order.
struct RxBatch {
    bufs: Vec<Box<[u8]>>,
    lens: [usize; BATCH],
    next: usize,
    count: usize,
    /// Batches taken since the last flush (the per-poll budget).
    batches: u32,
}

/// Frames queued for one `sendmmsg`.
struct TxBatch {
    /// `PACKET_QDISC_BYPASS` is on.
    bypass: bool,
    bufs: Vec<Vec<u8>>,
    lens: [usize; BATCH],
    gso: [bool; BATCH],
    count: usize,
}

impl VnetPacketSocket {
    /// Opens the socket on the interface `iface` with `rcvbuf_bytes` of socket buffer.
    ///
    /// Fails with `NotFound` for no such interface, with the kernel's error if the
    /// socket cannot be opened (e.g. `PermissionDenied`), and with `Unsupported` if the
    /// kernel refuses `PACKET_VNET_HDR` (no virtio-net header support).
    pub fn open(iface: &str, rcvbuf_bytes: usize) -> io::Result<Self> {
        let index = find_interface(iface)?.index;
        Self::open_index(iface, index, rcvbuf_bytes)
    }

    fn open_index(name: &str, ifindex: u32, rcvbuf_bytes: usize) -> io::Result<Self> {
        // Protocol 0: no frame is queued before bind() picks the interface.
        // SAFETY: the descriptor was just returned by socket(2) and is owned by no one
        // else, so `OwnedFd` may take it (and close it on every error path below).
        let fd = unsafe { OwnedFd::from_raw_fd(open_packet_socket(0)?) };
        let raw = fd.as_raw_fd();
        if let Err(e) = set_int_opt(raw, libc::SOL_PACKET, PACKET_VNET_HDR, 1) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("PACKET_VNET_HDR refused: {e}"),
            ));
        }
        // SAFETY: `sockaddr_ll` is a plain C struct of integers and a byte array; all
        // zeros is a valid value, and the fields that matter are set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as libc::c_ushort;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: `sll` is a live, initialised `sockaddr_ll` and we pass its exact
        // size; bind(2) only reads it.
        let r = unsafe {
            libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r == -1 {
            return Err(io::Error::last_os_error());
        }
        let mreq = PacketMreq {
            mr_ifindex: ifindex as libc::c_int,
            mr_type: PACKET_MR_PROMISC,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        // SAFETY: `mreq` is a live `packet_mreq` (same layout as the kernel's) and we
        // pass its exact size; setsockopt(2) only reads it.
        let r = unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                PACKET_ADD_MEMBERSHIP,
                (&mreq as *const PacketMreq).cast(),
                std::mem::size_of::<PacketMreq>() as libc::socklen_t,
            )
        };
        if r == -1 {
            return Err(io::Error::last_os_error());
        }
        let rcvbuf = configure_socket(raw, rcvbuf_bytes)?;
        let qdisc_bypass = match set_int_opt(raw, libc::SOL_PACKET, PACKET_QDISC_BYPASS, 1) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(iface = name, %e, "packet link: PACKET_QDISC_BYPASS refused");
                false
            }
        };
        tracing::debug!(
            iface = name,
            qdisc_bypass,
            "packet link: virtio-net headers, GSO, batches"
        );
        Ok(VnetPacketSocket::with_fd(fd, rcvbuf, qdisc_bypass))
    }

    /// The batched path over any datagram descriptor (tests: a Unix socketpair stands in
    /// for the kernel).
    #[cfg(test)]
    fn over_fd(fd: OwnedFd) -> Self {
        VnetPacketSocket::with_fd(fd, 0, false)
    }

    /// The socket's state around an open descriptor: empty batches, zero counters.
    fn with_fd(fd: OwnedFd, rcvbuf_bytes: usize, qdisc_bypass: bool) -> Self {
        VnetPacketSocket {
            fd,
            rcvbuf_bytes,
            rx: RxBatch {
                bufs: (0..BATCH)
                    .map(|_| vec![0u8; RX_BUF].into_boxed_slice())
                    .collect(),
                lens: [0; BATCH],
                next: 0,
                count: 0,
                batches: 0,
            },
            tx: TxBatch {
                bypass: qdisc_bypass,
                bufs: (0..BATCH).map(|_| Vec::new()).collect(),
                lens: [0; BATCH],
                gso: [false; BATCH],
                count: 0,
            },
            rx_errors: 0,
            stats: LinkStats::default(),
            flushes: 0,
            guard: Default::default(),
        }
    }

    /// The next received buffer (`[header][frame]`), from the current batch or a new one
    /// (one non-blocking `recvmmsg`); `None` if no frame is ready.
    ///
    /// Counts the buffer's frame in [`LinkStats::rx_frames`] (no checksum work here).
    pub fn recv(&mut self) -> Option<&[u8]> {
        if self.rx.next == self.rx.count
            && !self
                .rx
                .refill(self.fd.as_raw_fd(), &mut self.stats, &mut self.rx_errors)
        {
            return None;
        }
        let i = self.rx.next;
        self.rx.next += 1;
        let buf = &self.rx.bufs[i][..self.rx.lens[i]];
        self.stats.count_rx(buf.len().saturating_sub(VNET_HDR_LEN));
        Some(buf)
    }

    /// Queues `frame` to be sent with `hdr`; sends the queue if it is full.
    pub fn send(&mut self, hdr: &VnetHeader, frame: &[u8]) {
        let slot = self.tx.slot(VNET_HDR_LEN + frame.len());
        // `slot` is exactly header + frame long, so the header fits.
        let _ = hdr.write(slot);
        slot[VNET_HDR_LEN..].copy_from_slice(frame);
        self.tx.commit(hdr.is_gso());
        if self.tx.count == BATCH {
            self.tx.flush(self.fd.as_raw_fd(), &mut self.stats);
        }
    }

    /// Sends every queued frame (`sendmmsg`) and resets the per-poll receive budget.
    pub fn flush(&mut self) {
        self.tx.flush(self.fd.as_raw_fd(), &mut self.stats);
        self.rx.batches = 0;
        self.flushes += 1;
        if self.flushes >= 256 {
            self.read_kernel_drops();
        }
    }

    /// Adds the frames the kernel dropped since the last call (`PACKET_STATISTICS`,
    /// which resets on read) to [`LinkStats::rx_kernel_drops`].
    fn read_kernel_drops(&mut self) {
        self.flushes = 0;
        // `struct tpacket_stats`: tp_packets, tp_drops.
        let mut st = [0u32; 2];
        let mut len = std::mem::size_of_val(&st) as libc::socklen_t;
        // SAFETY: `st` and `len` are live locals and `len` holds the size of `st`, so
        // getsockopt(2) writes at most that many bytes into it and updates `len`.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_STATISTICS,
                st.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if r == 0 {
            self.stats.rx_kernel_drops += u64::from(st[1]);
        }
    }

    /// Blocks until a frame may be ready or `timeout` passes; returns at once if
    /// received frames wait in the current batch.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if self.rx.next < self.rx.count {
            return Ok(());
        }
        // Nothing queued for sending may wait through the sleep.
        self.flush();
        self.read_kernel_drops();
        if wait_readable(self.fd.as_raw_fd(), timeout)? {
            self.rx_errors += 1;
        }
        Ok(())
    }

    /// Frame, byte and system-call counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Whether sends bypass the queueing discipline.
    pub fn qdisc_bypass(&self) -> bool {
        self.tx.bypass
    }

    /// Blocks until one of `sockets` may have a frame or `timeout` passes; returns at
    /// once if one has received frames waiting in its batch.
    pub fn wait_any(sockets: &[&VnetPacketSocket], timeout: Duration) -> io::Result<()> {
        if sockets.iter().any(|s| s.rx.next < s.rx.count) {
            return Ok(());
        }
        let mut fds: Vec<libc::pollfd> = sockets
            .iter()
            .map(|s| libc::pollfd {
                fd: s.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = timeout.as_millis().min(libc::c_int::MAX as u128) as libc::c_int;
        // SAFETY: `fds` is a live vector of initialised `pollfd`s and we pass its exact
        // length; poll(2) only writes their `revents`.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        Ok(())
    }
}

impl RxBatch {
    /// Fills the batch with one non-blocking `recvmmsg`; `false` if nothing came (or the
    /// per-poll budget is spent).
    fn refill(&mut self, fd: RawFd, stats: &mut LinkStats, errors: &mut u64) -> bool {
        self.next = 0;
        self.count = 0;
        if self.batches >= MAX_RX_BATCHES_PER_POLL {
            // End this drain so smoltcp can transmit; the next one starts afresh.
            self.batches = 0;
            return false;
        }
        // SAFETY: all-zero `iovec`s and `mmsghdr`s are valid values (null pointers and
        // zero lengths); every entry we pass is filled in below.
        let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for ((v, m), buf) in iov
            .iter_mut()
            .zip(msgs.iter_mut())
            .zip(self.bufs.iter_mut())
        {
            v.iov_base = buf.as_mut_ptr().cast();
            v.iov_len = buf.len();
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs` holds BATCH headers, each pointing at one `iovec` of `iov`,
        // which points at a distinct, exclusively borrowed buffer of `iov_len` bytes in
        // `self.bufs`; all of these live until the call returns, and the kernel writes
        // at most `iov_len` bytes into each buffer and the `msg_len`/`msg_flags` fields.
        // MSG_DONTWAIT: never blocks; a null timeout is allowed.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                stats.rx_empty_syscalls += 1;
            } else if err.kind() != io::ErrorKind::Interrupted {
                *errors += 1;
                tracing::debug!(%err, "packet link: recvmmsg failed");
            }
            return false;
        }
        self.batches += 1;
        stats.rx_syscalls += 1;
        let mut kept = 0;
        for (r, m) in msgs.iter().enumerate().take(n as usize) {
            let len = m.msg_len as usize;
            if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len < VNET_HDR_LEN {
                stats.rx_dropped += 1;
                continue;
            }
            // Keep the buffers of whole frames at the front, in order (the kernel is
            // done with the pointers in `msgs`).
            self.bufs.swap(kept, r);
            self.lens[kept] = len;
            kept += 1;
        }
        self.count = kept;
        // Frames of one connection may arrive swapped (delivered by two CPUs at once);
        // smoltcp would answer the first with a duplicate ACK and the kernel would
        // resend a whole super-frame. Put adjacent swapped segments back in order.
        for i in 1..kept {
            let (a, b) = self.bufs.split_at(i);
            let earlier = &a[i - 1][VNET_HDR_LEN..self.lens[i - 1]];
            let later = &b[0][VNET_HDR_LEN..self.lens[i]];
            if super::ackguard::swapped(earlier, later) {
                self.bufs.swap(i - 1, i);
                self.lens.swap(i - 1, i);
                stats.rx_reordered += 1;
            }
        }
        kept > 0
    }
}

impl TxBatch {
    /// The next free buffer, `len` bytes long.
    fn slot(&mut self, len: usize) -> &mut [u8] {
        let buf = &mut self.bufs[self.count];
        if buf.len() < len {
            buf.resize(len, 0);
        }
        self.lens[self.count] = len;
        &mut buf[..len]
    }

    /// Marks the buffer `slot` handed out as queued.
    fn commit(&mut self, gso: bool) {
        self.gso[self.count] = gso;
        self.count += 1;
    }

    /// Sends every queued buffer with `sendmmsg`, counting what the kernel took and
    /// refused; the queue is empty afterwards.
    fn flush(&mut self, fd: RawFd, stats: &mut LinkStats) {
        let count = self.count;
        if count == 0 {
            return;
        }
        self.count = 0;
        // SAFETY: all-zero `iovec`s and `mmsghdr`s are valid values; the first `count`
        // entries are filled in below and only those are passed.
        let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..count {
            iov[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            iov[i].iov_len = self.lens[i];
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        let mut start = 0;
        while start < count {
            // SAFETY: entries `start..count` of `msgs` each point at one `iovec` that
            // points at `lens[i]` initialised bytes of `bufs[i]`; all live until the call
            // returns. The socket is bound, so no address is needed (null `msg_name`).
            // sendmmsg(2) reads the buffers and writes only `msg_len`.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    msgs[start..].as_mut_ptr(),
                    (count - start) as libc::c_uint,
                    0,
                )
            };
            stats.tx_syscalls += 1;
            if r < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if self.bypass && self.gso[start] && err.raw_os_error() == Some(libc::ENOBUFS) {
                    // With the queueing discipline bypassed, the kernel drops a
                    // super-frame it would have to cut in software (an interface without
                    // TSO). Go through the queueing discipline from now on, and retry.
                    if set_int_opt(fd, libc::SOL_PACKET, PACKET_QDISC_BYPASS, 0).is_ok() {
                        self.bypass = false;
                        tracing::info!(
                            "packet link: the interface cuts super-frames in software; \
                             sending through its queueing discipline"
                        );
                        continue;
                    }
                }
                // The first frame was refused (e.g. ENOBUFS: the peer's queue is full);
                // drop it, as a NIC would, and send the rest.
                stats.tx_dropped += 1;
                tracing::trace!(%err, "packet link: send refused, frame dropped");
                start += 1;
                continue;
            }
            for i in start..start + r as usize {
                stats.count_tx(self.lens[i] - VNET_HDR_LEN);
                if self.gso[i] {
                    stats.tx_gso_frames += 1;
                }
            }
            start += r as usize;
        }
    }
}

fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: we pass a pointer to a live `c_int` on this stack frame and its exact size;
    // setsockopt(2) only reads `size_of::<c_int>()` bytes from it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sleeps in poll(2) until `fd` is readable or `timeout` passes. A pending socket error
/// (e.g. `ENETDOWN` when the interface goes down) is read, which clears it, and logged,
/// so that it cannot make poll(2) return at once forever; returns whether there was one.
fn wait_readable(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    let revents = poll_readable(fd, timeout)?;
    if revents & libc::POLLERR == 0 {
        return Ok(false);
    }
    match get_int_opt(fd, libc::SOL_SOCKET, libc::SO_ERROR)? {
        0 => Ok(false),
        errno => {
            let err = io::Error::from_raw_os_error(errno);
            tracing::debug!(%err, "packet link: socket error");
            Ok(true)
        }
    }
}

fn get_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live locals; `len` holds the size of `value`, so
    // getsockopt(2) writes at most that many bytes into it and updates `len`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

/// Raises the socket buffers and stops outgoing frames from looping back. Returns the
/// receive buffer the kernel granted.
fn configure_socket(fd: RawFd, bytes: usize) -> io::Result<usize> {
    let want = bytes.min(libc::c_int::MAX as usize / 2) as libc::c_int;
    for (force, plain) in [
        (SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if set_int_opt(fd, libc::SOL_SOCKET, force, want).is_err() {
            // Not privileged (EPERM): the plain option, capped by net.core.[rw]mem_max.
            if let Err(e) = set_int_opt(fd, libc::SOL_SOCKET, plain, want) {
                tracing::warn!(%e, "packet link: cannot raise socket buffer");
            }
        }
    }
    if let Err(e) = set_int_opt(fd, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1) {
        // Linux < 4.20: our own frames come back; smoltcp drops them (not its MAC).
        tracing::debug!(%e, "packet link: PACKET_IGNORE_OUTGOING unsupported");
    }
    let granted = get_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?;
    if (granted as usize) < bytes {
        tracing::warn!(
            granted,
            wanted = bytes,
            "packet link: socket receive buffer smaller than asked (not root? raise net.core.rmem_max)"
        );
    }
    Ok(granted.max(0) as usize)
}

impl Device for PacketLink {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame_mtu = self.frame_mtu;
        match &mut self.path {
            Path::Vnet(sock) => {
                let sock = &mut **sock;
                let fd = sock.fd.as_raw_fd();
                let i = loop {
                    if sock.rx.next == sock.rx.count {
                        // Before the next system call, send what smoltcp queued (replies
                        // made during this drain, or the last poll's frames if nobody
                        // called `flush`).
                        sock.tx.flush(fd, &mut sock.stats);
                        if !sock.rx.refill(fd, &mut sock.stats, &mut sock.rx_errors) {
                            return None;
                        }
                    }
                    let i = sock.rx.next;
                    sock.rx.next += 1;
                    let buf = &mut sock.rx.bufs[i][..sock.rx.lens[i]];
                    if super::accept_vnet_frame(buf, frame_mtu, &mut sock.stats, &mut sock.guard) {
                        break i;
                    }
                };
                let rx = RxToken {
                    frame: &sock.rx.bufs[i][VNET_HDR_LEN..sock.rx.lens[i]],
                };
                let tx = TxToken::Vnet(VnetTx {
                    batch: &mut sock.tx,
                    fd,
                    stats: &mut sock.stats,
                    guard: &mut sock.guard,
                    gso: None,
                });
                Some((rx, tx))
            }
            Path::Plain(plain) => {
                let frame = match plain.rx.next() {
                    Ok(frame) => frame,
                    Err(e) => {
                        if !matches!(
                            e.kind(),
                            io::ErrorKind::TimedOut
                                | io::ErrorKind::WouldBlock
                                | io::ErrorKind::Interrupted
                        ) {
                            self.rx_errors += 1;
                            tracing::debug!(iface = %self.name, %e, "packet link: receive failed");
                        }
                        return None;
                    }
                };
                self.stats.count_rx(frame.len());
                let rx = RxToken { frame };
                let tx = TxToken::Plain(PlainTx {
                    tx: &mut *plain.tx,
                    buf: &mut plain.tx_buf,
                    stats: &mut self.stats,
                });
                Some((rx, tx))
            }
        }
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        match &mut self.path {
            Path::Vnet(sock) => {
                let sock = &mut **sock;
                let fd = sock.fd.as_raw_fd();
                if sock.tx.count == BATCH {
                    sock.tx.flush(fd, &mut sock.stats);
                }
                Some(TxToken::Vnet(VnetTx {
                    batch: &mut sock.tx,
                    fd,
                    stats: &mut sock.stats,
                    guard: &mut sock.guard,
                    gso: None,
                }))
            }
            Path::Plain(plain) => Some(TxToken::Plain(PlainTx {
                tx: &mut *plain.tx,
                buf: &mut plain.tx_buf,
                stats: &mut self.stats,
            })),
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

/// Transmit token of the batched path: the frame goes into the send queue.
#[doc(hidden)]
pub struct VnetTx<'a> {
    batch: &'a mut TxBatch,
    fd: RawFd,
    stats: &'a mut LinkStats,
    guard: &'a mut super::ackguard::AckGuard,
    gso: Option<u16>,
}

/// Transmit token of the plain path.
#[doc(hidden)]
pub struct PlainTx<'a> {
    tx: &'a mut dyn DataLinkSender,
    buf: &'a mut Vec<u8>,
    stats: &'a mut LinkStats,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        match self {
            TxToken::Vnet(t) => {
                let slot = t.batch.slot(VNET_HDR_LEN + len);
                let (head, frame) = slot.split_at_mut(VNET_HDR_LEN);
                let result = f(frame);
                t.guard.sent(frame);
                let hdr = vnet::prepare_tx(frame, t.gso);
                // `head` is exactly VNET_HDR_LEN bytes long.
                let _ = hdr.write(head);
                t.batch.commit(hdr.is_gso());
                if t.batch.count == BATCH {
                    t.batch.flush(t.fd, t.stats);
                }
                result
            }
            TxToken::Plain(t) => {
                t.buf.resize(len, 0);
                let result = f(&mut t.buf[..len]);
                match t.tx.send_to(&t.buf[..len], None) {
                    Some(Ok(())) => t.stats.count_tx(len),
                    Some(Err(e)) => {
                        t.stats.tx_dropped += 1;
                        tracing::debug!(%e, "packet link: send failed, frame dropped");
                    }
                    None => t.stats.tx_dropped += 1,
                }
                result
            }
        }
    }

    fn set_meta(&mut self, meta: PacketMeta) {
        if let TxToken::Vnet(t) = self {
            t.gso = meta.segmentation_offload_size.map(|s| s.get());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::{Stack, StackConfig};
    use smoltcp::wire::{EthernetAddress, IpCidr, Ipv4Address};

    /// Two batched links joined by a Unix datagram socketpair: each datagram is one
    /// `[virtio-net header][frame]`, as on an AF_PACKET socket with `PACKET_VNET_HDR`.
    fn socketpair_links(frame_mtu: usize) -> (PacketLink, PacketLink, OwnedFd) {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a writable array of two ints, as socketpair(2) requires.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        for fd in fds {
            // Room for many 64 KiB datagrams in flight.
            let _ = set_int_opt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20);
            let _ = set_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20);
        }
        // A second descriptor on end A, to inject frames into B.
        // SAFETY: dup(2) of a descriptor we own; failure is -1.
        let inject = unsafe { libc::dup(fds[0]) };
        assert!(inject >= 0);
        let link = |fd: RawFd| PacketLink {
            name: format!("socketpair{fd}"),
            frame_mtu,
            rcvbuf_bytes: 0,
            // SAFETY: each descriptor was just created by socketpair(2)/dup(2) and is
            // handed to exactly one owner.
            path: Path::Vnet(Box::new(VnetPacketSocket::over_fd(unsafe {
                OwnedFd::from_raw_fd(fd)
            }))),
            rx_errors: 0,
            stats: LinkStats::default(),
        };
        // SAFETY: as above.
        let inject = unsafe { OwnedFd::from_raw_fd(inject) };
        (link(fds[0]), link(fds[1]), inject)
    }

    #[test]
    fn tcp_over_batched_links_sends_super_frames_and_refuses_corrupted_ones() {
        let (la, lb, inject) = socketpair_links(1514);
        let mk = |l: PacketLink, last: u8| {
            Stack::new(
                l,
                StackConfig {
                    mac: EthernetAddress([2, 0, 0, 0, 0, last]),
                    addr: IpCidr::new(Ipv4Address::new(10, 0, 0, last).into(), 24),
                    gateway: None,
                    random_seed: u64::from(last),
                },
            )
        };
        let mut a = mk(la, 1);
        let mut b = mk(lb, 2);
        let server = b.add_tcp_socket(1 << 20, 64 * 1024);
        b.tcp_mut(server).listen(5000).unwrap();
        let client = a.add_tcp_socket(64 * 1024, 1 << 20);
        a.tcp_connect(client, (Ipv4Address::new(10, 0, 0, 2), 5000), 49152)
            .unwrap();
        let total = 3 << 20;
        let data: Vec<u8> = (0..total).map(|i| (i * 31 + i / 4099) as u8).collect();
        let (mut sent, mut got) = (0, Vec::with_capacity(total));
        let mut buf = vec![0u8; 256 * 1024];
        let mut corrupted_sent = false;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while got.len() < total {
            assert!(
                std::time::Instant::now() < deadline,
                "stalled at {}",
                got.len()
            );
            a.poll();
            let c = a.tcp_mut(client);
            if c.may_send() && sent < total {
                sent += c.send_slice(&data[sent..]).unwrap();
            }
            a.poll();
            b.poll();
            let s = b.tcp_mut(server);
            while s.can_recv() {
                let n = s.recv_slice(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            if !corrupted_sent && got.len() > total / 2 {
                // A frame from "a wire" (no checksum flags) for the server's port, one
                // byte of its payload flipped: dropped in the link, counted.
                let mut frame = [0u8; VNET_HDR_LEN + 14 + 20 + 20 + 100];
                let f = &mut frame[VNET_HDR_LEN..];
                f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
                f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
                f[12..14].copy_from_slice(&[0x08, 0x00]);
                f[14] = 0x45;
                f[16..18].copy_from_slice(&140u16.to_be_bytes());
                f[22] = 64;
                f[23] = 6;
                f[26..30].copy_from_slice(&[10, 0, 0, 1]);
                f[30..34].copy_from_slice(&[10, 0, 0, 2]);
                let ipsum = !vnet::checksum_sum(&f[14..34]);
                f[24..26].copy_from_slice(&ipsum.to_be_bytes());
                f[34..36].copy_from_slice(&49152u16.to_be_bytes());
                f[36..38].copy_from_slice(&5000u16.to_be_bytes());
                f[46] = 0x50;
                f[47] = 0x18;
                let hdr = vnet::prepare_tx(f, None);
                vnet::complete_checksum(&hdr, f).unwrap();
                assert_eq!(vnet::verify_frame(f), Ok(vnet::RxCheck::Verified));
                f[100] ^= 0x40;
                // SAFETY: `frame` is a live, initialised buffer of the given length;
                // send(2) only reads it. `inject` is an open socket we own.
                let n = unsafe {
                    libc::send(inject.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0)
                };
                assert_eq!(n as usize, frame.len());
                corrupted_sent = true;
            }
        }
        assert!(got == data, "received data differs");
        let (sa, sb) = (a.link().stats(), b.link().stats());
        // Super-frames both ways: the client's data left in frames larger than the MTU.
        assert!(sa.tx_gso_frames > 0, "{sa:?}");
        assert!(sb.rx_gso_frames > 0, "{sb:?}");
        // Batches: fewer system calls than frames.
        assert!(sb.rx_syscalls < sb.rx_frames, "{sb:?}");
        // Every frame from the other stack was trusted on its flag; the injected one
        // was verified, found bad, and never reached smoltcp.
        assert_eq!(sb.rx_csum_bad, 1, "{sb:?}");
        assert_eq!(sb.rx_csum_verified, 0, "{sb:?}");
        assert_eq!(sa.rx_csum_bad, 0);
        assert_eq!(sa.tx_dropped + sb.tx_dropped, 0);
    }

    #[test]
    fn open_nonexistent_interface_is_error() {
        // The interface lookup comes before any socket: no privileges needed.
        let err = PacketLink::open("lk-no-such-if0").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let err = VnetPacketSocket::open("lk-no-such-if0", 1 << 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn interface_mtu_of_loopback_and_bad_names() {
        assert!(interface_mtu("lo").unwrap() >= 1500);
        assert_eq!(
            interface_mtu("name-longer-than-15").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            interface_mtu("lk-nosuch1").unwrap_err().raw_os_error(),
            Some(libc::ENODEV)
        );
    }

    #[test]
    #[ignore = "needs root (AF_PACKET): run by scripts/test.sh"]
    fn loopback_opens_with_virtio_net_headers() {
        let mut link = PacketLink::open("lo").expect("AF_PACKET on lo");
        assert_eq!(link.name(), "lo");
        assert!(link.rcvbuf_bytes() > 0);
        let off = link.offloads();
        assert!(off.vnet_hdr && off.gso && off.batched, "{off:?}");
        let caps = link.capabilities();
        // TCP checksums are the link's business; IPv4 header checksums are computed.
        assert!(!caps.checksum.tcp.rx() && !caps.checksum.tcp.tx());
        assert!(caps.checksum.ipv4.tx() && !caps.checksum.ipv4.rx());
        assert!(caps.segmentation.tcpv4.is_some());
        assert_eq!(caps.max_transmission_unit, link.mtu() + 14);
        // Must return (timeout or traffic), never hang or spin forever.
        link.wait(Some(Duration::from_millis(10))).unwrap();
        while link.receive(Instant::from_millis(0)).is_some() {}
    }

    #[test]
    #[ignore = "needs root (AF_PACKET): run by scripts/test.sh"]
    fn refused_virtio_net_headers_fall_back_to_the_plain_path() {
        let iface = find_interface("lo").unwrap();
        let mtu = interface_mtu("lo").unwrap() + 14;
        let refused = io::Error::new(io::ErrorKind::Unsupported, "PACKET_VNET_HDR refused");
        let link = PacketLink::choose(
            "lo",
            &iface,
            mtu,
            PacketOptions::default(),
            Some(Err(refused)),
        )
        .expect("plain path");
        assert_eq!(link.offloads(), Offloads::default());
        let caps = link.capabilities();
        assert!(caps.checksum.tcp.rx() && caps.checksum.tcp.tx());
        assert!(caps.checksum.ipv4.rx());
        assert!(caps.segmentation.tcpv4.is_none());
        // Asked not to try: the same plain path.
        let plain = PacketLink::open_with(
            "lo",
            PacketOptions {
                vnet_hdr: false,
                ..PacketOptions::default()
            },
        )
        .unwrap();
        assert_eq!(plain.offloads(), Offloads::default());
        // A permission error is not a refusal of the header: it is reported as such.
        // (So is any error other than the header's refusal.)
        let denied = io::Error::from_raw_os_error(libc::EPERM);
        let err = PacketLink::choose(
            "lo",
            &iface,
            mtu,
            PacketOptions::default(),
            Some(Err(denied)),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    }
}
