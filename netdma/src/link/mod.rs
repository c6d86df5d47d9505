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
//! | [`PacketLink`] | an `AF_PACKET` raw socket bound to an existing interface (via `pnet_datalink`) | attaching the stack to a veth pair, bridge port or real NIC; needs root or `CAP_NET_RAW` |
//!
//! [`TapLink`] and [`PacketLink`] talk to a real kernel peer, so they compute and verify
//! every checksum. [`MemoryLink`] skips checksums for speed.
//!
//! All links count frames and bytes in a [`LinkStats`].

use std::io;
use std::os::unix::io::RawFd;
use std::time::Duration;

mod memory;
mod packet;
mod tap;

pub use memory::{
    memory_pair, memory_pair_lossy, memory_pair_with_capacity, MemoryLink, QueueFull,
    DEFAULT_QUEUE_FRAMES,
};
pub use packet::{PacketLink, DEFAULT_RCVBUF_BYTES};
pub use tap::TapLink;

/// A smoltcp device that can also block until a frame may be ready.
pub trait Link: smoltcp::phy::Device {
    /// Blocks until a received frame may be ready or `timeout` passes (`None`: no timeout).
    ///
    /// Returns immediately if a frame is already queued. Spurious early returns are
    /// allowed (the caller polls the interface and comes back), but an idle link never
    /// busy-spins: waiting costs no CPU.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()>;
}

/// Frame and byte counters of one link end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

/// Converts a std duration to a smoltcp one, saturating, rounding up to whole microseconds.
pub(crate) fn to_smoltcp_duration(d: Duration) -> smoltcp::time::Duration {
    let micros = d.as_nanos().div_ceil(1000);
    smoltcp::time::Duration::from_micros(micros.min(u64::MAX as u128) as u64)
}

/// Capabilities of a link whose peer is the Linux kernel: Ethernet with the given frame
/// MTU, and smoltcp's default checksum handling (compute and verify everything).
pub(crate) fn kernel_peer_capabilities(frame_mtu: usize) -> smoltcp::phy::DeviceCapabilities {
    let mut caps = smoltcp::phy::DeviceCapabilities::default();
    caps.medium = smoltcp::phy::Medium::Ethernet;
    caps.max_transmission_unit = frame_mtu;
    caps
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

    #[test]
    fn duration_conversion_rounds_up() {
        assert_eq!(
            to_smoltcp_duration(Duration::from_nanos(1)).total_micros(),
            1
        );
        assert_eq!(
            to_smoltcp_duration(Duration::from_millis(3)).total_micros(),
            3000
        );
    }
}
