//! The batches of the virtio-net path: received buffers filled by one `recvmmsg` (with
//! adjacent swapped segments put back in order), and frames queued for one `sendmmsg`.

use std::io;
use std::os::unix::io::RawFd;

use super::super::ackguard;
use super::super::vnet::VNET_HDR_LEN;
use super::super::LinkStats;
use super::sys::{set_int_opt, PACKET_QDISC_BYPASS};
use super::MAX_FRAME;

/// One receive buffer of the batched path: header, largest frame, room for a VLAN tag.
const RX_BUF: usize = VNET_HDR_LEN + MAX_FRAME + 64;

/// Frames per `recvmmsg`/`sendmmsg` call.
pub(super) const BATCH: usize = 32;

/// Receive batches one poll may take before the link lets smoltcp transmit: bounds the
/// time between a frame's arrival and the ACKs it triggers under a flood.
const MAX_RX_BATCHES_PER_POLL: u32 = 8;

/// Received buffers: filled by one `recvmmsg`, handed out in order.
pub(super) struct RxBatch {
    pub(super) bufs: Vec<Box<[u8]>>,
    pub(super) lens: [usize; BATCH],
    pub(super) next: usize,
    pub(super) count: usize,
    /// Batches taken since the last flush (the per-poll budget).
    pub(super) batches: u32,
}

/// Frames queued for one `sendmmsg`.
pub(super) struct TxBatch {
    /// `PACKET_QDISC_BYPASS` is on.
    pub(super) bypass: bool,
    bufs: Vec<Vec<u8>>,
    lens: [usize; BATCH],
    gso: [bool; BATCH],
    pub(super) count: usize,
}

impl RxBatch {
    /// An empty batch of `BATCH` receive buffers, each big enough for any frame.
    pub(super) fn new() -> Self {
        RxBatch {
            bufs: (0..BATCH)
                .map(|_| vec![0u8; RX_BUF].into_boxed_slice())
                .collect(),
            lens: [0; BATCH],
            next: 0,
            count: 0,
            batches: 0,
        }
    }

    /// Fills the batch with one non-blocking `recvmmsg`; `false` if nothing came (or the
    /// per-poll budget is spent).
    pub(super) fn refill(&mut self, fd: RawFd, stats: &mut LinkStats, errors: &mut u64) -> bool {
        self.next = 0;
        self.count = 0;
        if self.batches >= MAX_RX_BATCHES_PER_POLL {
            // End this drain so smoltcp can transmit; the next one starts afresh.
            self.batches = 0;
            return false;
        }
        // SAFETY: an all-zero `iovec` is a valid value (a null pointer and a zero
        // length); every entry we pass is filled in below.
        let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: an all-zero `mmsghdr` is a valid value (null pointers, zero lengths and
        // flags); every entry we pass is filled in below.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for ((v, m), buf) in iov
            .iter_mut()
            .zip(msgs.iter_mut())
            .zip(self.bufs.iter_mut())
        {
            v.iov_base = buf.as_mut_ptr().cast();
            v.iov_len = buf.len();
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs` holds BATCH headers, each pointing at one `iovec` of `iov`,
        // which points at a distinct, exclusively borrowed buffer of `iov_len` bytes in
        // `self.bufs`; all of these live until the call returns, and the kernel writes
        // at most `iov_len` bytes into each buffer and the `msg_len`/`msg_flags` fields.
        // MSG_DONTWAIT: never blocks; a null timeout is allowed.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                stats.rx_empty_syscalls += 1;
            } else if err.kind() != io::ErrorKind::Interrupted {
                *errors += 1;
                tracing::debug!(%err, "packet link: recvmmsg failed");
            }
            return false;
        }
        self.batches += 1;
        stats.rx_syscalls += 1;
        let mut kept = 0;
        for (r, m) in msgs.iter().enumerate().take(n as usize) {
            let len = m.msg_len as usize;
            if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len < VNET_HDR_LEN {
                stats.rx_dropped += 1;
                continue;
            }
            // Keep the buffers of whole frames at the front, in order (the kernel is
            // done with the pointers in `msgs`).
            self.bufs.swap(kept, r);
            self.lens[kept] = len;
            kept += 1;
        }
        self.count = kept;
        // Frames of one connection may arrive swapped (delivered by two CPUs at once);
        // smoltcp would answer the first with a duplicate ACK and the kernel would
        // resend a whole super-frame. Put adjacent swapped segments back in order.
        for i in 1..kept {
            let (a, b) = self.bufs.split_at(i);
            let earlier = &a[i - 1][VNET_HDR_LEN..self.lens[i - 1]];
            let later = &b[0][VNET_HDR_LEN..self.lens[i]];
            if ackguard::swapped(earlier, later) {
                self.bufs.swap(i - 1, i);
                self.lens.swap(i - 1, i);
                stats.rx_reordered += 1;
            }
        }
        kept > 0
    }
}

impl TxBatch {
    /// An empty send queue; `bypass` tells whether `PACKET_QDISC_BYPASS` is on.
    pub(super) fn new(bypass: bool) -> Self {
        TxBatch {
            bypass,
            bufs: (0..BATCH).map(|_| Vec::new()).collect(),
            lens: [0; BATCH],
            gso: [false; BATCH],
            count: 0,
        }
    }

    /// The next free buffer, `len` bytes long.
    pub(super) fn slot(&mut self, len: usize) -> &mut [u8] {
        let buf = &mut self.bufs[self.count];
        if buf.len() < len {
            buf.resize(len, 0);
        }
        self.lens[self.count] = len;
        &mut buf[..len]
    }

    /// Marks the buffer `slot` handed out as queued.
    pub(super) fn commit(&mut self, gso: bool) {
        self.gso[self.count] = gso;
        self.count += 1;
    }

    /// Sends every queued buffer with `sendmmsg`, counting what the kernel took and
    /// refused; the queue is empty afterwards.
    pub(super) fn flush(&mut self, fd: RawFd, stats: &mut LinkStats) {
        let count = self.count;
        if count == 0 {
            return;
        }
        self.count = 0;
        // SAFETY: an all-zero `iovec` is a valid value (a null pointer and a zero
        // length); the first `count` entries are filled in below and only those are passed.
        let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: an all-zero `mmsghdr` is a valid value (null pointers, zero lengths and
        // flags); the first `count` entries are filled in below and only those are passed.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..count {
            iov[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            iov[i].iov_len = self.lens[i];
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        let mut start = 0;
        while start < count {
            // SAFETY: entries `start..count` of `msgs` each point at one `iovec` that
            // points at `lens[i]` initialised bytes of `bufs[i]`; all live until the call
            // returns. The socket is bound, so no address is needed (null `msg_name`).
            // sendmmsg(2) reads the buffers and writes only `msg_len`.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    msgs[start..].as_mut_ptr(),
                    (count - start) as libc::c_uint,
                    0,
                )
            };
            stats.tx_syscalls += 1;
            if r < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if self.bypass && self.gso[start] && err.raw_os_error() == Some(libc::ENOBUFS) {
                    // With the queueing discipline bypassed, the kernel drops a
                    // super-frame it would have to cut in software (an interface without
                    // TSO). Go through the queueing discipline from now on, and retry.
                    if set_int_opt(fd, libc::SOL_PACKET, PACKET_QDISC_BYPASS, 0).is_ok() {
                        self.bypass = false;
                        tracing::info!(
                            "packet link: the interface cuts super-frames in software; \
                             sending through its queueing discipline"
                        );
                        continue;
                    }
                }
                // The first frame was refused (e.g. ENOBUFS: the peer's queue is full);
                // drop it, as a NIC would, and send the rest.
                stats.tx_dropped += 1;
                tracing::trace!(%err, "packet link: send refused, frame dropped");
                start += 1;
                continue;
            }
            for i in start..start + r as usize {
                stats.count_tx(self.lens[i] - VNET_HDR_LEN);
                if self.gso[i] {
                    stats.tx_gso_frames += 1;
                }
            }
            start += r as usize;
        }
    }
}
