//! The formats the device reads and writes: the 64-byte work descriptor, the 32-byte
//! completion record, opcodes, flags and completion statuses, as Linux's
//! `include/uapi/linux/idxd.h` lays them out.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

/// Operation codes (byte 7 of a work descriptor).
pub mod opcode {
    /// No operation: completes at once (a probe, or a fence carrier).
    pub const NOOP: u8 = 0x00;
    /// A batch: `desc_list_addr` names `desc_count` work descriptors.
    pub const BATCH: u8 = 0x01;
    /// Completes once every earlier descriptor of the submitter has.
    pub const DRAIN: u8 = 0x02;
    /// Memory move: copy `xfer_size` bytes from `src_addr` to `dst_addr`.
    pub const MEMMOVE: u8 = 0x03;
    /// Memory fill: write the 8-byte `pattern` (in `src_addr`) over `xfer_size` bytes.
    pub const MEMFILL: u8 = 0x04;
    /// Compare two buffers.
    pub const COMPARE: u8 = 0x05;
    /// Compare a buffer against a pattern.
    pub const COMPVAL: u8 = 0x06;
    /// Copy to two destinations.
    pub const DUALCAST: u8 = 0x09;
    /// CRC generation.
    pub const CRCGEN: u8 = 0x10;
    /// Copy with CRC generation.
    pub const COPY_CRC: u8 = 0x11;
    /// Cache flush.
    pub const CFLUSH: u8 = 0x20;
}

/// Descriptor flags (bits 0..24 of the descriptor's second dword).
pub mod flags {
    /// Fence: wait for the batch's earlier descriptors.
    pub const FENCE: u32 = 0x0001;
    /// Block on fault: the device waits for a page fault to be resolved instead of
    /// stopping with a partial completion.
    pub const BOF: u32 = 0x0002;
    /// Completion record address valid.
    pub const CRAV: u32 = 0x0004;
    /// Request a completion record.
    pub const RCR: u32 = 0x0008;
    /// Request a completion interrupt.
    pub const RCI: u32 = 0x0010;
    /// Completion record steering.
    pub const CRSTS: u32 = 0x0020;
    /// Check result.
    pub const CR: u32 = 0x0080;
    /// Cache control: write the destination into the cache hierarchy.
    pub const CC: u32 = 0x0100;
    /// Every flag this crate knows: anything else is refused as invalid by the software
    /// portal (hardware refuses flags it does not implement the same way).
    pub const KNOWN: u32 = FENCE | BOF | CRAV | RCR | RCI | CRSTS | CR | CC | 0xfe00;
}

/// Completion status codes (`status & 0x7f` of a completion record).
pub mod status {
    /// Not written yet: hardware never writes 0.
    pub const NONE: u8 = 0x00;
    /// Success.
    pub const SUCCESS: u8 = 0x01;
    /// Success with a false predicate.
    pub const SUCCESS_PRED: u8 = 0x02;
    /// Page fault, block-on-fault clear: `bytes_completed` done, `fault_addr` faulted.
    pub const PAGE_FAULT_NOBOF: u8 = 0x03;
    /// Page fault on an interrupt-handle or readback address.
    pub const PAGE_FAULT_IR: u8 = 0x04;
    /// A descriptor of the batch failed.
    pub const BATCH_FAIL: u8 = 0x05;
    /// Page fault reading the batch's descriptor list.
    pub const BATCH_PAGE_FAULT: u8 = 0x06;
    /// Delta record offsets do not increase.
    pub const DR_OFFSET_NOINC: u8 = 0x07;
    /// Delta record offset out of range.
    pub const DR_OFFSET_ERANGE: u8 = 0x08;
    /// DIF error.
    pub const DIF_ERR: u8 = 0x09;
    /// Unsupported opcode.
    pub const BAD_OPCODE: u8 = 0x10;
    /// Invalid flags (the offending ones in the record's bytes 16..19).
    pub const INVALID_FLAGS: u8 = 0x11;
    /// A reserved field is not zero.
    pub const NOZERO_RESERVE: u8 = 0x12;
    /// Transfer size out of range.
    pub const XFER_ERANGE: u8 = 0x13;
    /// Descriptor count out of range.
    pub const DESC_CNT_ERANGE: u8 = 0x14;
    /// Delta record size out of range.
    pub const DR_ERANGE: u8 = 0x15;
    /// Overlapping buffers.
    pub const OVERLAP_BUFFERS: u8 = 0x16;
    /// Dualcast destinations misaligned.
    pub const DCAST_ERR: u8 = 0x17;
    /// Descriptor list misaligned.
    pub const DESCLIST_ALIGN: u8 = 0x18;
    /// Invalid interrupt handle.
    pub const INT_HANDLE_INVAL: u8 = 0x19;
    /// Completion record address translation failed.
    pub const CRA_XLAT: u8 = 0x1a;
    /// Completion record address misaligned.
    pub const CRA_ALIGN: u8 = 0x1b;
    /// Source or destination address misaligned.
    pub const ADDR_ALIGN: u8 = 0x1c;
    /// Privileged descriptor from an unprivileged submitter.
    pub const PRIV_BAD: u8 = 0x1d;
    /// Traffic class configuration error.
    pub const TRAFFIC_CLASS_CONF: u8 = 0x1e;
    /// Page fault on a readback address.
    pub const PFAULT_RDBA: u8 = 0x1f;
    /// Hardware error.
    pub const HW_ERR1: u8 = 0x20;
    /// Hardware error on the drain-readback path.
    pub const HW_ERR_DRB: u8 = 0x21;
    /// Address translation failure.
    pub const TRANSLATION_FAIL: u8 = 0x22;
    /// Provider-internal, never written by hardware: the portal refused the descriptor
    /// (the `write()` path returned an error), so it never reached the device.
    pub const NOT_SUBMITTED: u8 = 0x7e;
    /// Provider-internal, never written by hardware: cancelled before it reached the
    /// device (`terminate_all` on a descriptor not yet issued).
    pub const CANCELLED: u8 = 0x7f;
    /// Mask of the status code.
    pub const MASK: u8 = 0x7f;
    /// Set when the fault happened on a write.
    pub const WRITE: u8 = 0x80;
}

/// A DSA work descriptor (`struct dsa_hw_desc`): 64 bytes, 64-byte aligned (the alignment
/// a batch's descriptor list needs; the layout is the packed uapi one).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkDescriptor {
    /// `pasid:20`, `rsvd:11`, `priv:1` (zero from user space: the kernel fills the PASID).
    pub pasid_priv: u32,
    /// `flags:24` in the low bits, `opcode:8` in the high byte (byte 7).
    pub flags_opcode: u32,
    /// Where the device writes the completion record (32-byte aligned).
    pub completion_addr: u64,
    /// Source address, or the MEMFILL pattern, or a BATCH's descriptor list.
    pub src_addr: u64,
    /// Destination address.
    pub dst_addr: u64,
    /// Bytes to move, or a BATCH's descriptor count.
    pub xfer_size: u32,
    /// Completion interrupt handle.
    pub int_handle: u16,
    /// Reserved, zero.
    pub rsvd1: u16,
    /// Operation-specific bytes 40..64.
    pub op_specific: [u8; 24],
}

const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<WorkDescriptor>() == 64);
    assert!(align_of::<WorkDescriptor>() == 64);
    assert!(offset_of!(WorkDescriptor, pasid_priv) == 0);
    assert!(offset_of!(WorkDescriptor, flags_opcode) == 4);
    assert!(offset_of!(WorkDescriptor, completion_addr) == 8);
    assert!(offset_of!(WorkDescriptor, src_addr) == 16);
    assert!(offset_of!(WorkDescriptor, dst_addr) == 24);
    assert!(offset_of!(WorkDescriptor, xfer_size) == 32);
    assert!(offset_of!(WorkDescriptor, int_handle) == 36);
    assert!(offset_of!(WorkDescriptor, rsvd1) == 38);
    assert!(offset_of!(WorkDescriptor, op_specific) == 40);
};

impl WorkDescriptor {
    /// A descriptor with `opcode` and `flags` (only the low 24 bits count).
    pub const fn new(opcode: u8, flags: u32) -> WorkDescriptor {
        WorkDescriptor {
            pasid_priv: 0,
            flags_opcode: (flags & 0x00ff_ffff) | ((opcode as u32) << 24),
            completion_addr: 0,
            src_addr: 0,
            dst_addr: 0,
            xfer_size: 0,
            int_handle: 0,
            rsvd1: 0,
            op_specific: [0; 24],
        }
    }

    /// The opcode (byte 7).
    pub const fn opcode(&self) -> u8 {
        (self.flags_opcode >> 24) as u8
    }

    /// The flags (24 bits).
    pub const fn flags(&self) -> u32 {
        self.flags_opcode & 0x00ff_ffff
    }

    /// Replaces the opcode.
    pub fn set_opcode(&mut self, opcode: u8) {
        self.flags_opcode = self.flags() | ((opcode as u32) << 24);
    }

    /// The 64 bytes as the device reads them (little-endian).
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&self.pasid_priv.to_le_bytes());
        b[4..8].copy_from_slice(&self.flags_opcode.to_le_bytes());
        b[8..16].copy_from_slice(&self.completion_addr.to_le_bytes());
        b[16..24].copy_from_slice(&self.src_addr.to_le_bytes());
        b[24..32].copy_from_slice(&self.dst_addr.to_le_bytes());
        b[32..36].copy_from_slice(&self.xfer_size.to_le_bytes());
        b[36..38].copy_from_slice(&self.int_handle.to_le_bytes());
        b[38..40].copy_from_slice(&self.rsvd1.to_le_bytes());
        b[40..64].copy_from_slice(&self.op_specific);
        b
    }

    /// Parses 64 bytes as the device reads them.
    pub fn from_bytes(b: &[u8; 64]) -> WorkDescriptor {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(x)
        };
        let mut op_specific = [0u8; 24];
        op_specific.copy_from_slice(&b[40..64]);
        WorkDescriptor {
            pasid_priv: u32_at(0),
            flags_opcode: u32_at(4),
            completion_addr: u64_at(8),
            src_addr: u64_at(16),
            dst_addr: u64_at(24),
            xfer_size: u32_at(32),
            int_handle: u16::from_le_bytes([b[36], b[37]]),
            rsvd1: u16::from_le_bytes([b[38], b[39]]),
            op_specific,
        }
    }
}

/// A DSA completion record (`struct dsa_completion_record`): 32 bytes, 32-byte aligned.
///
/// The device writes it; software zeroes `status` before submitting and polls it with
/// Acquire loads ([`RecordRef`]). Bytes 2-3 are `fault_info` and a reserved byte in recent
/// kernels (one reserved `u16` in older ones: the same offsets).
#[repr(C, align(32))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompletionRecord {
    /// `status & 0x7f` is the code ([`status`]); bit 0x80: the fault was on a write.
    pub status: u8,
    /// Operation result (for a page-faulted MEMMOVE: 1 when it copied backwards).
    pub result: u8,
    /// Fault information (recent kernels).
    pub fault_info: u8,
    /// Reserved.
    pub rsvd: u8,
    /// Bytes completed (descriptors completed, for a BATCH).
    pub bytes_completed: u32,
    /// The faulting address.
    pub fault_addr: u64,
    /// Operation-specific; for invalid flags, the offending flags in the low 24 bits.
    pub op_specific: [u8; 16],
}

const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<CompletionRecord>() == 32);
    assert!(align_of::<CompletionRecord>() == 32);
    assert!(offset_of!(CompletionRecord, status) == 0);
    assert!(offset_of!(CompletionRecord, result) == 1);
    assert!(offset_of!(CompletionRecord, fault_info) == 2);
    assert!(offset_of!(CompletionRecord, rsvd) == 3);
    assert!(offset_of!(CompletionRecord, bytes_completed) == 4);
    assert!(offset_of!(CompletionRecord, fault_addr) == 8);
    assert!(offset_of!(CompletionRecord, op_specific) == 16);
};

/// A completion record that another agent (the device, the software portal) writes:
/// every access goes through atomics, so polling it is well defined.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef(*mut CompletionRecord);

impl RecordRef {
    /// Wraps a record's address.
    ///
    /// # Safety
    ///
    /// `ptr` is valid, 32-byte aligned, and stays allocated while the reference is used;
    /// every other access to it is atomic (or by the device).
    pub const unsafe fn new(ptr: *mut CompletionRecord) -> RecordRef {
        RecordRef(ptr)
    }

    /// The record's address.
    pub fn addr(self) -> u64 {
        self.0 as u64
    }

    fn byte_atomic(&self, index: usize) -> &AtomicU8 {
        debug_assert!(index < 4);
        // SAFETY: `new`'s contract: the record is valid and only accessed atomically;
        // bytes 0..4 are status, result, fault_info and rsvd, always accessed as bytes
        // (never as part of a wider atomic, so no mixed-size accesses race).
        unsafe { AtomicU8::from_ptr((self.0 as *mut u8).add(index)) }
    }

    fn word_atomic(&self, index: usize) -> &AtomicU32 {
        debug_assert!((1..8).contains(&index));
        // SAFETY: `new`'s contract: the record is valid for its 32 bytes, 32-byte aligned,
        // and only accessed atomically. Words 1..8 (bytes 4..32) lie inside it, are
        // 4-byte aligned, and are only ever accessed as 32-bit words (never as parts of
        // another size), so no mixed-size accesses race.
        unsafe { AtomicU32::from_ptr((self.0 as *mut u32).add(index)) }
    }

    /// The status byte, with Acquire: once non-zero, the other fields are visible.
    pub fn status(&self) -> u8 {
        self.byte_atomic(0).load(Ordering::Acquire)
    }

    /// Zeroes the whole record before its descriptor is submitted.
    pub fn clear(&self) {
        for i in 1..8 {
            self.word_atomic(i).store(0, Ordering::Relaxed);
        }
        for i in 0..4 {
            self.byte_atomic(i).store(0, Ordering::Relaxed);
        }
    }

    /// Reads the record (after a non-zero [`status`](Self::status)).
    pub fn read(&self) -> CompletionRecord {
        let status = self.status();
        let word = |i: usize| self.word_atomic(i).load(Ordering::Relaxed);
        let mut op_specific = [0u8; 16];
        for i in 0..4 {
            op_specific[i * 4..i * 4 + 4].copy_from_slice(&word(4 + i).to_le_bytes());
        }
        CompletionRecord {
            status,
            result: self.byte_atomic(1).load(Ordering::Relaxed),
            fault_info: self.byte_atomic(2).load(Ordering::Relaxed),
            rsvd: self.byte_atomic(3).load(Ordering::Relaxed),
            bytes_completed: word(1),
            fault_addr: u64::from(word(2)) | (u64::from(word(3)) << 32),
            op_specific,
        }
    }

    /// Writes a whole record as the device does: every field, then the status byte with
    /// Release.
    pub fn complete(&self, rec: &CompletionRecord) {
        let store = |i: usize, v: u32| self.word_atomic(i).store(v, Ordering::Relaxed);
        store(1, rec.bytes_completed);
        store(2, rec.fault_addr as u32);
        store(3, (rec.fault_addr >> 32) as u32);
        for i in 0..4 {
            let mut w = [0u8; 4];
            w.copy_from_slice(&rec.op_specific[i * 4..i * 4 + 4]);
            store(4 + i, u32::from_le_bytes(w));
        }
        self.byte_atomic(1).store(rec.result, Ordering::Relaxed);
        self.byte_atomic(2).store(rec.fault_info, Ordering::Relaxed);
        self.byte_atomic(3).store(rec.rsvd, Ordering::Relaxed);
        self.byte_atomic(0).store(rec.status, Ordering::Release);
    }
}

/// Why the device did not complete a descriptor: every non-success completion status,
/// decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DsaError {
    /// Page fault with block-on-fault clear (0x03): the first `bytes_completed` bytes are
    /// done (from the end, when `result` is 1), `fault_addr` faulted.
    #[error(
        "page fault at {fault_addr:#x} on a {} after {bytes_completed} bytes",
        if *write { "write" } else { "read" }
    )]
    PageFault {
        /// Bytes completed before the fault.
        bytes_completed: u32,
        /// The faulting address.
        fault_addr: u64,
        /// Whether the fault was on a write.
        write: bool,
        /// The record's result byte: 0 when the bytes done are a prefix.
        result: u8,
    },
    /// Page fault on an interrupt handle or readback address (0x04).
    #[error("page fault on an interrupt handle or readback address at {fault_addr:#x}")]
    PageFaultIr {
        /// The faulting address.
        fault_addr: u64,
    },
    /// A descriptor of the batch failed (0x05).
    #[error("batch failed after {descs_completed} descriptors")]
    BatchFailed {
        /// Descriptors completed.
        descs_completed: u32,
    },
    /// Page fault reading the batch's descriptor list (0x06).
    #[error("page fault reading a batch's descriptor list at {fault_addr:#x}")]
    BatchPageFault {
        /// The faulting address.
        fault_addr: u64,
    },
    /// Delta record offsets do not increase (0x07).
    #[error("delta record offsets do not increase")]
    DeltaOffsetNotIncreasing,
    /// Delta record offset out of range (0x08).
    #[error("delta record offset out of range")]
    DeltaOffsetOutOfRange,
    /// DIF error (0x09).
    #[error("DIF check error")]
    DifError,
    /// Unsupported opcode (0x10).
    #[error("unsupported opcode")]
    BadOpcode,
    /// Invalid flags (0x11).
    #[error("invalid descriptor flags {flags:#x}")]
    InvalidFlags {
        /// The offending flags the device reported.
        flags: u32,
    },
    /// A reserved field was not zero (0x12).
    #[error("a reserved descriptor field is not zero")]
    NonZeroReserved,
    /// Transfer size out of range (0x13).
    #[error("transfer size out of range")]
    TransferSizeOutOfRange,
    /// Descriptor count out of range (0x14).
    #[error("batch descriptor count out of range")]
    DescriptorCountOutOfRange,
    /// Delta record size out of range (0x15).
    #[error("delta record size out of range")]
    DeltaRecordSizeOutOfRange,
    /// Overlapping buffers (0x16).
    #[error("source and destination overlap")]
    OverlappingBuffers,
    /// Dualcast destinations misaligned (0x17).
    #[error("dualcast destinations misaligned")]
    DualcastMisaligned,
    /// Descriptor list misaligned (0x18).
    #[error("batch descriptor list misaligned")]
    DescriptorListMisaligned,
    /// Invalid interrupt handle (0x19).
    #[error("invalid interrupt handle")]
    InvalidInterruptHandle,
    /// The completion record address could not be translated (0x1a).
    #[error("completion record address translation failed")]
    CompletionRecordTranslation,
    /// Completion record misaligned (0x1b).
    #[error("completion record address misaligned")]
    CompletionRecordMisaligned,
    /// Source or destination misaligned (0x1c).
    #[error("address misaligned")]
    AddressMisaligned,
    /// Privileged descriptor from an unprivileged submitter (0x1d).
    #[error("privileged descriptor refused")]
    PrivilegeRefused,
    /// Traffic class configuration error (0x1e).
    #[error("traffic class configuration error")]
    TrafficClassConfig,
    /// Page fault on a readback address (0x1f).
    #[error("page fault on a readback address")]
    ReadbackPageFault,
    /// Hardware error (0x20, 0x21).
    #[error("hardware error (status {code:#x})")]
    HardwareError {
        /// The status code.
        code: u8,
    },
    /// Address translation failure (0x22).
    #[error("address translation failure")]
    TranslationFailure,
    /// The portal refused the descriptor; it never reached the device (provider-internal).
    #[error("the work queue refused the descriptor")]
    NotSubmitted,
    /// Cancelled before it reached the device (provider-internal).
    #[error("cancelled before submission")]
    Cancelled,
    /// A status code this crate does not know.
    #[error("unknown completion status {code:#x}")]
    Unknown {
        /// The status code.
        code: u8,
    },
}

impl DsaError {
    /// For a partial completion whose done bytes are a prefix, how many: a page fault
    /// with block-on-fault clear and `result` 0.
    pub fn prefix_done(&self) -> Option<usize> {
        match *self {
            DsaError::PageFault {
                bytes_completed,
                result: 0,
                ..
            } => Some(bytes_completed as usize),
            _ => None,
        }
    }
}

/// Decodes a written record: `None` while the status is 0 (not written), `Ok` for the two
/// success codes, the typed error otherwise.
pub fn decode(rec: &CompletionRecord) -> Option<Result<(), DsaError>> {
    let code = rec.status & status::MASK;
    let write = rec.status & status::WRITE != 0;
    let invalid_flags = u32::from_le_bytes([
        rec.op_specific[0],
        rec.op_specific[1],
        rec.op_specific[2],
        0,
    ]);
    use status as s;
    let err = match code {
        s::NONE => return None,
        s::SUCCESS | s::SUCCESS_PRED => return Some(Ok(())),
        s::PAGE_FAULT_NOBOF => DsaError::PageFault {
            bytes_completed: rec.bytes_completed,
            fault_addr: rec.fault_addr,
            write,
            result: rec.result,
        },
        s::PAGE_FAULT_IR => DsaError::PageFaultIr {
            fault_addr: rec.fault_addr,
        },
        s::BATCH_FAIL => DsaError::BatchFailed {
            descs_completed: rec.bytes_completed,
        },
        s::BATCH_PAGE_FAULT => DsaError::BatchPageFault {
            fault_addr: rec.fault_addr,
        },
        s::DR_OFFSET_NOINC => DsaError::DeltaOffsetNotIncreasing,
        s::DR_OFFSET_ERANGE => DsaError::DeltaOffsetOutOfRange,
        s::DIF_ERR => DsaError::DifError,
        s::BAD_OPCODE => DsaError::BadOpcode,
        s::INVALID_FLAGS => DsaError::InvalidFlags {
            flags: invalid_flags,
        },
        s::NOZERO_RESERVE => DsaError::NonZeroReserved,
        s::XFER_ERANGE => DsaError::TransferSizeOutOfRange,
        s::DESC_CNT_ERANGE => DsaError::DescriptorCountOutOfRange,
        s::DR_ERANGE => DsaError::DeltaRecordSizeOutOfRange,
        s::OVERLAP_BUFFERS => DsaError::OverlappingBuffers,
        s::DCAST_ERR => DsaError::DualcastMisaligned,
        s::DESCLIST_ALIGN => DsaError::DescriptorListMisaligned,
        s::INT_HANDLE_INVAL => DsaError::InvalidInterruptHandle,
        s::CRA_XLAT => DsaError::CompletionRecordTranslation,
        s::CRA_ALIGN => DsaError::CompletionRecordMisaligned,
        s::ADDR_ALIGN => DsaError::AddressMisaligned,
        s::PRIV_BAD => DsaError::PrivilegeRefused,
        s::TRAFFIC_CLASS_CONF => DsaError::TrafficClassConfig,
        s::PFAULT_RDBA => DsaError::ReadbackPageFault,
        s::HW_ERR1 | s::HW_ERR_DRB => DsaError::HardwareError { code },
        s::TRANSLATION_FAIL => DsaError::TranslationFailure,
        s::NOT_SUBMITTED => DsaError::NotSubmitted,
        s::CANCELLED => DsaError::Cancelled,
        code => DsaError::Unknown { code },
    };
    Some(Err(err))
}
