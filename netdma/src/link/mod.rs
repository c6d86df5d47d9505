//! Link devices: where the smoltcp stack sends and receives its Ethernet frames.
//!
//! Every link is a [`smoltcp::phy::Device`] with [`Medium::Ethernet`](smoltcp::phy::Medium)
//! plus the [`Link::wait`] method, which blocks until a frame may be ready (or a timeout
//! passes) without spinning, so an idle [`Stack`](crate::stack::Stack) costs no CPU.
//!
//! Three links are provided:
//!
//! | link | what it is | when to use it |
//! | --- | --- | --- |
//! | [`MemoryLink`] ([`memory_pair`]) | two ends of an in-memory Ethernet cable, frames handed over through bounded queues | tests, benchmarks and examples that run both TCP peers (two smoltcp stacks) in one process; no privileges, no kernel involved, deterministic; checksums are not computed or verified (both ends are smoltcp) |
//! | [`TapLink`] | a Linux TAP interface (`/dev/net/tun`) | talking to the host kernel's TCP stack (e.g. `nc`, `iperf`) through a virtual interface you configure with `ip`; needs root or `CAP_NET_ADMIN` |
//! | [`PacketLink`] | an `AF_PACKET` raw socket bound to an existing interface (virtio-net headers and batches on `libc`; `pnet_datalink` for the interface lookup and the plain fallback) | attaching the stack to a veth pair, bridge port or real NIC; needs root or `CAP_NET_RAW` |
//!
//! [`TapLink`] and [`PacketLink`] talk to a real kernel peer. Where the kernel offers
//! virtio-net headers (`PACKET_VNET_HDR`, `IFF_VNET_HDR`), they play the part of a NIC
//! with offloads for smoltcp:
//!
//! - **Big frames both ways.** The kernel hands over whole TSO/GRO super-frames (up to
//!   64 KiB) and takes ours: smoltcp sends TCP segments of up to 64 KiB (its
//!   `segmentation-offload`), and the kernel cuts them only if they leave the host.
//! - **Checksums.** A frame flagged `NEEDS_CSUM` or `DATA_VALID` never crossed a wire
//!   and is accepted as the kernel accepts it; any other TCP/IPv4 frame is verified in
//!   the link and dropped and counted ([`LinkStats::rx_csum_bad`]) if bad, so a frame
//!   corrupted on a wire never reaches a socket. On send, TCP frames carry the
//!   pseudo-header sum and `NEEDS_CSUM`: nobody sums the payload for a local peer.
//! - **Batches.** [`PacketLink`] receives and sends many frames per system call
//!   (`recvmmsg`/`sendmmsg`); transmits are collected during a poll and flushed together
//!   ([`Link::flush`], which [`Stack::poll`](crate::stack::Stack::poll) calls).
//! - **Detected, not assumed.** A kernel or interface that refuses the header gets the
//!   plain path (one frame per system call, every checksum computed and verified by
//!   smoltcp), and one log line says so. [`LinkStats`] and `offloads()` tell which
//!   path a link took.
//!
//! The header format and the checksum work are in [`vnet`]. [`MemoryLink`] skips
//! checksums for speed.
//!
//! All links count frames and bytes in a [`LinkStats`].

use std::io;
use std::os::unix::io::RawFd;
use std::time::Duration;

mod ackguard;
mod ethtool;
mod memory;
mod packet;
mod tap;
pub mod vnet;

pub use ethtool::set_tx_checksum_offload;
pub use memory::{
    memory_pair, memory_pair_lossy, memory_pair_with_capacity, MemoryLink, QueueFull,
    DEFAULT_QUEUE_FRAMES,
};
pub use packet::{PacketLink, PacketOptions, VnetPacketSocket, DEFAULT_RCVBUF_BYTES};
pub use tap::{TapLink, TapOptions};

/// A smoltcp device that can also block until a frame may be ready.
pub trait Link: smoltcp::phy::Device {
    /// Blocks until a received frame may be ready or `timeout` passes (`None`: no timeout).
    ///
    /// Returns immediately if a frame is already queued. Spurious early returns are
    /// allowed (the caller polls the interface and comes back), but an idle link never
    /// busy-spins: waiting costs no CPU.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()>;

    /// Hands every frame the link has collected for transmission to the kernel.
    ///
    /// Batching links keep the frames smoltcp transmits during one poll and send them
    /// together here; [`Stack::poll`](crate::stack::Stack::poll) calls it after each
    /// poll of the interface. Links that send each frame at once do nothing.
    fn flush(&mut self) {}

    /// The link's frame, byte and offload counters.
    fn stats(&self) -> LinkStats;

    /// The offloads the link negotiated (none for links that have no kernel peer).
    fn offloads(&self) -> Offloads {
        Offloads::default()
    }
}

/// Which offloads a kernel-backed link negotiated with the kernel at open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Offloads {
    /// Frames carry a virtio-net header (checksum flags, GSO).
    pub vnet_hdr: bool,
    /// Frames of up to 64 KiB are sent and received (TSO/GRO super-frames).
    pub gso: bool,
    /// Several frames per system call (`recvmmsg`/`sendmmsg`).
    pub batched: bool,
    /// Sends skip the interface's queueing discipline (`PACKET_QDISC_BYPASS`).
    pub qdisc_bypass: bool,
}

/// Frame and byte counters of one link end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkStats {
    /// Frames handed to the link for transmission and accepted by it.
    pub tx_frames: u64,
    /// Bytes of the frames counted in `tx_frames` (Ethernet header included).
    pub tx_bytes: u64,
    /// Frames received from the link.
    pub rx_frames: u64,
    /// Bytes of the frames counted in `rx_frames` (Ethernet header included).
    pub rx_bytes: u64,
    /// Frames the link dropped on transmit (queue full, or the kernel refused them).
    pub tx_dropped: u64,
    /// Received frames longer than the interface's MTU (TSO/GRO super-frames).
    pub rx_gso_frames: u64,
    /// Sent frames the kernel is asked to cut into MTU-sized segments (GSO).
    pub tx_gso_frames: u64,
    /// Received frames accepted on the header's word (`NEEDS_CSUM` or `DATA_VALID`).
    pub rx_csum_trusted: u64,
    /// Received TCP/IPv4 frames without checksum flags whose checksums the link verified.
    pub rx_csum_verified: u64,
    /// Received frames dropped because a checksum was wrong or the headers malformed
    /// (corrupted on a wire): they never reach smoltcp.
    pub rx_csum_bad: u64,
    /// Received frames dropped for other reasons (truncated, unreadable header).
    pub rx_dropped: u64,
    /// Received segments that a later one of their connection overtook, given the
    /// newer ACK and window before smoltcp saw them: a segment (data or FIN) whose ACK
    /// number was older than one the peer had already sent (smoltcp would drop it, data
    /// included), or one whose window was smaller for the same ACK number (smoltcp
    /// would take that window, and a stale zero would stall the connection).
    pub rx_acks_reordered: u64,
    /// Zero-window ACKs from the peer given to smoltcp one byte short, so that the ACK
    /// reopening the window counts as new (smoltcp drops a window update that
    /// acknowledges nothing new once the connection is in LAST-ACK).
    pub rx_peer_zero_windows: u64,
    /// Received segments (data, FIN or window probes) that brought a new ACK while
    /// smoltcp's receive window was closed, given to smoltcp as the pure ACK it accepts
    /// then (smoltcp would drop them, ACK included, and the connection could stall).
    pub rx_zero_window_acks: u64,
    /// Received data segments of one connection that arrived swapped with the one
    /// before them within a receive batch, and were put back in order.
    pub rx_reordered: u64,
    /// Frames the kernel dropped before the link could read them (its socket queue was
    /// full; `PACKET_STATISTICS`), as of the last time the link asked.
    pub rx_kernel_drops: u64,
    /// System calls that received frames (one per batch).
    pub rx_syscalls: u64,
    /// Receive system calls that found no frame ready (one per poll that drained the
    /// link; a memory-mapped ring would need none).
    pub rx_empty_syscalls: u64,
    /// System calls that sent frames (one per batch).
    pub tx_syscalls: u64,
}

impl LinkStats {
    pub(crate) fn count_tx(&mut self, len: usize) {
        self.tx_frames += 1;
        self.tx_bytes += len as u64;
    }

    pub(crate) fn count_rx(&mut self, len: usize) {
        self.rx_frames += 1;
        self.rx_bytes += len as u64;
    }
}

/// Blocks until `fd` is readable or `timeout` passes, with poll(2); returns `revents`
/// (0 on timeout).
///
/// `EINTR` counts as a (spurious) wake-up, not an error.
pub(crate) fn poll_readable(fd: RawFd, timeout: Option<Duration>) -> io::Result<libc::c_short> {
    let timeout_ms: libc::c_int = match timeout {
        None => -1,
        // Round up so that a sub-millisecond timeout sleeps instead of spinning.
        Some(d) => {
            let ms = d.as_micros().div_ceil(1000);
            ms.min(libc::c_int::MAX as u128) as libc::c_int
        }
    };
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid, initialised `pollfd` that lives on this stack frame for
    // the whole call, and we pass a count of exactly 1. poll(2) only writes `revents`.
    // An invalid `fd` is reported by the kernel (POLLNVAL), never undefined behaviour.
    let res = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if res == -1 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    if pfd.revents & libc::POLLNVAL != 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(pfd.revents)
}

/// Capabilities of a link whose peer is the Linux kernel: Ethernet with the given frame
/// MTU, and smoltcp's default checksum handling (compute and verify everything).
pub(crate) fn kernel_peer_capabilities(frame_mtu: usize) -> smoltcp::phy::DeviceCapabilities {
    let mut caps = smoltcp::phy::DeviceCapabilities::default();
    caps.medium = smoltcp::phy::Medium::Ethernet;
    caps.max_transmission_unit = frame_mtu;
    caps
}

/// The largest frame a virtio-net link receives: a 64 KiB IP packet (the most an IPv4
/// total length can say) plus the Ethernet header.
pub(crate) const GSO_MAX_FRAME: usize = 65535 + 14;

/// The largest frame a virtio-net link sends: below the 64 KiB an interface takes as a
/// super-frame (`gso_max_size`), with room for the kernel's own header allowance as its
/// TCP leaves it (its own super-frames stay below 65,280 bytes).
pub(crate) const GSO_TX_FRAME: usize = 65536 - 320;

/// Capabilities of a kernel-peer link with virtio-net headers: TCP checksums are left
/// to the link (it verifies unflagged frames itself and sends `NEEDS_CSUM`), the IPv4
/// header checksum is computed by smoltcp but verified by the link, and with `gso`
/// smoltcp may send TCP segments of up to [`GSO_TX_FRAME`] for the kernel to cut.
pub(crate) fn vnet_capabilities(frame_mtu: usize, gso: bool) -> smoltcp::phy::DeviceCapabilities {
    use smoltcp::phy::Checksum;
    let mut caps = kernel_peer_capabilities(frame_mtu);
    caps.checksum.tcp = Checksum::None;
    caps.checksum.ipv4 = Checksum::Tx;
    if gso {
        caps.segmentation.tcpv4 = std::num::NonZeroUsize::new(GSO_TX_FRAME);
    }
    caps
}

/// What a virtio-net link does with one received buffer (`[header][frame]`): counts
/// it, keeps its ACK in order ([`ackguard`]) and says whether the frame
/// (`buf[VNET_HDR_LEN..]`) goes up to smoltcp.
pub(crate) fn accept_vnet_frame(
    buf: &mut [u8],
    frame_mtu: usize,
    stats: &mut LinkStats,
    guard: &mut ackguard::AckGuard,
) -> bool {
    let hdr = match vnet::VnetHeader::parse(buf) {
        Ok(h) => h,
        Err(_) => {
            stats.rx_dropped += 1;
            return false;
        }
    };
    let frame = &buf[vnet::VNET_HDR_LEN..];
    match vnet::check_rx(&hdr, frame) {
        Ok(vnet::RxCheck::Trusted) => stats.rx_csum_trusted += 1,
        Ok(vnet::RxCheck::Verified) => stats.rx_csum_verified += 1,
        Ok(vnet::RxCheck::NotTcp) => {}
        Err(e) => {
            stats.rx_csum_bad += 1;
            tracing::trace!(%e, len = frame.len(), "link: frame dropped");
            return false;
        }
    }
    if frame.len() > frame_mtu {
        stats.rx_gso_frames += 1;
    }
    stats.count_rx(frame.len());
    let before = (
        guard.rewritten,
        guard.zero_window_acks,
        guard.peer_zero_windows,
    );
    guard.check(&mut buf[vnet::VNET_HDR_LEN..]);
    stats.rx_acks_reordered += guard.rewritten - before.0;
    stats.rx_zero_window_acks += guard.zero_window_acks - before.1;
    stats.rx_peer_zero_windows += guard.peer_zero_windows - before.2;
    true
}

/// Receive token of the kernel-backed links: lends smoltcp a frame that sits in the
/// link's own receive buffer.
#[doc(hidden)]
#[derive(Debug)]
pub struct FrameRxToken<'a> {
    pub(crate) frame: &'a [u8],
}

impl smoltcp::phy::RxToken for FrameRxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_readable_times_out_on_idle_pipe() {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a writable array of two c_ints, as pipe(2) requires.
        let r = unsafe { libc::pipe(fds.as_mut_ptr()) };
        assert_eq!(r, 0);
        assert_eq!(
            poll_readable(fds[0], Some(Duration::from_millis(5))).unwrap(),
            0
        );
        assert_eq!(
            poll_readable(fds[0], Some(Duration::from_micros(1))).unwrap(),
            0
        );
        // SAFETY: writes one byte from a live local to the pipe's write end.
        let w = unsafe { libc::write(fds[1], [1u8].as_ptr().cast(), 1) };
        assert_eq!(w, 1);
        let rev = poll_readable(fds[0], None).unwrap();
        assert_ne!(rev & libc::POLLIN, 0);
        // SAFETY: both descriptors were just created by pipe(2) and are closed once.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
