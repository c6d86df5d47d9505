//! An existing network interface as a link, through an `AF_PACKET` socket (pnet_datalink).

use std::io;
use std::os::unix::io::RawFd;
use std::time::Duration;

use pnet_datalink::{Channel, DataLinkReceiver, DataLinkSender, NetworkInterface};
use smoltcp::phy::{self, Device, DeviceCapabilities};
use smoltcp::time::Instant;

use super::{poll_readable, Link, LinkStats};

/// Socket receive (and send) buffer [`PacketLink::open`] asks the kernel for: 8 MiB.
///
/// With the default (`net.core.rmem_default`, about 208 KiB) a 1 MiB TCP window
/// overflows the socket queue and collapses from drops.
pub const DEFAULT_RCVBUF_BYTES: usize = 8 << 20;

/// Receive buffer size: the largest frame an interface with GSO/GRO off can hand us
/// (64 KiB IP packet plus Ethernet header), so nothing is truncated.
const MAX_FRAME: usize = 65535 + 14;

/// How long a send may wait for room in the socket's send buffer before the frame is
/// dropped (counted in `tx_dropped`).
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
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// An Ethernet link on an existing interface (veth end, bridge port, NIC), through an
/// `AF_PACKET`/`SOCK_RAW` socket managed by [`pnet_datalink`].
///
/// smoltcp uses its own MAC address on the wire, so the interface is put in
/// promiscuous mode. Give smoltcp an IP address the kernel does not use on that
/// interface; frames for smoltcp's MAC reach the kernel too, which ignores them.
///
/// **Privileges:** raw packet sockets need root (or `CAP_NET_RAW`).
///
/// **Socket buffers:** [`open`](Self::open) raises the receive and send buffers to
/// [`DEFAULT_RCVBUF_BYTES`] with `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` (root, ignores
/// `net.core.rmem_max`), falling back to `SO_RCVBUF`/`SO_SNDBUF` (capped by
/// `net.core.rmem_max`/`wmem_max`). With the ~208 KiB default, 1 MiB windows collapse
/// from drops. [`rcvbuf_bytes`](Self::rcvbuf_bytes) reports what the kernel granted.
///
/// **veth peers:** the Linux end of a veth pair must have transmit offloads disabled:
///
/// ```text
/// ethtool -K <peer> tx off
/// ```
///
/// Otherwise the kernel leaves TCP checksums unfilled (`CHECKSUM_PARTIAL`, to be done by
/// "hardware" that never does it), smoltcp — which verifies every checksum on this link —
/// drops every segment, and connections never get past the SYN. `tx off` also turns off
/// TSO/GSO, so no frame larger than the MTU arrives.
///
/// Our own transmitted frames are not looped back to us (`PACKET_IGNORE_OUTGOING`,
/// Linux >= 4.20; on older kernels they are, and smoltcp ignores them).
///
/// [`wait`](Link::wait) sleeps in poll(2) on the socket.
pub struct PacketLink {
    name: String,
    fd: RawFd,
    tx: Box<dyn DataLinkSender>,
    rx: Box<dyn DataLinkReceiver>,
    frame_mtu: usize,
    rcvbuf_bytes: usize,
    tx_buf: Vec<u8>,
    rx_errors: u64,
    stats: LinkStats,
}

impl std::fmt::Debug for PacketLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketLink")
            .field("name", &self.name)
            .field("fd", &self.fd)
            .field("frame_mtu", &self.frame_mtu)
            .field("rcvbuf_bytes", &self.rcvbuf_bytes)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl PacketLink {
    /// Opens an `AF_PACKET` link on the interface called `iface_name`, with
    /// [`DEFAULT_RCVBUF_BYTES`] of socket buffer.
    ///
    /// Fails with [`io::ErrorKind::NotFound`] if there is no such interface, and with
    /// the kernel's error (typically `PermissionDenied`) if the socket cannot be opened.
    pub fn open(iface_name: &str) -> io::Result<Self> {
        Self::open_with_rcvbuf(iface_name, DEFAULT_RCVBUF_BYTES)
    }

    /// Like [`open`](Self::open), asking for `rcvbuf_bytes` of socket receive (and
    /// send) buffer.
    pub fn open_with_rcvbuf(iface_name: &str, rcvbuf_bytes: usize) -> io::Result<Self> {
        let iface = find_interface(iface_name)?;
        let ip_mtu = interface_mtu(iface_name).unwrap_or(1500);
        let frame_mtu = ip_mtu + 14;

        let fd = open_packet_socket()?;
        let rcvbuf = match configure_socket(fd, rcvbuf_bytes) {
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
        let (tx, rx) = match pnet_datalink::channel(&iface, config)? {
            Channel::Ethernet(tx, rx) => (tx, rx),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "pnet_datalink returned a non-Ethernet channel",
                ))
            }
        };
        Ok(PacketLink {
            name: iface_name.to_owned(),
            fd,
            tx,
            rx,
            frame_mtu,
            rcvbuf_bytes: rcvbuf,
            tx_buf: Vec::with_capacity(frame_mtu),
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

    /// Frame and byte counters. Frames the kernel refused on send are `tx_dropped`.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Receive errors other than "no frame ready" (e.g. `ENETDOWN`).
    pub fn rx_errors(&self) -> u64 {
        self.rx_errors
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

fn interface_mtu(name: &str) -> Option<usize> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu")).ok()?;
    s.trim().parse().ok()
}

fn open_packet_socket() -> io::Result<RawFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
    // SAFETY: socket(2) takes no pointers; a failure is reported as -1 with errno.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn close_fd(fd: RawFd) {
    // SAFETY: `fd` was returned by socket(2) in this module, has not been handed to
    // anyone else yet, and is closed exactly once here.
    unsafe {
        libc::close(fd);
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
        let frame = match self.rx.next() {
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
        let tx = TxToken {
            tx: &mut *self.tx,
            buf: &mut self.tx_buf,
            stats: &mut self.stats,
        };
        Some((rx, tx))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken {
            tx: &mut *self.tx,
            buf: &mut self.tx_buf,
            stats: &mut self.stats,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        super::kernel_peer_capabilities(self.frame_mtu)
    }
}

impl Link for PacketLink {
    /// Sleeps in poll(2) until the socket is readable or `timeout` passes.
    ///
    /// A pending socket error (e.g. `ENETDOWN` when the interface goes down) is
    /// cleared and logged, so that it cannot make poll(2) return at once forever.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let revents = poll_readable(self.fd, timeout)?;
        if revents & libc::POLLERR != 0 {
            // Reading SO_ERROR clears the pending error.
            match get_int_opt(self.fd, libc::SOL_SOCKET, libc::SO_ERROR) {
                Ok(0) => {}
                Ok(errno) => {
                    self.rx_errors += 1;
                    let err = io::Error::from_raw_os_error(errno);
                    tracing::debug!(iface = %self.name, %err, "packet link: socket error");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Receive token of a [`PacketLink`]: borrows the frame from the link's buffer.
pub use super::FrameRxToken as RxToken;

/// Transmit token of a [`PacketLink`].
#[doc(hidden)]
pub struct TxToken<'a> {
    tx: &'a mut dyn DataLinkSender,
    buf: &'a mut Vec<u8>,
    stats: &'a mut LinkStats,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        self.buf.resize(len, 0);
        let result = f(&mut self.buf[..len]);
        match self.tx.send_to(&self.buf[..len], None) {
            Some(Ok(())) => self.stats.count_tx(len),
            Some(Err(e)) => {
                self.stats.tx_dropped += 1;
                tracing::debug!(%e, "packet link: send failed, frame dropped");
            }
            None => self.stats.tx_dropped += 1,
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn open_nonexistent_interface_is_error() {
        if !is_root() {
            println!("skipped: needs root");
            return;
        }
        let err = PacketLink::open("nd-no-such-if0").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn open_loopback_when_root() {
        if !is_root() {
            println!("skipped: needs root");
            return;
        }
        let mut link = match PacketLink::open("lo") {
            Ok(l) => l,
            Err(e) => {
                println!("skipped: cannot open AF_PACKET on lo here: {e}");
                return;
            }
        };
        assert_eq!(link.name(), "lo");
        assert!(link.rcvbuf_bytes() > 0);
        let caps = link.capabilities();
        assert!(caps.checksum.tcp.rx() && caps.checksum.ipv4.rx());
        assert_eq!(caps.max_transmission_unit, link.mtu() + 14);
        // Must return (timeout or traffic), never hang or spin forever.
        link.wait(Some(Duration::from_millis(10))).unwrap();
        // Drain whatever is there without blocking.
        while link.receive(Instant::from_millis(0)).is_some() {}
    }
}
