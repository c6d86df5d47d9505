//! Writing a descriptor to a work queue: MOVDIR64B or ENQCMD on the mapped portal, the
//! `write()` path on the WQ's file, or the software portal.

use super::discover::{CpuFeatures, DiscoveryError, WqInfo, WqMode};
use super::emulated::EmulatedWq;
use super::hw::WorkDescriptor;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// The portal is one page; the device decodes the write's offset, 0 is the usual one.
const PORTAL_SIZE: usize = 0x1000;

/// How descriptors reach the WQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubmitPath {
    /// MOVDIR64B to the mapped portal (dedicated WQ).
    Movdir64b,
    /// ENQCMD to the mapped portal (shared WQ).
    Enqcmd,
    /// `write(fd, desc, 64)` on the WQ's character device (kernels that refuse the
    /// portal mapping to unprivileged programs).
    Write,
    /// The software portal ([`EmulatedWq`]).
    Emulated,
}

pub(crate) enum Portal {
    Emulated(Arc<EmulatedWq>),
    Mapped {
        base: *mut u8,
        enqcmd: bool,
        _file: File,
    },
    Write(File),
}

// SAFETY: the mapped portal is a device page that any thread may write (the instructions
// are atomic 64-byte writes); the pointer is only used for those writes and for munmap in
// Drop, which has `&mut self`. The other variants are Send + Sync already.
unsafe impl Send for Portal {}
// SAFETY: sharing `&Portal` between threads lets them write the portal at once: the
// device accepts concurrent 64-byte portal writes (each MOVDIR64B/ENQCMD is one atomic
// write), `write()` on the file is a system call safe from any thread, and munmap needs
// `&mut self`, so it cannot run while another thread holds a reference.
unsafe impl Sync for Portal {}

impl Portal {
    pub(crate) fn path(&self) -> SubmitPath {
        match self {
            Portal::Emulated(_) => SubmitPath::Emulated,
            Portal::Mapped { enqcmd: false, .. } => SubmitPath::Movdir64b,
            Portal::Mapped { enqcmd: true, .. } => SubmitPath::Enqcmd,
            Portal::Write(_) => SubmitPath::Write,
        }
    }

    /// Opens `wq`'s character device and maps its portal, or falls back to the `write()`
    /// path when the mapping is refused or the CPU lacks the WQ mode's instruction.
    pub(crate) fn open(wq: &WqInfo, cpu: CpuFeatures) -> Result<Portal, DiscoveryError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&wq.char_dev)
            .map_err(|source| match source.kind() {
                io::ErrorKind::PermissionDenied => DiscoveryError::NoPermission {
                    path: wq.char_dev.clone(),
                    source,
                },
                _ => DiscoveryError::Io {
                    path: wq.char_dev.clone(),
                    source,
                },
            })?;
        let enqcmd = match wq.mode {
            WqMode::Dedicated if cpu.movdir64b => false,
            WqMode::Shared if cpu.enqcmd => true,
            mode => {
                tracing::info!(wq = %wq.name, %mode, ?cpu, "no portal instruction for this WQ mode: using write()");
                return Ok(Portal::Write(file));
            }
        };
        if !cfg!(target_arch = "x86_64") {
            return Ok(Portal::Write(file));
        }
        // SAFETY: a fresh shared mapping of the WQ's portal page: no existing memory is
        // affected; the result is checked against MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PORTAL_SIZE,
                libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    tracing::info!(wq = %wq.name, error = %e, "portal mapping refused: using write()");
                    Ok(Portal::Write(file))
                }
                _ => Err(DiscoveryError::Io {
                    path: wq.char_dev.clone(),
                    source: e,
                }),
            };
        }
        Ok(Portal::Mapped {
            base: base.cast(),
            enqcmd,
            _file: file,
        })
    }

    /// Writes one descriptor. `Ok(false)`: the WQ did not accept it (shared WQ full).
    ///
    /// # Safety
    ///
    /// The memory `desc` names stays valid until its completion record is written (the
    /// device accesses it asynchronously).
    pub(crate) unsafe fn write(&self, desc: &WorkDescriptor) -> io::Result<bool> {
        match self {
            // SAFETY: forwarded from this function's contract.
            Portal::Emulated(wq) => Ok(unsafe { wq.write_portal(desc) }),
            Portal::Write(file) => {
                // SAFETY: `desc` is 64 readable bytes; the kernel copies them.
                let n = unsafe {
                    libc::write(
                        file.as_raw_fd(),
                        (desc as *const WorkDescriptor).cast(),
                        std::mem::size_of::<WorkDescriptor>(),
                    )
                };
                if n == 64 {
                    return Ok(true);
                }
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EBUSY) => Ok(false),
                    _ if n >= 0 => Err(io::Error::other(format!("short write of {n} bytes"))),
                    _ => Err(e),
                }
            }
            #[cfg(target_arch = "x86_64")]
            Portal::Mapped { base, enqcmd, .. } => {
                // SAFETY: `base` is the mapped portal page (64-byte aligned: page
                // aligned); `desc` is 64 readable bytes. The instructions were selected
                // only because CPUID reports them (`open`).
                Ok(unsafe { portal_write(*base, desc, *enqcmd) })
            }
            #[cfg(not(target_arch = "x86_64"))]
            Portal::Mapped { .. } => Err(io::Error::other("no portal instruction")),
        }
    }
}

/// MOVDIR64B or ENQCMD of `desc` to `portal`, after an SFENCE so that every earlier store
/// (zeroed completion records, a batch's descriptor list) is visible to the device
/// first. Returns whether the WQ accepted it (always, for MOVDIR64B).
///
/// # Safety
///
/// `portal` is a mapped WQ portal, `desc` 64 readable bytes, and the CPU implements the
/// instruction.
#[cfg(target_arch = "x86_64")]
unsafe fn portal_write(portal: *mut u8, desc: &WorkDescriptor, enqcmd: bool) -> bool {
    let src = desc as *const WorkDescriptor;
    if enqcmd {
        let rejected: u8;
        // SAFETY: the caller's contract. ENQCMD (F2 0F 38 F8 /r, ModRM 0x02:
        // reg = rax = the portal, r/m = [rdx] = the descriptor) sets ZF when the
        // queue refuses; SETZ reads it.
        unsafe {
            std::arch::asm!(
                "sfence",
                ".byte 0xf2, 0x0f, 0x38, 0xf8, 0x02",
                "setz {r}",
                r = out(reg_byte) rejected,
                in("rax") portal,
                in("rdx") src,
                options(nostack),
            );
        }
        rejected == 0
    } else {
        // SAFETY: the caller's contract. MOVDIR64B (66 0F 38 F8 /r, ModRM 0x02:
        // reg = rax = the portal, r/m = [rdx] = the descriptor).
        unsafe {
            std::arch::asm!(
                "sfence",
                ".byte 0x66, 0x0f, 0x38, 0xf8, 0x02",
                in("rax") portal,
                in("rdx") src,
                options(nostack),
            );
        }
        true
    }
}

impl Drop for Portal {
    fn drop(&mut self) {
        if let Portal::Mapped { base, .. } = self {
            // SAFETY: `base` came from mmap of PORTAL_SIZE bytes in `open` and is unmapped
            // once, here; nothing writes it after Drop.
            unsafe {
                libc::munmap(base.cast(), PORTAL_SIZE);
            }
        }
    }
}
