//! The system calls both paths of the packet link share: interface lookup and MTU,
//! `AF_PACKET` socket creation, socket options (buffers, loopback), and waiting for a
//! socket to become readable.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::io::RawFd;
use std::time::Duration;

use pnet_datalink::NetworkInterface;

use super::super::poll_readable;

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
pub(super) const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
pub(super) const PACKET_MR_PROMISC: libc::c_ushort = 1;
pub(super) const PACKET_STATISTICS: libc::c_int = 6;
pub(super) const PACKET_VNET_HDR: libc::c_int = 15;
pub(super) const PACKET_QDISC_BYPASS: libc::c_int = 20;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// The interface called `name`, as pnet lists it; `NotFound` if there is none.
pub(super) fn find_interface(name: &str) -> io::Result<NetworkInterface> {
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

/// A new `AF_PACKET`/`SOCK_RAW` socket for `protocol` (host order); the caller owns it.
pub(super) fn open_packet_socket(protocol: u16) -> io::Result<RawFd> {
    let proto = protocol.to_be() as libc::c_int;
    // SAFETY: socket(2) takes no pointers; a failure is reported as -1 with errno.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Closes a descriptor [`open_packet_socket`] returned.
pub(super) fn close_fd(fd: RawFd) {
    // SAFETY: `fd` was returned by socket(2) in `open_packet_socket`, is owned by the
    // caller, and is closed exactly once here.
    unsafe {
        libc::close(fd);
    }
}

/// Sets the `int` socket option `level`/`name` of `fd` to `value`.
pub(super) fn set_int_opt(
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
pub(super) fn wait_readable(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
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

/// Reads the `int` socket option `level`/`name` of `fd`.
pub(super) fn get_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
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
pub(super) fn configure_socket(fd: RawFd, bytes: usize) -> io::Result<usize> {
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
