use super::channel::{Failures, FAILURES_KEPT};
use super::discover::{self, op_cap_has};
use super::hw::{decode, flags, opcode, status};
use super::*;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------
// Formats
// ---------------------------------------------------------------------------------------

#[test]
fn work_descriptor_bytes_sit_at_the_uapi_offsets() {
    let mut d = WorkDescriptor::new(opcode::MEMMOVE, flags::CRAV | flags::RCR | flags::CC);
    d.pasid_priv = 0x8000_0123;
    d.completion_addr = 0x1111_2222_3333_4440;
    d.src_addr = 0xaaaa_bbbb_cccc_dddd;
    d.dst_addr = 0x0102_0304_0506_0708;
    d.xfer_size = 0xdead_beef;
    d.int_handle = 0x5a5a;
    d.op_specific[0] = 0x77;
    let b = d.to_bytes();
    assert_eq!(&b[0..4], &0x8000_0123u32.to_le_bytes());
    // flags:24 then opcode:8 -> the opcode is byte 7.
    assert_eq!(b[7], opcode::MEMMOVE);
    assert_eq!(
        u32::from_le_bytes([b[4], b[5], b[6], 0]),
        flags::CRAV | flags::RCR | flags::CC
    );
    assert_eq!(&b[8..16], &0x1111_2222_3333_4440u64.to_le_bytes());
    assert_eq!(&b[16..24], &0xaaaa_bbbb_cccc_ddddu64.to_le_bytes());
    assert_eq!(&b[24..32], &0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!(&b[32..36], &0xdead_beefu32.to_le_bytes());
    assert_eq!(&b[36..38], &0x5a5au16.to_le_bytes());
    assert_eq!(&b[38..40], &[0, 0]);
    assert_eq!(b[40], 0x77);
    assert_eq!(WorkDescriptor::from_bytes(&b), d);
    // In memory, the struct is exactly these bytes (x86 is little-endian).
    // SAFETY: WorkDescriptor is 64 bytes of plain integers without padding.
    let raw: [u8; 64] = unsafe { std::mem::transmute(d) };
    assert_eq!(raw, b);
}

#[test]
fn completion_record_fields_sit_at_the_uapi_offsets() {
    let mut storage = CompletionRecord::default();
    let ptr: *mut CompletionRecord = &mut storage;
    assert_eq!(ptr as usize % 32, 0);
    // SAFETY: a local record, accessed only through the RecordRef while it lives.
    let r = unsafe { hw::RecordRef::new(ptr) };
    let mut want = CompletionRecord {
        status: status::PAGE_FAULT_NOBOF | status::WRITE,
        result: 0,
        fault_info: 0x5,
        rsvd: 0,
        bytes_completed: 4096,
        fault_addr: 0x7fff_0000_1000,
        op_specific: [0; 16],
    };
    want.op_specific[0] = 0x40;
    r.complete(&want);
    assert_eq!(r.read(), want);
    // SAFETY: no other access is live; the record is 32 plain bytes.
    let raw: [u8; 32] = unsafe { std::mem::transmute(storage) };
    assert_eq!(raw[0], 0x83);
    assert_eq!(raw[2], 0x5);
    assert_eq!(&raw[4..8], &4096u32.to_le_bytes());
    assert_eq!(&raw[8..16], &0x7fff_0000_1000u64.to_le_bytes());
    assert_eq!(raw[16], 0x40);
    r.clear();
    assert_eq!(r.status(), 0);
    assert_eq!(r.read(), CompletionRecord::default());
}

fn rec(code: u8) -> CompletionRecord {
    CompletionRecord {
        status: code,
        result: 0,
        fault_info: 0,
        rsvd: 0,
        bytes_completed: 100,
        fault_addr: 0x1000,
        op_specific: [0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    }
}

#[test]
fn every_status_code_decodes_to_its_own_outcome() {
    use DsaError as E;
    let table: Vec<(u8, Option<Result<(), DsaError>>)> = vec![
        (status::NONE, None),
        (status::SUCCESS, Some(Ok(()))),
        (status::SUCCESS_PRED, Some(Ok(()))),
        (
            status::PAGE_FAULT_NOBOF,
            Some(Err(E::PageFault {
                bytes_completed: 100,
                fault_addr: 0x1000,
                write: false,
                result: 0,
            })),
        ),
        (
            status::PAGE_FAULT_NOBOF | status::WRITE,
            Some(Err(E::PageFault {
                bytes_completed: 100,
                fault_addr: 0x1000,
                write: true,
                result: 0,
            })),
        ),
        (
            status::PAGE_FAULT_IR,
            Some(Err(E::PageFaultIr { fault_addr: 0x1000 })),
        ),
        (
            status::BATCH_FAIL,
            Some(Err(E::BatchFailed {
                descs_completed: 100,
            })),
        ),
        (
            status::BATCH_PAGE_FAULT,
            Some(Err(E::BatchPageFault { fault_addr: 0x1000 })),
        ),
        (
            status::DR_OFFSET_NOINC,
            Some(Err(E::DeltaOffsetNotIncreasing)),
        ),
        (
            status::DR_OFFSET_ERANGE,
            Some(Err(E::DeltaOffsetOutOfRange)),
        ),
        (status::DIF_ERR, Some(Err(E::DifError))),
        (status::BAD_OPCODE, Some(Err(E::BadOpcode))),
        (
            status::INVALID_FLAGS,
            Some(Err(E::InvalidFlags { flags: 0x56_3412 })),
        ),
        (status::NOZERO_RESERVE, Some(Err(E::NonZeroReserved))),
        (status::XFER_ERANGE, Some(Err(E::TransferSizeOutOfRange))),
        (
            status::DESC_CNT_ERANGE,
            Some(Err(E::DescriptorCountOutOfRange)),
        ),
        (status::DR_ERANGE, Some(Err(E::DeltaRecordSizeOutOfRange))),
        (status::OVERLAP_BUFFERS, Some(Err(E::OverlappingBuffers))),
        (status::DCAST_ERR, Some(Err(E::DualcastMisaligned))),
        (
            status::DESCLIST_ALIGN,
            Some(Err(E::DescriptorListMisaligned)),
        ),
        (
            status::INT_HANDLE_INVAL,
            Some(Err(E::InvalidInterruptHandle)),
        ),
        (status::CRA_XLAT, Some(Err(E::CompletionRecordTranslation))),
        (status::CRA_ALIGN, Some(Err(E::CompletionRecordMisaligned))),
        (status::ADDR_ALIGN, Some(Err(E::AddressMisaligned))),
        (status::PRIV_BAD, Some(Err(E::PrivilegeRefused))),
        (status::TRAFFIC_CLASS_CONF, Some(Err(E::TrafficClassConfig))),
        (status::PFAULT_RDBA, Some(Err(E::ReadbackPageFault))),
        (status::HW_ERR1, Some(Err(E::HardwareError { code: 0x20 }))),
        (
            status::HW_ERR_DRB,
            Some(Err(E::HardwareError { code: 0x21 })),
        ),
        (status::TRANSLATION_FAIL, Some(Err(E::TranslationFailure))),
        (status::NOT_SUBMITTED, Some(Err(E::NotSubmitted))),
        (status::CANCELLED, Some(Err(E::Cancelled))),
        (0x0a, Some(Err(E::Unknown { code: 0x0a }))),
        (0x23, Some(Err(E::Unknown { code: 0x23 }))),
    ];
    for (code, want) in &table {
        assert_eq!(&decode(&rec(*code)), want, "status {code:#x}");
    }
    // Every code 0..0x80 decodes (none panics) and each error has a message.
    for code in 0..=0xffu8 {
        if let Some(Err(e)) = decode(&rec(code)) {
            assert!(!e.to_string().is_empty());
        }
    }
    // Only an in-order page fault is a usable prefix.
    let mut backwards = rec(status::PAGE_FAULT_NOBOF);
    backwards.result = 1;
    assert_eq!(decode(&backwards).unwrap().unwrap_err().prefix_done(), None);
    assert_eq!(
        decode(&rec(status::PAGE_FAULT_NOBOF))
            .unwrap()
            .unwrap_err()
            .prefix_done(),
        Some(100)
    );
}

// ---------------------------------------------------------------------------------------
// Discovery against fake trees
// ---------------------------------------------------------------------------------------

struct FakeTree {
    root: PathBuf,
}

impl FakeTree {
    fn new(tag: &str) -> FakeTree {
        let root = std::env::temp_dir().join(format!(
            "dmaengine-dsa-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("sys")).unwrap();
        std::fs::create_dir_all(root.join("dev")).unwrap();
        FakeTree { root }
    }

    fn paths(&self) -> DsaPaths {
        DsaPaths {
            sysfs: self.root.join("sys"),
            dev: self.root.join("dev"),
        }
    }

    fn write(dir: &Path, attrs: &[(&str, &str)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (k, v) in attrs {
            std::fs::write(dir.join(k), format!("{v}\n")).unwrap();
        }
    }

    fn device(&self, name: &str, op_cap: &str) {
        Self::write(&self.root.join("sys").join(name), &[("op_cap", op_cap)]);
    }

    fn wq(&self, name: &str, wq_type: &str, state: &str, mode: &str, char_dev: bool) {
        Self::write(
            &self.root.join("sys").join(name),
            &[
                ("type", wq_type),
                ("state", state),
                ("mode", mode),
                ("size", "16"),
                ("max_transfer_size", "2097152"),
                ("max_batch_size", "32"),
            ],
        );
        if char_dev {
            std::fs::write(self.root.join("dev").join(name), b"").unwrap();
        }
    }
}

impl Drop for FakeTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Opcodes NOOP, BATCH, DRAIN, MEMMOVE, MEMFILL (bits 0..4) in the newer format.
const OP_CAP_NEW: &str = "00000000,00000000,00000000,00000000,00000000,00000000,00000000,0000001f";
const CPU: CpuFeatures = CpuFeatures {
    movdir64b: true,
    enqcmd: true,
};

#[test]
fn op_cap_parses_both_kernel_formats() {
    assert_eq!(op_cap_has(OP_CAP_NEW, opcode::MEMMOVE), Some(true));
    assert_eq!(op_cap_has(OP_CAP_NEW, opcode::COMPARE), Some(false));
    let high = "00000001,00000000,00000000,00000000,00000000,00000000,00000000,00000008";
    assert_eq!(op_cap_has(high, 224), Some(true));
    assert_eq!(op_cap_has(high, opcode::MEMMOVE), Some(true));
    assert_eq!(op_cap_has(high, opcode::BATCH), Some(false));
    let old = "0x1f 0x0 0x0 0x0";
    assert_eq!(op_cap_has(old, opcode::BATCH), Some(true));
    assert_eq!(op_cap_has(old, opcode::CRCGEN), Some(false));
    assert_eq!(op_cap_has("0x10", opcode::MEMFILL), Some(true));
    assert_eq!(op_cap_has("zz,zz", 0), None);
}

#[test]
fn present_and_enabled_user_wq_is_found() {
    let t = FakeTree::new("present");
    t.device("dsa0", OP_CAP_NEW);
    t.wq("wq0.0", "user", "enabled", "dedicated", true);
    let wq = discover::find(&t.paths(), CPU, &WqSelection::Any).unwrap();
    assert_eq!(wq.name, "wq0.0");
    assert_eq!(wq.device, "dsa0");
    assert_eq!(wq.mode, WqMode::Dedicated);
    assert_eq!(wq.size, 16);
    assert_eq!(wq.max_transfer_size, 2 << 20);
    assert_eq!(wq.max_batch_size, 32);
    assert!(wq.memmove && wq.memfill && wq.batch);
    assert_eq!(wq.char_dev, t.paths().dev.join("wq0.0"));
    // By name and by path too.
    let by_path = WqSelection::parse(&t.paths().dev.join("wq0.0").to_string_lossy());
    assert_eq!(by_path, WqSelection::Named("wq0.0".into()));
    assert_eq!(discover::find(&t.paths(), CPU, &by_path).unwrap(), wq);
    assert_eq!(WqSelection::parse("any"), WqSelection::Any);
}

#[test]
fn disabled_wq_is_rejected_with_its_state() {
    let t = FakeTree::new("disabled");
    t.device("dsa0", OP_CAP_NEW);
    t.wq("wq0.0", "user", "disabled", "dedicated", true);
    match discover::find(&t.paths(), CPU, &WqSelection::Any) {
        Err(DiscoveryError::NoUsableWq { rejected }) => assert_eq!(
            rejected,
            vec![(
                "wq0.0".to_string(),
                WqRejection::NotEnabled {
                    state: "disabled".into()
                }
            )]
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn kernel_type_wq_is_rejected_and_a_user_one_after_it_is_taken() {
    let t = FakeTree::new("kernel");
    t.device("dsa0", OP_CAP_NEW);
    t.wq("wq0.0", "kernel", "enabled", "dedicated", false);
    match discover::find(&t.paths(), CPU, &WqSelection::Any) {
        Err(e @ DiscoveryError::NoUsableWq { .. }) => {
            assert!(e.to_string().contains("wq0.0: type is \"kernel\""), "{e}")
        }
        other => panic!("{other:?}"),
    }
    match discover::find(&t.paths(), CPU, &WqSelection::Named("wq0.0".into())) {
        Err(DiscoveryError::WqUnusable { name, reason }) => {
            assert_eq!(name, "wq0.0");
            assert_eq!(
                reason,
                WqRejection::NotUser {
                    wq_type: "kernel".into()
                }
            );
        }
        other => panic!("{other:?}"),
    }
    t.wq("wq0.1", "user", "enabled", "shared", true);
    let wq = discover::find(&t.paths(), CPU, &WqSelection::Any).unwrap();
    assert_eq!(wq.name, "wq0.1");
}

#[test]
fn shared_wq_is_found_as_shared() {
    let t = FakeTree::new("shared");
    t.device("dsa0", "0x1f 0x0 0x0 0x0");
    t.wq("wq0.0", "user", "enabled", "shared", true);
    let wq = discover::find(&t.paths(), CPU, &WqSelection::Any).unwrap();
    assert_eq!(wq.mode, WqMode::Shared);
    // A shared WQ needs only ENQCMD.
    let enq_only = CpuFeatures {
        movdir64b: false,
        enqcmd: true,
    };
    assert!(discover::find(&t.paths(), enq_only, &WqSelection::Any).is_ok());
}

#[test]
fn missing_char_device_is_named() {
    let t = FakeTree::new("nochar");
    t.device("dsa0", OP_CAP_NEW);
    t.wq("wq0.0", "user", "enabled", "dedicated", false);
    match discover::find(&t.paths(), CPU, &WqSelection::Any) {
        Err(DiscoveryError::NoUsableWq { rejected }) => assert_eq!(
            rejected,
            vec![(
                "wq0.0".to_string(),
                WqRejection::NoCharDevice {
                    path: t.paths().dev.join("wq0.0")
                }
            )]
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_cpu_flag_no_bus_no_wq_and_unknown_name_are_typed() {
    let t = FakeTree::new("cpu");
    t.device("dsa0", OP_CAP_NEW);
    t.wq("wq0.0", "user", "enabled", "dedicated", true);
    assert!(matches!(
        discover::find(&t.paths(), CpuFeatures::default(), &WqSelection::Any),
        Err(DiscoveryError::NoCpuSupport)
    ));
    let gone = DsaPaths {
        sysfs: t.root.join("nowhere"),
        dev: t.root.join("dev"),
    };
    match discover::find(&gone, CPU, &WqSelection::Any) {
        Err(DiscoveryError::NoBus { path }) => assert_eq!(path, t.root.join("nowhere")),
        other => panic!("{other:?}"),
    }
    match discover::find(&t.paths(), CPU, &WqSelection::Named("wq3.1".into())) {
        Err(DiscoveryError::WqNotFound { name, .. }) => assert_eq!(name, "wq3.1"),
        other => panic!("{other:?}"),
    }
    let empty = FakeTree::new("empty");
    empty.device("dsa0", OP_CAP_NEW);
    assert!(matches!(
        discover::find(&empty.paths(), CPU, &WqSelection::Any),
        Err(DiscoveryError::NoWorkQueues { .. })
    ));
}

#[test]
fn a_char_device_that_cannot_be_opened_is_a_typed_error() {
    let t = FakeTree::new("open");
    t.device("dsa0", OP_CAP_NEW);
    t.wq("wq0.0", "user", "enabled", "dedicated", false);
    // A directory where the character device should be: opening it for writing fails.
    std::fs::create_dir_all(t.paths().dev.join("wq0.0")).unwrap();
    let wq = discover::find(&t.paths(), CPU, &WqSelection::Any).unwrap();
    match DsaDevice::builder().open(&wq, CPU) {
        Err(DiscoveryError::Io { path, .. }) => assert_eq!(path, t.paths().dev.join("wq0.0")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn failure_log_folds_old_entries_conservatively() {
    let mut f = Failures::default();
    let failed: Vec<u64> = (0..10_000u64).map(|i| i * 3 + 1).collect();
    for &s in &failed {
        f.insert(s, Some(s as usize));
    }
    assert!(f.exact.len() <= FAILURES_KEPT + 1);
    // Every failure still reads as failed; recent ones keep their bytes done.
    for &s in &failed {
        assert!(f.get(s).is_some(), "failure {s} lost");
    }
    let last = *failed.last().unwrap();
    assert_eq!(f.get(last), Some(Some(last as usize)));
    // An old folded one is failed with nothing known (the caller redoes all of it).
    assert_eq!(f.get(1), Some(None));
    // A recent success stays a success.
    assert_eq!(f.get(last + 1), None);
}
