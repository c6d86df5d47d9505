//! [`VnetPacketSocket`]: the `AF_PACKET` socket with virtio-net headers behind the fast
//! path of [`PacketLink`](super::PacketLink): opening and binding it, reading the
//! kernel's drop counter, waiting on it, and handing its batches to smoltcp as tokens.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::io::RawFd;
use std::time::Duration;

use smoltcp::phy::PacketMeta;

use super::super::ackguard::AckGuard;
use super::super::vnet::{self, VnetHeader, VNET_HDR_LEN};
use super::super::{accept_vnet_frame, LinkStats};
use super::batch::{RxBatch, TxBatch, BATCH};
use super::sys::{
    configure_socket, find_interface, open_packet_socket, set_int_opt, wait_readable,
    PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC, PACKET_QDISC_BYPASS, PACKET_STATISTICS,
    PACKET_VNET_HDR,
};
use super::{RxToken, TxToken};

/// `struct packet_mreq` from `<linux/if_packet.h>`.
#[repr(C)]
struct PacketMreq {
    mr_ifindex: libc::c_int,
    mr_type: libc::c_ushort,
    mr_alen: libc::c_ushort,
    mr_address: [u8; 8],
}

/// An `AF_PACKET` socket with virtio-net headers, bound to one interface in promiscuous
/// mode, moving frames in batches: the fast path of [`PacketLink`](super::PacketLink),
/// also usable on its own (e.g. by a program that forwards frames between two
/// interfaces).
///
/// Every buffer it receives or sends is `[virtio-net header][Ethernet frame]`.
/// [`recv`](Self::recv) hands out received buffers one at a time from a batch filled by
/// one `recvmmsg`; [`send`](Self::send) queues a copy and [`flush`](Self::flush) sends
/// the queue with `sendmmsg` (it flushes by itself when the queue is full).
pub struct VnetPacketSocket {
    fd: OwnedFd,
    pub(super) rcvbuf_bytes: usize,
    rx: RxBatch,
    tx: TxBatch,
    pub(super) rx_errors: u64,
    stats: LinkStats,
    /// Flushes since the kernel's drop counter was last read.
    flushes: u32,
    guard: AckGuard,
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

    pub(super) fn open_index(name: &str, ifindex: u32, rcvbuf_bytes: usize) -> io::Result<Self> {
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
    pub(super) fn over_fd(fd: OwnedFd) -> Self {
        VnetPacketSocket::with_fd(fd, 0, false)
    }

    /// The socket's state around an open descriptor: empty batches, zero counters.
    fn with_fd(fd: OwnedFd, rcvbuf_bytes: usize, qdisc_bypass: bool) -> Self {
        VnetPacketSocket {
            fd,
            rcvbuf_bytes,
            rx: RxBatch::new(),
            tx: TxBatch::new(qdisc_bypass),
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

    /// The next received frame that passes the checksum rules, as smoltcp tokens
    /// (refilling the batch as needed); `None` if no frame is ready.
    ///
    /// Before each `recvmmsg`, the frames smoltcp queued are sent.
    pub(super) fn receive_token(&mut self, frame_mtu: usize) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let fd = self.fd.as_raw_fd();
        let i = loop {
            if self.rx.next == self.rx.count {
                // Before the next system call, send what smoltcp queued (replies
                // made during this drain, or the last poll's frames if nobody
                // called `flush`).
                self.tx.flush(fd, &mut self.stats);
                if !self.rx.refill(fd, &mut self.stats, &mut self.rx_errors) {
                    return None;
                }
            }
            let i = self.rx.next;
            self.rx.next += 1;
            let buf = &mut self.rx.bufs[i][..self.rx.lens[i]];
            if accept_vnet_frame(buf, frame_mtu, &mut self.stats, &mut self.guard) {
                break i;
            }
        };
        let rx = RxToken {
            frame: &self.rx.bufs[i][VNET_HDR_LEN..self.rx.lens[i]],
        };
        let tx = TxToken::Vnet(VnetTx {
            batch: &mut self.tx,
            fd,
            stats: &mut self.stats,
            guard: &mut self.guard,
            gso: None,
        });
        Some((rx, tx))
    }

    /// A transmit token into the send queue (sent first if full).
    pub(super) fn transmit_token(&mut self) -> TxToken<'_> {
        let fd = self.fd.as_raw_fd();
        if self.tx.count == BATCH {
            self.tx.flush(fd, &mut self.stats);
        }
        TxToken::Vnet(VnetTx {
            batch: &mut self.tx,
            fd,
            stats: &mut self.stats,
            guard: &mut self.guard,
            gso: None,
        })
    }
}

/// Transmit token of the batched path: the frame goes into the send queue.
#[doc(hidden)]
pub struct VnetTx<'a> {
    batch: &'a mut TxBatch,
    fd: RawFd,
    stats: &'a mut LinkStats,
    guard: &'a mut AckGuard,
    gso: Option<u16>,
}

impl VnetTx<'_> {
    /// Builds the frame in the next queue slot behind its virtio-net header; sends the
    /// queue if it is full.
    pub(super) fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let slot = self.batch.slot(VNET_HDR_LEN + len);
        let (head, frame) = slot.split_at_mut(VNET_HDR_LEN);
        let result = f(frame);
        self.guard.sent(frame);
        let hdr = vnet::prepare_tx(frame, self.gso);
        // `head` is exactly VNET_HDR_LEN bytes long.
        let _ = hdr.write(head);
        self.batch.commit(hdr.is_gso());
        if self.batch.count == BATCH {
            self.batch.flush(self.fd, self.stats);
        }
        result
    }

    /// Takes smoltcp's segmentation size: the frame is sent as a GSO super-frame.
    pub(super) fn set_meta(&mut self, meta: PacketMeta) {
        self.gso = meta.segmentation_offload_size.map(|s| s.get());
    }
}
