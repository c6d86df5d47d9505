//! Finding a usable work queue: the CPU's instructions, the `dsa` bus in sysfs, the WQ
//! character devices. Both roots are configurable ([`DsaPaths`]) so that tests build fake
//! trees in a temporary directory.

use super::hw::opcode;
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the `dsa` bus and the WQ character devices live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DsaPaths {
    /// The bus's device directory (default `/sys/bus/dsa/devices`).
    pub sysfs: PathBuf,
    /// The directory of the WQ character devices (default `/dev/dsa`).
    pub dev: PathBuf,
}

impl Default for DsaPaths {
    fn default() -> Self {
        DsaPaths {
            sysfs: PathBuf::from("/sys/bus/dsa/devices"),
            dev: PathBuf::from("/dev/dsa"),
        }
    }
}

/// The CPU instructions that write a WQ portal (CPUID leaf 7, sub-leaf 0, ECX).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CpuFeatures {
    /// MOVDIR64B (ECX bit 28): 64-byte posted write, for dedicated WQs.
    pub movdir64b: bool,
    /// ENQCMD (ECX bit 29): 64-byte non-posted write with an answer, for shared WQs.
    pub enqcmd: bool,
}

impl CpuFeatures {
    /// Asks this CPU.
    pub fn detect() -> CpuFeatures {
        #[cfg(target_arch = "x86_64")]
        {
            // CPUID is available on every x86_64 CPU; leaf 7 exists when the maximum leaf
            // (leaf 0's EAX) is at least 7, checked first.
            let max = std::arch::x86_64::__cpuid(0).eax;
            if max < 7 {
                return CpuFeatures::default();
            }
            let ecx = std::arch::x86_64::__cpuid_count(7, 0).ecx;
            CpuFeatures {
                movdir64b: ecx & (1 << 28) != 0,
                enqcmd: ecx & (1 << 29) != 0,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            CpuFeatures::default()
        }
    }
}

/// How a WQ is shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WqMode {
    /// One submitter; MOVDIR64B, and the submitter counts what is outstanding.
    Dedicated,
    /// Many submitters; ENQCMD, which says whether the queue took the descriptor.
    Shared,
}

impl fmt::Display for WqMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WqMode::Dedicated => "dedicated",
            WqMode::Shared => "shared",
        })
    }
}

/// One work queue as sysfs describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WqInfo {
    /// Its name on the bus (`wq0.0`).
    pub name: String,
    /// Its device (`dsa0`).
    pub device: String,
    /// `type`: `user`, `kernel`, `mdev` or `none`.
    pub wq_type: String,
    /// `state`: `enabled`, `disabled`, ...
    pub state: String,
    /// `mode`.
    pub mode: WqMode,
    /// `size`: descriptors the queue holds.
    pub size: usize,
    /// `max_transfer_size`: the largest `xfer_size`.
    pub max_transfer_size: u64,
    /// `max_batch_size`: the most descriptors in one BATCH.
    pub max_batch_size: usize,
    /// The device's `op_cap` says MEMMOVE.
    pub memmove: bool,
    /// The device's `op_cap` says MEMFILL.
    pub memfill: bool,
    /// The device's `op_cap` says BATCH (the kernel clears it where user batches are
    /// unsafe).
    pub batch: bool,
    /// The character device path (`/dev/dsa/wq0.0`).
    pub char_dev: PathBuf,
    /// Whether the character device exists.
    pub char_dev_present: bool,
}

/// Why a WQ cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum WqRejection {
    /// Not enabled.
    #[error("state is {state:?}, not \"enabled\"")]
    NotEnabled {
        /// Its state.
        state: String,
    },
    /// Not a user WQ (kernel WQs serve in-kernel dmaengine clients only).
    #[error("type is {wq_type:?}, not \"user\"")]
    NotUser {
        /// Its type.
        wq_type: String,
    },
    /// Its character device does not exist.
    #[error("character device {path} is missing")]
    NoCharDevice {
        /// Where it should be.
        path: PathBuf,
    },
    /// The device does not do MEMMOVE.
    #[error("the device's op_cap lacks MEMMOVE")]
    NoMemmove,
    /// Size 0.
    #[error("size is 0")]
    Empty,
}

/// Why no usable DSA work queue was found: each says exactly what is missing.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The CPU has neither MOVDIR64B nor ENQCMD: no DSA portal can be written.
    #[error("the CPU reports neither MOVDIR64B nor ENQCMD (CPUID leaf 7 ECX bits 28/29): no DSA")]
    NoCpuSupport,
    /// The `dsa` bus is absent (no idxd driver, or no DSA device).
    #[error("{path} does not exist: the idxd driver is not loaded or there is no DSA device")]
    NoBus {
        /// The bus's device directory.
        path: PathBuf,
    },
    /// The bus has no work queues.
    #[error("{path} lists no work queue (configure one with accel-config)")]
    NoWorkQueues {
        /// The bus's device directory.
        path: PathBuf,
    },
    /// No WQ is usable; each one found and why not.
    #[error("no enabled user work queue: {}", list_rejections(.rejected))]
    NoUsableWq {
        /// Every WQ found, with the reason it was passed over.
        rejected: Vec<(String, WqRejection)>,
    },
    /// The WQ asked for by name does not exist.
    #[error("work queue {name:?} not found under {path}")]
    WqNotFound {
        /// The name asked for.
        name: String,
        /// The bus's device directory.
        path: PathBuf,
    },
    /// The WQ asked for by name cannot be used.
    #[error("work queue {name}: {reason}")]
    WqUnusable {
        /// The WQ.
        name: String,
        /// Why.
        reason: WqRejection,
    },
    /// An attribute could not be read or parsed.
    #[error("{path}: {message}")]
    Attribute {
        /// The attribute file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The character device exists but may not be opened.
    #[error("no permission to open {path} (run as root or grant access to the device): {source}")]
    NoPermission {
        /// The character device.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Opening or mapping the character device failed otherwise.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn list_rejections(rejected: &[(String, WqRejection)]) -> String {
    rejected
        .iter()
        .map(|(n, r)| format!("{n}: {r}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Which WQ to use: the first usable one, or one by name or path (`wq0.0`,
/// `/dev/dsa/wq0.0`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WqSelection {
    /// The first usable WQ, in name order.
    Any,
    /// This WQ.
    Named(String),
}

impl WqSelection {
    /// Parses `"any"` or a WQ name or path.
    pub fn parse(s: &str) -> WqSelection {
        let t = s.trim();
        if t.is_empty() || t.eq_ignore_ascii_case("any") {
            WqSelection::Any
        } else {
            let name = Path::new(t)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| t.to_owned());
            WqSelection::Named(name)
        }
    }
}

fn read_attr(dir: &Path, name: &str) -> Result<String, DiscoveryError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| DiscoveryError::Attribute {
            path,
            message: e.to_string(),
        })
}

fn parse_num(dir: &Path, name: &str) -> Result<u64, DiscoveryError> {
    let text = read_attr(dir, name)?;
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| DiscoveryError::Attribute {
        path: dir.join(name),
        message: format!("{text:?} is not a number: {e}"),
    })
}

/// Whether `op_cap` has the bit of `op`. Two formats exist: older kernels print four
/// `0x`-prefixed 64-bit words, lowest first, separated by spaces; newer ones print the
/// 256-bit map as comma-separated hexadecimal words, most significant first.
pub fn op_cap_has(op_cap: &str, op: u8) -> Option<bool> {
    let text = op_cap.trim();
    if text.contains("0x") {
        let words: Vec<u64> = text
            .split([' ', ','])
            .filter(|w| !w.is_empty())
            .map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok())
            .collect::<Option<_>>()?;
        let word = words.get(op as usize / 64)?;
        Some(word & (1u64 << (op % 64)) != 0)
    } else {
        let groups: Vec<&str> = text.split(',').collect();
        // Each group is 32 bits, the last group holds bits 0..32.
        let index = groups.len().checked_sub(1 + op as usize / 32)?;
        let word = u32::from_str_radix(groups[index], 16).ok()?;
        Some(word & (1u32 << (op % 32)) != 0)
    }
}

fn wq_info(paths: &DsaPaths, name: &str) -> Result<WqInfo, DiscoveryError> {
    let dir = paths.sysfs.join(name);
    // wqD.Q belongs to dsaD.
    let device = name
        .strip_prefix("wq")
        .and_then(|r| r.split('.').next())
        .map(|d| format!("dsa{d}"))
        .unwrap_or_default();
    let mode = match read_attr(&dir, "mode")?.as_str() {
        "shared" => WqMode::Shared,
        "dedicated" => WqMode::Dedicated,
        other => {
            return Err(DiscoveryError::Attribute {
                path: dir.join("mode"),
                message: format!("unknown mode {other:?}"),
            })
        }
    };
    let dev_dir = paths.sysfs.join(&device);
    let op_cap = read_attr(&dev_dir, "op_cap")?;
    let has = |op| {
        op_cap_has(&op_cap, op).ok_or_else(|| DiscoveryError::Attribute {
            path: dev_dir.join("op_cap"),
            message: format!("cannot parse {op_cap:?}"),
        })
    };
    let char_dev = paths.dev.join(name);
    Ok(WqInfo {
        name: name.to_owned(),
        wq_type: read_attr(&dir, "type")?,
        state: read_attr(&dir, "state")?,
        mode,
        size: parse_num(&dir, "size")? as usize,
        max_transfer_size: parse_num(&dir, "max_transfer_size")?,
        max_batch_size: parse_num(&dir, "max_batch_size")? as usize,
        memmove: has(opcode::MEMMOVE)?,
        memfill: has(opcode::MEMFILL)?,
        batch: has(opcode::BATCH)?,
        char_dev_present: char_dev.exists(),
        char_dev,
        device,
    })
}

/// Every WQ on the bus, usable or not, in name order.
pub fn scan(paths: &DsaPaths) -> Result<Vec<WqInfo>, DiscoveryError> {
    let entries = match std::fs::read_dir(&paths.sysfs) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DiscoveryError::NoBus {
                path: paths.sysfs.clone(),
            })
        }
        Err(source) => {
            return Err(DiscoveryError::Io {
                path: paths.sysfs.clone(),
                source,
            })
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("wq") && n.contains('.'))
        .collect();
    names.sort();
    names.iter().map(|n| wq_info(paths, n)).collect()
}

/// Why `wq` cannot be used, if it cannot.
pub fn check(wq: &WqInfo) -> Result<(), WqRejection> {
    if wq.state != "enabled" {
        return Err(WqRejection::NotEnabled {
            state: wq.state.clone(),
        });
    }
    if wq.wq_type != "user" {
        return Err(WqRejection::NotUser {
            wq_type: wq.wq_type.clone(),
        });
    }
    if wq.size == 0 {
        return Err(WqRejection::Empty);
    }
    if !wq.memmove {
        return Err(WqRejection::NoMemmove);
    }
    if !wq.char_dev_present {
        return Err(WqRejection::NoCharDevice {
            path: wq.char_dev.clone(),
        });
    }
    Ok(())
}

/// Finds the WQ to use: the CPU must have a portal instruction, the bus must exist, and
/// the WQ must be an enabled user WQ with a character device and MEMMOVE.
pub fn find(
    paths: &DsaPaths,
    cpu: CpuFeatures,
    selection: &WqSelection,
) -> Result<WqInfo, DiscoveryError> {
    if !cpu.movdir64b && !cpu.enqcmd {
        return Err(DiscoveryError::NoCpuSupport);
    }
    let wqs = scan(paths)?;
    if wqs.is_empty() {
        return Err(DiscoveryError::NoWorkQueues {
            path: paths.sysfs.clone(),
        });
    }
    match selection {
        WqSelection::Named(name) => {
            let wq = wqs.into_iter().find(|w| &w.name == name).ok_or_else(|| {
                DiscoveryError::WqNotFound {
                    name: name.clone(),
                    path: paths.sysfs.clone(),
                }
            })?;
            check(&wq).map_err(|reason| DiscoveryError::WqUnusable {
                name: wq.name.clone(),
                reason,
            })?;
            Ok(wq)
        }
        WqSelection::Any => {
            let mut rejected = Vec::new();
            for wq in wqs {
                match check(&wq) {
                    Ok(()) => return Ok(wq),
                    Err(r) => rejected.push((wq.name, r)),
                }
            }
            Err(DiscoveryError::NoUsableWq { rejected })
        }
    }
}
