//! A device that never answers must not hang the engine: forced removal tears it down
//! outside the engine lock, and `remove_device_within` returns after its timeout.
#![cfg(not(loom))]

mod common;

use dmaengine::{
    Cap, CapMask, Descriptor, Engine, Provider, ProviderError, ProviderSubmitError, SoftwareDevice,
    TxStatus, UnregisterError,
};
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// A device that accepts descriptors and never performs them; `terminate_all` and
/// `free_chan_resources` block until the test lets them go (`answer`). It never touches
/// memory, so the promises of the Provider rules hold trivially once it answers.
struct Mute {
    next: AtomicU64,
    answered: Mutex<bool>,
    wake: Condvar,
    entered: Mutex<Option<mpsc::Sender<()>>>,
}

impl Mute {
    fn new(entered: mpsc::Sender<()>) -> Arc<Self> {
        Arc::new(Mute {
            next: AtomicU64::new(0),
            answered: Mutex::new(false),
            wake: Condvar::new(),
            entered: Mutex::new(Some(entered)),
        })
    }

    fn block_until_answered(&self) {
        if let Some(tx) = self.entered.lock().take() {
            let _ = tx.send(());
        }
        let mut answered = self.answered.lock();
        while !*answered {
            self.wake.wait(&mut answered);
        }
    }

    fn answer(&self) {
        *self.answered.lock() = true;
        self.wake.notify_all();
    }
}

// SAFETY: it never accesses the memory of any descriptor, so rules 1-5 hold whatever it
// reports; `terminate_all` and `free_chan_resources` return only after `answer`, and
// report nothing done before.
unsafe impl Provider for Mute {
    fn name(&self) -> &str {
        "mute"
    }
    fn capabilities(&self) -> CapMask {
        Cap::Memcpy.into()
    }
    fn operations(&self) -> CapMask {
        Cap::Memcpy.into()
    }
    fn channel_count(&self) -> usize {
        1
    }
    fn alloc_chan_resources(&self, _chan: usize) -> Result<(), ProviderError> {
        Ok(())
    }
    fn free_chan_resources(&self, _chan: usize) {
        self.block_until_answered();
    }
    unsafe fn submit(&self, _chan: usize, _desc: Descriptor) -> Result<u64, ProviderSubmitError> {
        Ok(self.next.fetch_add(1, Ordering::SeqCst) + 1)
    }
    fn issue_pending(&self, _chan: usize) {}
    fn tx_status(&self, _chan: usize, _seq: u64) -> TxStatus {
        if *self.answered.lock() {
            TxStatus::Error
        } else {
            TxStatus::InProgress
        }
    }
    fn terminate_all(&self, _chan: usize) {
        self.block_until_answered();
    }
    fn error_count(&self, _chan: usize) -> u64 {
        0
    }
}

/// Runs `f` on another thread and waits for it generously: a hang fails the test instead
/// of hanging it.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{what} hung"))
}

#[test]
fn removing_a_device_that_never_answers_does_not_hang_the_engine() {
    let engine = Engine::new();
    let (entered_tx, entered_rx) = mpsc::channel();
    let mute = Mute::new(entered_tx);
    let id = engine.register_device(mute.clone()).unwrap();
    let client = engine.client(Cap::Memcpy.into());
    let chan = client.find_channel(Cap::Memcpy).expect("the mute channel");
    // One copy in flight that the device will never perform.
    let src: &'static [u8] = Box::leak(vec![1u8; 64].into_boxed_slice());
    let dst: &'static mut [u8] = Box::leak(vec![0u8; 64].into_boxed_slice());
    // SAFETY: both buffers are leaked, so they stay valid and unaliased forever.
    let cookie = unsafe { chan.memcpy_raw(dst.as_mut_ptr(), src.as_ptr(), 64) }.unwrap();

    // Forced removal with a bound: returns after its timeout, the device out of the engine.
    let remover = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.remove_device_within(id, Duration::from_millis(100)))
    };
    entered_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the teardown reached the device");
    // While the teardown is stuck in the device, the engine answers.
    let other = {
        let engine = engine.clone();
        within("the engine during a stuck removal", move || {
            let sw = engine
                .register_device(SoftwareDevice::builder().channels(1).build())
                .unwrap();
            let snapshot = engine.snapshot();
            (sw, snapshot.devices.len())
        })
    };
    assert_eq!(other.1, 1, "only the software device is registered");
    let result = remover.join().unwrap();
    match result {
        Err(UnregisterError::Unresponsive {
            device, references, ..
        }) => {
            assert_eq!(device, id);
            assert_eq!(references, 1);
        }
        other => panic!("expected Unresponsive, got {other:?}"),
    }
    // Clients go on with the remaining device; the mute one refuses work.
    let fresh = client
        .find_channel(Cap::Memcpy)
        .expect("the software channel");
    assert_eq!(fresh.device(), other.0);
    // SAFETY: both buffers are leaked, so they stay valid and unaliased forever, however
    // long the mute device would keep a copy.
    let refused = unsafe { chan.memcpy_raw(dst.as_mut_ptr(), src.as_ptr(), 64) };
    assert!(refused.is_err());
    assert_eq!(chan.status(cookie).unwrap(), TxStatus::InProgress);

    // The device answers at last: the background teardown finishes.
    mute.answer();
    assert_eq!(chan.status(cookie).unwrap(), TxStatus::Error);
    drop(client);
    assert_eq!(engine.total_references(), 0);
    engine.unregister_device(other.0).unwrap();
}

#[test]
fn unbounded_forced_removal_holds_up_only_its_caller() {
    let engine = Engine::new();
    let (entered_tx, entered_rx) = mpsc::channel();
    let mute = Mute::new(entered_tx);
    let id = engine.register_device(mute.clone()).unwrap();
    let client = engine.client(Cap::Memcpy.into());
    assert!(client.find_channel(Cap::Memcpy).is_some());
    let remover = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.remove_device(id))
    };
    entered_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the teardown reached the device");
    // The engine lock is free: another client, a snapshot, a CPU-set change all proceed.
    let engine2 = engine.clone();
    let devices = within("the engine during a stuck removal", move || {
        let c = engine2.client(Cap::Memcpy.into());
        engine2.set_online_cpus(&engine2.online_cpus()).unwrap();
        let n = engine2.snapshot().devices.len();
        drop(c);
        n
    });
    assert_eq!(devices, 0);
    assert!(
        !remover.is_finished(),
        "removal returned before the device answered"
    );
    mute.answer();
    assert_eq!(remover.join().unwrap(), Ok(1));
    drop(client);
    assert_eq!(engine.total_references(), 0);
}

#[test]
fn a_whole_channel_abort_is_reported_to_the_others_as_such() {
    // A device that can only abort a whole channel (the Provider default): cancelling one
    // transfer fails the channel's other in-flight transfers too, and their owners can
    // tell that it was not their fault.
    let engine = Engine::new();
    let mock = common::MockDevice::new("m", Cap::Memcpy.into(), 1);
    engine.register_device(mock).unwrap();
    let client = engine.client(Cap::Memcpy.into());
    let chan = client.find_channel(Cap::Memcpy).unwrap();
    let src = [1u8; 16];
    let mut a = vec![0u8; 16];
    let mut b = vec![0u8; 16];
    // SAFETY: the mock copies synchronously at submit; nothing is in flight afterwards.
    let ca = unsafe { chan.memcpy_raw(a.as_mut_ptr(), src.as_ptr(), 16) }.unwrap();
    // SAFETY: the mock copies synchronously at submit, from and into live buffers of 16
    // bytes; nothing is in flight afterwards.
    let cb = unsafe { chan.memcpy_raw(b.as_mut_ptr(), src.as_ptr(), 16) }.unwrap();
    assert!(!chan.aborted_for_others(ca) && !chan.aborted_for_others(cb));
    assert_eq!(
        chan.terminate(&[ca], Duration::from_secs(1)),
        dmaengine::Terminated::WholeChannel
    );
    assert!(
        chan.aborted_for_others(cb),
        "b was covered by a's whole-channel abort"
    );
    // SAFETY: the mock copies synchronously at submit, from and into live buffers of 16
    // bytes; nothing is in flight afterwards.
    let cc = unsafe { chan.memcpy_raw(a.as_mut_ptr(), src.as_ptr(), 16) }.unwrap();
    assert!(
        !chan.aborted_for_others(cc),
        "a later transfer was not covered"
    );
}
