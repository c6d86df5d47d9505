//! Cancellation of the software device: exact (some descriptors) and bounded.

use super::*;
use crate::provider::Cancel;

fn device(channels: usize) -> Arc<SoftwareDevice> {
    let dev = SoftwareDevice::builder().channels(channels).build();
    for chan in 0..channels {
        dev.alloc_chan_resources(chan).unwrap();
    }
    dev
}

/// Submits a copy of `src` into `dst` without ringing the doorbell.
///
/// # Safety
///
/// Both buffers outlive the descriptor (the test waits for it to be done).
unsafe fn submit_copy(dev: &SoftwareDevice, chan: usize, dst: &mut [u8], src: &[u8]) -> u64 {
    let desc = Descriptor::Memcpy {
        dst: dst.as_mut_ptr(),
        src: src.as_ptr(),
        len: src.len(),
    };
    // SAFETY: the caller keeps both buffers alive and unaliased until the copy is done.
    unsafe { dev.submit(chan, desc) }.unwrap()
}

#[test]
fn cancelling_some_descriptors_leaves_the_others_to_run() {
    let dev = device(1);
    let src: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i + 1; 4096]).collect();
    let mut dst: Vec<Vec<u8>> = (0..4).map(|_| vec![0u8; 4096]).collect();
    let mut seqs = Vec::new();
    for (d, s) in dst.iter_mut().zip(&src) {
        // SAFETY: every buffer outlives the copies: all are done before the asserts below
        // read them (Exact confirms the cancelled ones, the wait the others).
        seqs.push(unsafe { submit_copy(&dev, 0, d, s) });
    }
    // Cancel the first and the third (one reader's copies); the others are someone else's.
    let cancelled = [seqs[0], seqs[2]];
    let deadline = Instant::now() + Duration::from_secs(10);
    assert_eq!(
        dev.terminate_within(0, Cancel::Only(&cancelled), deadline),
        Terminated::Exact
    );
    for &seq in &cancelled {
        assert_eq!(dev.tx_status(0, seq), TxStatus::Error);
    }
    for &seq in &[seqs[1], seqs[3]] {
        assert_eq!(dev.wait(0, seq, deadline), TxStatus::Complete);
    }
    assert_eq!(dst[0], vec![0u8; 4096], "a cancelled copy ran");
    assert_eq!(dst[2], vec![0u8; 4096], "a cancelled copy ran");
    assert_eq!(dst[1], src[1]);
    assert_eq!(dst[3], src[3]);
    assert_eq!(dev.error_count(0), 2, "only the cancelled ones failed");
    // Nothing stays listed: later descriptors run.
    assert_eq!(dev.chan(0).shared.cancel.listed.load(Ordering::Relaxed), 0);
    let mut late = vec![0u8; 64];
    // SAFETY: waited for below.
    let seq = unsafe { submit_copy(&dev, 0, &mut late, &src[3][..64]) };
    dev.issue_pending(0);
    assert_eq!(dev.wait(0, seq, deadline), TxStatus::Complete);
    assert_eq!(late, src[3][..64]);
}

#[test]
fn cancelling_what_already_finished_is_exact_and_fails_nothing() {
    let dev = device(1);
    let src = vec![9u8; 256];
    let mut dst = vec![0u8; 256];
    // SAFETY: waited for below.
    let seq = unsafe { submit_copy(&dev, 0, &mut dst, &src) };
    dev.issue_pending(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    assert_eq!(dev.wait(0, seq, deadline), TxStatus::Complete);
    assert_eq!(
        dev.terminate_within(0, Cancel::Only(&[seq]), deadline),
        Terminated::Exact
    );
    assert_eq!(dev.tx_status(0, seq), TxStatus::Complete);
    assert_eq!(dev.error_count(0), 0);
    assert_eq!(dst, src);
}

#[test]
fn a_worker_that_does_not_answer_bounds_terminate_within() {
    let dev = device(1);
    let src = vec![5u8; 4096];
    let mut dst = vec![0u8; 4096];
    let shared = dev.chan(0).shared.clone();
    let frozen = shared.freeze.write();
    // SAFETY: the copy is done (cancelled or run) before `dst` is read or freed: the
    // unfrozen `terminate_all` below confirms it.
    let seq = unsafe { submit_copy(&dev, 0, &mut dst, &src) };
    dev.issue_pending(0);
    let deadline = Instant::now() + Duration::from_millis(50);
    assert_eq!(
        dev.terminate_within(0, Cancel::All, deadline),
        Terminated::Pending
    );
    assert_eq!(
        dev.terminate_within(
            0,
            Cancel::Only(&[seq]),
            Instant::now() + Duration::from_millis(10)
        ),
        Terminated::Pending
    );
    assert_eq!(dev.tx_status(0, seq), TxStatus::InProgress);
    drop(frozen);
    dev.terminate_all(0);
    assert_eq!(
        dev.tx_status(0, seq),
        TxStatus::Error,
        "cancelled, never run"
    );
    assert_eq!(dst, vec![0u8; 4096]);
}

#[test]
fn many_threads_cancel_their_own_copies_and_never_anyone_elses() {
    // Eight threads share one channel; each submits batches and cancels every other batch
    // of its own. Every copy it did not cancel completes with its bytes; every one it
    // cancelled fails or completes (it may have started), and nobody else's fails.
    let dev = device(1);
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let dev = dev.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                for round in 0..200u32 {
                    let src: Vec<Vec<u8>> =
                        (0..4).map(|i| vec![t ^ i ^ round as u8; 512]).collect();
                    let mut dst: Vec<Vec<u8>> = (0..4).map(|_| vec![0u8; 512]).collect();
                    let mut seqs = Vec::new();
                    for (d, s) in dst.iter_mut().zip(&src) {
                        // SAFETY: each copy is done (waited for or confirmed cancelled)
                        // before the buffers are read or dropped at the end of the round.
                        seqs.push(unsafe { submit_copy(&dev, 0, d, s) });
                    }
                    dev.issue_pending(0);
                    let cancel = round % 2 == 0;
                    if cancel {
                        assert_eq!(
                            dev.terminate_within(0, Cancel::Only(&seqs), deadline),
                            Terminated::Exact
                        );
                    }
                    for (i, &seq) in seqs.iter().enumerate() {
                        let status = dev.wait(0, seq, deadline);
                        if cancel {
                            assert!(status.is_done());
                            if status == TxStatus::Error {
                                assert_eq!(dst[i], vec![0u8; 512]);
                            }
                        } else {
                            assert_eq!(
                                status,
                                TxStatus::Complete,
                                "thread {t} round {round}: another's cancel failed our copy"
                            );
                            assert_eq!(dst[i], src[i]);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(dev.chan(0).shared.cancel.listed.load(Ordering::Relaxed), 0);
}
