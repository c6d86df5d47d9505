//! A Linux TAP interface as a link, built on smoltcp's [`TunTapInterface`].

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::time::Duration;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium, TunTapInterface};
use smoltcp::time::Instant;

use super::{poll_readable, to_smoltcp_duration, Link, LinkStats};

/// Longest frame a TAP read can return that we keep untruncated (64 KiB IP + Ethernet header).
const MAX_FRAME: usize = 65535 + 14;

/// An Ethernet link over a Linux TAP interface (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI`).
///
/// smoltcp is one end of the TAP; the host kernel is the other, so you can reach the
/// stack from ordinary Linux programs once the interface is configured:
///
/// ```text
/// ip tuntap add name tap0 mode tap user $USER
/// ip link set tap0 up
/// ip addr add 192.168.69.100/24 dev tap0   # the kernel's side; give smoltcp e.g. .1
/// ```
///
/// **Privileges:** `/dev/net/tun` is mode 0600, so opening needs root (or
/// `CAP_NET_ADMIN`), unless the interface is persistent and owned by the current user
/// (`ip tuntap add ... user $USER`). If no interface of that name exists, the kernel
/// creates a non-persistent one, which disappears when the `TapLink` is dropped and
/// starts down and unconfigured.
///
/// Checksums are computed and verified normally: the peer is the real kernel stack.
///
/// The device setup and descriptor lifetime come from [`TunTapInterface`]; frames are
/// read and written directly on its descriptor into reused buffers, so I/O errors
/// (e.g. `EIO` while the interface is down) drop the frame and count it instead of
/// panicking, and no frame allocates. `TapLink` is not `Send` (the wrapped
/// `TunTapInterface` uses `Rc`): create it on the thread that polls it.
#[derive(Debug)]
pub struct TapLink {
    iface: TunTapInterface,
    name: String,
    frame_mtu: usize,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    rx_errors: u64,
    stats: LinkStats,
}

impl TapLink {
    /// Attaches to the TAP interface `name`, creating it if it does not exist.
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] if `name` is empty, contains a NUL byte
    /// or is longer than 15 bytes; with `PermissionDenied` without the needed
    /// privileges; and with the kernel's error if the name is invalid (e.g. contains `/`)
    /// or belongs to an interface that is not a TAP.
    pub fn open(name: &str) -> io::Result<Self> {
        // smoltcp copies the name into a fixed 16-byte ifreq and would panic on longer
        // names; the kernel needs a NUL terminator, so 15 bytes is the limit.
        if name.is_empty() || name.len() >= libc::IF_NAMESIZE || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface name {name:?} (1 to 15 bytes, no NUL)"),
            ));
        }
        let iface = TunTapInterface::new(name, Medium::Ethernet)?;
        let frame_mtu = iface.capabilities().max_transmission_unit;
        Ok(TapLink {
            iface,
            name: name.to_owned(),
            frame_mtu,
            rx_buf: vec![0; frame_mtu.max(MAX_FRAME)],
            tx_buf: Vec::with_capacity(frame_mtu),
            rx_errors: 0,
            stats: LinkStats::default(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface's IP MTU when it was opened (what `ip link` shows).
    pub fn mtu(&self) -> usize {
        self.frame_mtu - 14
    }

    /// Frame and byte counters. Frames the kernel refused on write are `tx_dropped`.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Reads that failed with an error other than "no frame ready" (e.g. `EIO`).
    pub fn rx_errors(&self) -> u64 {
        self.rx_errors
    }
}

impl AsRawFd for TapLink {
    fn as_raw_fd(&self) -> RawFd {
        self.iface.as_raw_fd()
    }
}

impl Device for TapLink {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let fd = self.iface.as_raw_fd();
        // SAFETY: `rx_buf` is a live, exclusively borrowed allocation of `rx_buf.len()`
        // initialised bytes, so the kernel may write up to that many bytes into it. `fd`
        // is owned by `self.iface`, which outlives this call; the descriptor is
        // non-blocking (smoltcp opens it with O_NONBLOCK).
        let n = unsafe { libc::read(fd, self.rx_buf.as_mut_ptr().cast(), self.rx_buf.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if !matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                self.rx_errors += 1;
                tracing::debug!(iface = %self.name, %err, "tap: read failed");
            }
            return None;
        }
        let n = n as usize;
        self.stats.count_rx(n);
        let rx = RxToken {
            frame: &self.rx_buf[..n],
        };
        let tx = TxToken {
            fd,
            buf: &mut self.tx_buf,
            stats: &mut self.stats,
        };
        Some((rx, tx))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken {
            fd: self.iface.as_raw_fd(),
            buf: &mut self.tx_buf,
            stats: &mut self.stats,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        super::kernel_peer_capabilities(self.frame_mtu)
    }
}

impl Link for TapLink {
    /// Waits for the TAP descriptor to become readable, with [`smoltcp::phy::wait`].
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let fd = self.iface.as_raw_fd();
        let res = if fd < libc::FD_SETSIZE as RawFd {
            // smoltcp's select(2) timeout drops sub-millisecond remainders; round up to
            // whole milliseconds so a short timer sleeps instead of spinning.
            let timeout = timeout.map(|t| {
                Duration::from_millis(t.as_micros().div_ceil(1000).min(u64::MAX as u128) as u64)
            });
            phy::wait(fd, timeout.map(to_smoltcp_duration))
        } else {
            // select(2) cannot watch descriptors >= FD_SETSIZE; poll(2) can.
            poll_readable(fd, timeout).map(|_| ())
        };
        match res {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            other => other,
        }
    }
}

/// Receive token of a [`TapLink`]: borrows the frame from the link's buffer.
pub use super::FrameRxToken as RxToken;

/// Transmit token of a [`TapLink`].
#[doc(hidden)]
#[derive(Debug)]
pub struct TxToken<'a> {
    fd: RawFd,
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
        // SAFETY: `buf[..len]` is initialised and borrowed for the whole call; write(2)
        // only reads from it. `fd` belongs to the `TunTapInterface` the token's link
        // owns, and the token's borrow of that link keeps it open.
        let n = unsafe { libc::write(self.fd, self.buf.as_ptr().cast(), len) };
        if n < 0 || n as usize != len {
            self.stats.tx_dropped += 1;
            if n < 0 {
                let err = io::Error::last_os_error();
                tracing::debug!(%err, "tap: write failed, frame dropped");
            }
        } else {
            self.stats.count_tx(len);
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
    fn bad_names_are_errors_not_panics() {
        for name in ["", "name-longer-than-15", "a\0b"] {
            let err = TapLink::open(name).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }

    #[test]
    fn open_invalid_interface_is_error() {
        if !is_root() {
            println!("skipped: needs root");
            return;
        }
        // TUNSETIFF creates missing TAPs, so "nonexistent" must mean a name the kernel
        // rejects: '/' is never valid in an interface name. `lo` exists but is no TAP.
        for name in ["no/such-tap", "lo"] {
            match TapLink::open(name) {
                Ok(_) => panic!("opening {name:?} as a TAP should fail"),
                Err(e) => println!("{name:?}: {e}"),
            }
        }
    }

    #[test]
    fn tap_roundtrip_when_possible() {
        if !is_root() {
            println!("skipped: needs root");
            return;
        }
        let name = format!("ndtap{}", std::process::id() % 100_000);
        let mut link = match TapLink::open(&name) {
            Ok(l) => l,
            Err(e) => {
                println!("skipped: cannot create a TAP here: {e}");
                return;
            }
        };
        assert_eq!(link.name(), name);
        let caps = link.capabilities();
        assert_eq!(caps.max_transmission_unit, link.mtu() + 14);
        assert!(caps.checksum.tcp.rx() && caps.checksum.tcp.tx());
        // Idle (and down): wait returns after the timeout, no frame, no panic.
        link.wait(Some(Duration::from_millis(10))).unwrap();
        assert!(link.receive(Instant::from_millis(0)).is_none());
        // Writing while the interface is down must not panic.
        use smoltcp::phy::TxToken as _;
        link.transmit(Instant::from_millis(0))
            .unwrap()
            .consume(60, |b| b.fill(0xff));
        let s = link.stats();
        assert_eq!(s.tx_frames + s.tx_dropped, 1);
    }
}
