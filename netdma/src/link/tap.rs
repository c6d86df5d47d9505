//! A Linux TAP interface as a link, with virtio-net headers when the kernel takes them.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::io::RawFd;
use std::time::Duration;

use smoltcp::phy::{self, Device, DeviceCapabilities, PacketMeta};
use smoltcp::time::Instant;

use super::packet::{ifreq_for, interface_mtu};
use super::vnet::{self, VNET_HDR_LEN};
use super::{poll_readable, Link, LinkStats, Offloads, GSO_MAX_FRAME};

/// Reads one poll may make before the link lets smoltcp transmit (a TAP gives one frame
/// per read).
const MAX_READS_PER_POLL: u32 = 256;

/// How [`TapLink::open_with`] sets up the TAP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TapOptions {
    /// Try virtio-net headers with checksum and TSO offloads (default `true`); `false`
    /// takes the plain path at once.
    pub vnet_hdr: bool,
}

impl Default for TapOptions {
    fn default() -> Self {
        TapOptions { vnet_hdr: true }
    }
}

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
/// **Offloads:** [`open`](Self::open) asks for virtio-net headers (`IFF_VNET_HDR`,
/// `TUNSETVNETHDRSZ`) and tells the kernel it may hand over partial checksums and TSO
/// super-frames (`TUNSETOFFLOAD` with `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`). Frames
/// then move up to 64 KiB at a time both ways, with the same checksum rules as
/// [`PacketLink`](super::PacketLink): flagged frames are accepted, unflagged TCP frames
/// are verified by the link and dropped if bad, sent TCP frames carry `NEEDS_CSUM`. A
/// kernel that refuses gets the plain path (smoltcp computes and verifies every
/// checksum, frames are MTU-sized), logged once; [`offloads`](Self::offloads) tells.
///
/// **Privileges:** `/dev/net/tun` is mode 0600, so opening needs root (or
/// `CAP_NET_ADMIN`), unless the interface is persistent and owned by the current user
/// (`ip tuntap add ... user $USER`). If no interface of that name exists, the kernel
/// creates a non-persistent one, which disappears when the `TapLink` is dropped and
/// starts down and unconfigured.
///
/// A TAP gives one frame per read(2) and takes one per write(2); with super-frames a
/// system call moves up to 64 KiB. I/O errors (e.g. `EIO` while the interface is down)
/// drop the frame and count it instead of failing, and no frame allocates.
#[derive(Debug)]
pub struct TapLink {
    fd: OwnedFd,
    name: String,
    frame_mtu: usize,
    offloads: Offloads,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    reads: u32,
    rx_errors: u64,
    stats: LinkStats,
    guard: super::ackguard::AckGuard,
}

/// Opens `/dev/net/tun` and attaches it to the TAP `name` with `flags`.
fn tun_attach(name: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    let mut req = ifreq_for(name)?;
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: the path is a NUL-terminated static string; open(2) takes no other pointer.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just returned by open(2) and is owned by no one else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `req` is an initialised `ifreq` with a NUL-terminated name and the flags
    // set; TUNSETIFF reads it and may write the (same) name back into it. It lives on
    // this stack frame for the whole call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sets the virtio-net header size and the offloads; returns whether GSO was granted.
fn tun_offloads(fd: RawFd) -> io::Result<bool> {
    let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points at a live
    // local of that type.
    let r = unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ as _, &size) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let full = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    for (flags, gso) in [(full, true), (libc::TUN_F_CSUM, false)] {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (the flag bits), no pointer.
        let r = unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD as _, flags as libc::c_ulong) };
        if r == 0 {
            return Ok(gso);
        }
    }
    Err(io::Error::last_os_error())
}

impl TapLink {
    /// Attaches to the TAP interface `name`, creating it if it does not exist, with
    /// virtio-net headers and offloads if the kernel takes them.
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] if `name` is empty, contains a NUL byte
    /// or is longer than 15 bytes; with `PermissionDenied` without the needed
    /// privileges; and with the kernel's error if the name is invalid (e.g. contains `/`)
    /// or belongs to an interface that is not a TAP.
    pub fn open(name: &str) -> io::Result<Self> {
        Self::open_with(name, TapOptions::default())
    }

    /// Like [`open`](Self::open), with explicit [`TapOptions`].
    pub fn open_with(name: &str, opts: TapOptions) -> io::Result<Self> {
        let base = libc::IFF_TAP | libc::IFF_NO_PI;
        let mut why = "virtio-net headers not requested".to_owned();
        if opts.vnet_hdr {
            match tun_attach(name, base | libc::IFF_VNET_HDR) {
                Ok(fd) => match tun_offloads(fd.as_raw_fd()) {
                    Ok(gso) => {
                        let offloads = Offloads {
                            vnet_hdr: true,
                            gso,
                            batched: false,
                            qdisc_bypass: false,
                        };
                        if !gso {
                            tracing::warn!(
                                iface = name,
                                "tap: the kernel refused TSO offloads; frames stay MTU-sized"
                            );
                        }
                        return Self::finish(fd, name, offloads);
                    }
                    Err(e) => why = format!("the kernel refused the TAP offloads ({e})"),
                },
                // EINVAL from TUNSETIFF: a flag this kernel does not know.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    why = format!("the kernel refused IFF_VNET_HDR ({e})")
                }
                // Anything else (a bad name, permissions, busy) fails the plain path too.
                Err(e) => return Err(e),
            }
        }
        tracing::warn!(
            iface = name,
            "tap: {why}; plain path: MTU-sized frames, smoltcp computes every checksum"
        );
        let fd = tun_attach(name, base)?;
        Self::finish(fd, name, Offloads::default())
    }

    fn finish(fd: OwnedFd, name: &str, offloads: Offloads) -> io::Result<Self> {
        let frame_mtu = interface_mtu(name)? + 14;
        Ok(TapLink {
            fd,
            name: name.to_owned(),
            frame_mtu,
            offloads,
            rx_buf: vec![0; VNET_HDR_LEN + GSO_MAX_FRAME.max(frame_mtu) + 64],
            tx_buf: Vec::with_capacity(VNET_HDR_LEN + frame_mtu),
            reads: 0,
            rx_errors: 0,
            stats: LinkStats::default(),
            guard: Default::default(),
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

    /// Which offloads the kernel granted (all off on the plain path).
    pub fn offloads(&self) -> Offloads {
        self.offloads
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
        self.fd.as_raw_fd()
    }
}

impl Device for TapLink {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let fd = self.fd.as_raw_fd();
        let vnet = self.offloads.vnet_hdr;
        let n = loop {
            if self.reads >= MAX_READS_PER_POLL {
                return None;
            }
            self.reads += 1;
            // SAFETY: `rx_buf` is a live, exclusively borrowed allocation of
            // `rx_buf.len()` initialised bytes, so the kernel may write up to that many
            // bytes into it. `fd` is owned by `self`, which outlives this call; it is
            // non-blocking.
            let n = unsafe { libc::read(fd, self.rx_buf.as_mut_ptr().cast(), self.rx_buf.len()) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::WouldBlock {
                    self.stats.rx_empty_syscalls += 1;
                } else if err.kind() != io::ErrorKind::Interrupted {
                    self.rx_errors += 1;
                    tracing::debug!(iface = %self.name, %err, "tap: read failed");
                }
                return None;
            }
            self.stats.rx_syscalls += 1;
            let n = n as usize;
            if !vnet {
                self.stats.count_rx(n);
                break n;
            }
            if super::accept_vnet_frame(
                &mut self.rx_buf[..n],
                self.frame_mtu,
                &mut self.stats,
                &mut self.guard,
            ) {
                break n;
            }
        };
        let start = if vnet { VNET_HDR_LEN } else { 0 };
        let rx = RxToken {
            frame: &self.rx_buf[start..n],
        };
        let tx = TxToken {
            fd,
            vnet,
            gso: None,
            buf: &mut self.tx_buf,
            stats: &mut self.stats,
            guard: &mut self.guard,
        };
        Some((rx, tx))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken {
            fd: self.fd.as_raw_fd(),
            vnet: self.offloads.vnet_hdr,
            gso: None,
            buf: &mut self.tx_buf,
            stats: &mut self.stats,
            guard: &mut self.guard,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        if self.offloads.vnet_hdr {
            super::vnet_capabilities(self.frame_mtu, self.offloads.gso)
        } else {
            super::kernel_peer_capabilities(self.frame_mtu)
        }
    }
}

impl Link for TapLink {
    /// Sleeps in poll(2) until the TAP is readable or `timeout` passes.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        poll_readable(self.fd.as_raw_fd(), timeout).map(|_| ())
    }

    /// Every frame is written when smoltcp hands it over; this resets the per-poll
    /// read budget.
    fn flush(&mut self) {
        self.reads = 0;
    }

    fn stats(&self) -> LinkStats {
        self.stats
    }

    fn offloads(&self) -> Offloads {
        self.offloads
    }
}

/// Receive token of a [`TapLink`]: borrows the frame from the link's buffer.
pub use super::FrameRxToken as RxToken;

/// Transmit token of a [`TapLink`].
#[doc(hidden)]
#[derive(Debug)]
pub struct TxToken<'a> {
    fd: RawFd,
    vnet: bool,
    gso: Option<u16>,
    buf: &'a mut Vec<u8>,
    stats: &'a mut LinkStats,
    guard: &'a mut super::ackguard::AckGuard,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let head = if self.vnet { VNET_HDR_LEN } else { 0 };
        let total = head + len;
        if self.buf.len() < total {
            self.buf.resize(total, 0);
        }
        let (h, frame) = self.buf[..total].split_at_mut(head);
        let result = f(frame);
        let mut gso = false;
        if self.vnet {
            self.guard.sent(frame);
            let hdr = vnet::prepare_tx(frame, self.gso);
            gso = hdr.is_gso();
            // `h` is exactly VNET_HDR_LEN bytes long.
            let _ = hdr.write(h);
        }
        // SAFETY: `buf[..total]` is initialised and borrowed for the whole call; write(2)
        // only reads from it. `fd` belongs to the `TapLink` the token borrows, which
        // keeps it open.
        let n = unsafe { libc::write(self.fd, self.buf.as_ptr().cast(), total) };
        self.stats.tx_syscalls += 1;
        if n < 0 || n as usize != total {
            self.stats.tx_dropped += 1;
            if n < 0 {
                let err = io::Error::last_os_error();
                tracing::debug!(%err, "tap: write failed, frame dropped");
            }
        } else {
            self.stats.count_tx(len);
            if gso {
                self.stats.tx_gso_frames += 1;
            }
        }
        result
    }

    fn set_meta(&mut self, meta: PacketMeta) {
        self.gso = meta.segmentation_offload_size.map(|s| s.get());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_errors_not_panics() {
        for name in ["", "name-longer-than-15", "a\0b"] {
            let err = TapLink::open(name).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }

    #[test]
    #[ignore = "needs root (/dev/net/tun): run by scripts/test.sh"]
    fn open_invalid_interface_is_error() {
        // TUNSETIFF creates missing TAPs, so "nonexistent" must mean a name the kernel
        // rejects: '/' is never valid in an interface name. `lo` exists but is no TAP.
        for name in ["no/such-tap", "lo"] {
            assert!(
                TapLink::open(name).is_err(),
                "opening {name:?} as a TAP should fail"
            );
        }
    }

    #[test]
    #[ignore = "needs root (/dev/net/tun): run by scripts/test.sh"]
    fn tap_opens_with_offloads_and_survives_down() {
        let name = format!("lktap{}", std::process::id() % 100_000);
        let mut link = TapLink::open(&name).expect("create a TAP");
        assert_eq!(link.name(), name);
        let off = link.offloads();
        assert!(off.vnet_hdr && off.gso, "{off:?}");
        let caps = link.capabilities();
        assert_eq!(caps.max_transmission_unit, link.mtu() + 14);
        assert!(!caps.checksum.tcp.rx() && !caps.checksum.tcp.tx());
        assert!(caps.segmentation.tcpv4.is_some());
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
        drop(link);
        // The plain path, asked for.
        let plain = TapLink::open_with(&name, TapOptions { vnet_hdr: false }).unwrap();
        assert_eq!(plain.offloads(), Offloads::default());
        assert!(plain.capabilities().checksum.tcp.rx());
    }
}
