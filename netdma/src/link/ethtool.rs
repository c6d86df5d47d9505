//! Turning an interface's transmit checksum offload on or off with the `SIOCETHTOOL`
//! ioctl (what `ethtool -K IFACE tx on|off` does), so no tool has to be installed.

use std::io;

/// `ETHTOOL_STXCSUM` from `<linux/ethtool.h>`: set transmit checksum offload.
const ETHTOOL_STXCSUM: u32 = 0x17;
/// `ETHTOOL_GTXCSUM`: get transmit checksum offload.
const ETHTOOL_GTXCSUM: u32 = 0x16;

/// `struct ethtool_value` from `<linux/ethtool.h>`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Turns transmit checksum offload of the interface `iface` (in the calling thread's
/// network namespace) on or off, like `ethtool -K IFACE tx on|off`, and returns whether
/// it was on before.
///
/// With it off, the kernel computes every TCP checksum itself and, since TCP
/// segmentation offload needs checksum offload, cuts its segments to the MTU: frames
/// then leave the interface complete, as they would cross a physical wire.
///
/// Needs `CAP_NET_ADMIN`. Fails with `InvalidInput` for a name longer than 15 bytes or
/// with a NUL, and with the kernel's error otherwise (`ENODEV` for no such interface,
/// `EOPNOTSUPP` if the driver cannot change it).
pub fn set_tx_checksum_offload(iface: &str, on: bool) -> io::Result<bool> {
    let was = ethtool_value(iface, ETHTOOL_GTXCSUM, 0)? != 0;
    ethtool_value(iface, ETHTOOL_STXCSUM, u32::from(on))?;
    Ok(was)
}

/// Issues one `SIOCETHTOOL` command with a `struct ethtool_value` and returns its data.
fn ethtool_value(iface: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let mut req = super::packet::ifreq_for(iface)?;
    let mut value = EthtoolValue { cmd, data };
    req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    let fd = super::packet::control_socket()?;
    // SAFETY: `req` is a fully initialised `ifreq` whose name is NUL-terminated (built by
    // `ifreq_for`) and whose data pointer points at `value`, a live `ethtool_value` on
    // this stack frame that outlives the call; SIOCETHTOOL reads the command from it and
    // writes at most its `data` field. `fd` is an open socket owned by this function.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIOCETHTOOL as _,
            &mut req,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_any_ioctl() {
        for name in ["", "name-longer-than-15", "a\0b"] {
            let err = set_tx_checksum_offload(name, false).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }

    #[test]
    fn a_missing_interface_is_reported() {
        let err = set_tx_checksum_offload("lk-nosuch0", false).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "{err}");
    }
}
