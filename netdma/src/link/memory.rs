//! An in-memory Ethernet link between two smoltcp stacks in the same process.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use smoltcp::phy::{self, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::EthernetFrame;

use super::{Link, LinkStats};

/// Default number of frames each direction of a [`memory_pair`] can hold.
pub const DEFAULT_QUEUE_FRAMES: usize = 1024;

/// What a [`MemoryLink`] does when a direction's queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueFull {
    /// Push back, as a device with a full transmit ring does: `transmit` hands smoltcp no
    /// token until the peer has received a frame, so smoltcp keeps the segment and sends
    /// it later. Nothing is lost. (Replies that smoltcp sends while *receiving* a frame,
    /// such as an ACK, are always queued, so two ends that both have full queues still
    /// drain each other; a queue may then exceed its capacity by at most one frame per
    /// frame its sender received.)
    #[default]
    Backpressure,
    /// Drop the frame, as a drop-tail router queue would, and count it in
    /// [`LinkStats::tx_dropped`]: for tests that want loss.
    Drop,
}

/// One direction of the cable: frames in flight plus recycled frame buffers.
#[derive(Debug)]
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
    capacity: usize,
    full: QueueFull,
}

#[derive(Debug)]
struct QueueState {
    frames: VecDeque<Vec<u8>>,
    /// Buffers the receiving end gave back; the sending end reuses them.
    free: Vec<Vec<u8>>,
    /// The sending end was dropped: no frame will ever arrive again.
    sender_gone: bool,
    /// The receiving end was dropped: frames sent are lost.
    receiver_gone: bool,
}

impl Queue {
    fn new(capacity: usize, full: QueueFull) -> Self {
        Queue {
            full,
            state: Mutex::new(QueueState {
                frames: VecDeque::with_capacity(capacity),
                free: Vec::new(),
                sender_gone: false,
                receiver_gone: false,
            }),
            ready: Condvar::new(),
            capacity,
        }
    }
}

/// One end of an in-memory Ethernet link (see [`memory_pair`]).
///
/// Frames sent on one end are received, in order, on the other. Each direction is a
/// bounded queue. When it is full, the link pushes back by default
/// ([`QueueFull::Backpressure`]: `transmit` returns no token, smoltcp retries at its next
/// poll, nothing is lost); a lossy link ([`memory_pair_lossy`], [`QueueFull::Drop`])
/// drops the frame instead and counts it in [`LinkStats::tx_dropped`]. Frame buffers
/// travel back to the sender after they are received, so steady-state traffic does not
/// allocate.
///
/// Checksums are neither computed nor verified (both ends are smoltcp).
#[derive(Debug)]
pub struct MemoryLink {
    tx: Arc<Queue>,
    rx: Arc<Queue>,
    /// Ethernet MTU as smoltcp counts it: IP MTU plus the 14-byte Ethernet header.
    frame_mtu: usize,
    /// A buffer ready for the next transmitted frame (and the scratch space of a dropped one).
    tx_spare: Vec<u8>,
    /// The buffer of the last received frame, given back with the next receive.
    rx_spare: Option<Vec<u8>>,
    stats: LinkStats,
}

/// Creates the two ends of an in-memory Ethernet link with IP MTU `mtu` and
/// [`DEFAULT_QUEUE_FRAMES`] frames of queue per direction.
///
/// `mtu` is the IP MTU, as `ip link` shows it (1500, 9000, 65535, ...); the device
/// reports `mtu + 14` to smoltcp, which counts the Ethernet header.
///
/// # Panics
///
/// If `mtu` is not in `68..=65535` (the IPv4 limits).
pub fn memory_pair(mtu: usize) -> (MemoryLink, MemoryLink) {
    memory_pair_with_capacity(mtu, DEFAULT_QUEUE_FRAMES)
}

/// Like [`memory_pair`], with `queue_frames` frames of queue in each direction.
///
/// # Panics
///
/// If `mtu` is not in `68..=65535` or `queue_frames` is 0.
pub fn memory_pair_with_capacity(mtu: usize, queue_frames: usize) -> (MemoryLink, MemoryLink) {
    memory_pair_with(mtu, queue_frames, QueueFull::Backpressure)
}

/// Like [`memory_pair_with_capacity`], but a full queue drops frames
/// ([`QueueFull::Drop`]) instead of pushing back: a lossy link, for tests of loss
/// recovery.
///
/// # Panics
///
/// If `mtu` is not in `68..=65535` or `queue_frames` is 0.
pub fn memory_pair_lossy(mtu: usize, queue_frames: usize) -> (MemoryLink, MemoryLink) {
    memory_pair_with(mtu, queue_frames, QueueFull::Drop)
}

fn memory_pair_with(mtu: usize, queue_frames: usize, full: QueueFull) -> (MemoryLink, MemoryLink) {
    assert!(
        (68..=65535).contains(&mtu),
        "memory_pair: IP MTU {mtu} outside 68..=65535"
    );
    assert!(queue_frames > 0, "memory_pair: queue_frames must be > 0");
    let a_to_b = Arc::new(Queue::new(queue_frames, full));
    let b_to_a = Arc::new(Queue::new(queue_frames, full));
    let frame_mtu = mtu + EthernetFrame::<&[u8]>::header_len();
    let a = MemoryLink::new(a_to_b.clone(), b_to_a.clone(), frame_mtu);
    let b = MemoryLink::new(b_to_a, a_to_b, frame_mtu);
    (a, b)
}

impl MemoryLink {
    fn new(tx: Arc<Queue>, rx: Arc<Queue>, frame_mtu: usize) -> Self {
        MemoryLink {
            tx,
            rx,
            frame_mtu,
            tx_spare: Vec::new(),
            rx_spare: None,
            stats: LinkStats::default(),
        }
    }

    /// The IP MTU this link was created with.
    pub fn mtu(&self) -> usize {
        self.frame_mtu - EthernetFrame::<&[u8]>::header_len()
    }

    /// Frames per direction the link can hold before it pushes back (or drops).
    pub fn queue_capacity(&self) -> usize {
        self.tx.capacity
    }

    /// What this link does when a queue is full.
    pub fn queue_full(&self) -> QueueFull {
        self.tx.full
    }

    /// Frames currently waiting to be received on this end.
    pub fn rx_pending(&self) -> usize {
        self.rx.state.lock().frames.len()
    }

    /// This end's counters: frames and bytes sent, received, and dropped on send.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }
}

impl Drop for MemoryLink {
    fn drop(&mut self) {
        self.tx.state.lock().sender_gone = true;
        self.tx.ready.notify_all();
        let mut rx = self.rx.state.lock();
        rx.receiver_gone = true;
        rx.frames.clear();
        rx.free.clear();
    }
}

impl Device for MemoryLink {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = {
            let mut state = self.rx.state.lock();
            if let Some(spare) = self.rx_spare.take() {
                if state.free.len() < self.rx.capacity {
                    state.free.push(spare);
                }
            }
            state.frames.pop_front()?
        };
        self.stats.count_rx(frame.len());
        let rx = RxToken {
            frame,
            slot: &mut self.rx_spare,
        };
        // A reply to the frame being received is always queued: if both ends
        // refused to receive while their own queue is full, neither would ever drain.
        let tx = TxToken {
            queue: &self.tx,
            spare: &mut self.tx_spare,
            stats: &mut self.stats,
        };
        Some((rx, tx))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        if self.tx.full == QueueFull::Backpressure {
            let state = self.tx.state.lock();
            if !state.receiver_gone && state.frames.len() >= self.tx.capacity {
                // Push back: smoltcp keeps the segment and tries again at its next poll.
                return None;
            }
        }
        Some(TxToken {
            queue: &self.tx,
            spare: &mut self.tx_spare,
            stats: &mut self.stats,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.frame_mtu;
        // Both ends are smoltcp: skip computing and verifying checksums (Checksum::None).
        caps.checksum = ChecksumCapabilities::ignored();
        caps
    }
}

impl Link for MemoryLink {
    /// Blocks on this end's receive queue until a frame arrives or `timeout` passes.
    ///
    /// Returns an error of kind [`io::ErrorKind::NotConnected`] if the queue is empty
    /// and the other end has been dropped (no frame can ever arrive).
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let mut state = self.rx.state.lock();
        if !state.frames.is_empty() {
            return Ok(());
        }
        if state.sender_gone {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "memory link: the other end was dropped",
            ));
        }
        match timeout {
            Some(t) => {
                let _ = self.rx.ready.wait_for(&mut state, t);
            }
            None => self.rx.ready.wait(&mut state),
        }
        Ok(())
    }

    fn stats(&self) -> LinkStats {
        self.stats
    }
}

/// Receive token of a [`MemoryLink`]: owns the frame until it is consumed.
#[doc(hidden)]
#[derive(Debug)]
pub struct RxToken<'a> {
    frame: Vec<u8>,
    slot: &'a mut Option<Vec<u8>>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let result = f(&self.frame);
        // Keep the buffer: the next receive hands it back to the sender for reuse.
        *self.slot = Some(self.frame);
        result
    }
}

/// Transmit token of a [`MemoryLink`].
#[doc(hidden)]
#[derive(Debug)]
pub struct TxToken<'a> {
    queue: &'a Queue,
    spare: &'a mut Vec<u8>,
    stats: &'a mut LinkStats,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut buf = std::mem::take(self.spare);
        // Reuse the buffer without zeroing what smoltcp is about to overwrite.
        if buf.len() >= len {
            buf.truncate(len);
        } else {
            buf.resize(len, 0);
        }
        let result = f(&mut buf);

        let mut state = self.queue.state.lock();
        // With back-pressure, `transmit` checked for room (this end is the queue's only
        // sender), and a reply goes in regardless (one per received frame, so the excess
        // is bounded by the other direction's queue). A lossy link drops whatever finds
        // the queue full, replies included.
        let full = match self.queue.full {
            QueueFull::Backpressure => false,
            QueueFull::Drop => state.frames.len() >= self.queue.capacity,
        };
        if state.receiver_gone || full {
            drop(state);
            self.stats.tx_dropped += 1;
            *self.spare = buf;
            return result;
        }
        state.frames.push_back(buf);
        // Pick up a recycled buffer for the next frame while we hold the lock.
        *self.spare = state.free.pop().unwrap_or_default();
        drop(state);
        self.queue.ready.notify_one();
        self.stats.count_tx(len);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::{RxToken as _, TxToken as _};

    fn now() -> Instant {
        Instant::from_millis(0)
    }

    #[test]
    fn frames_cross_in_order() {
        let (mut a, mut b) = memory_pair(1500);
        for i in 0..3u8 {
            a.transmit(now()).unwrap().consume(60, |buf| buf.fill(i));
        }
        assert_eq!(b.rx_pending(), 3);
        for i in 0..3u8 {
            let (rx, _tx) = b.receive(now()).unwrap();
            rx.consume(|buf| {
                assert_eq!(buf.len(), 60);
                assert!(buf.iter().all(|&x| x == i));
            });
        }
        assert!(b.receive(now()).is_none());
        assert!(a.receive(now()).is_none());
        assert_eq!(a.stats().tx_frames, 3);
        assert_eq!(a.stats().tx_bytes, 180);
        assert_eq!(b.stats().rx_frames, 3);
        assert_eq!(b.stats().rx_bytes, 180);
    }

    #[test]
    fn full_lossy_queue_drops_and_counts() {
        let (mut a, b) = memory_pair_lossy(1500, 2);
        assert_eq!(a.queue_full(), QueueFull::Drop);
        for _ in 0..5 {
            a.transmit(now()).unwrap().consume(100, |buf| buf.fill(7));
        }
        assert_eq!(a.stats().tx_frames, 2);
        assert_eq!(a.stats().tx_dropped, 3);
        assert_eq!(b.rx_pending(), 2);
    }

    #[test]
    fn full_queue_pushes_back_until_the_peer_receives() {
        let (mut a, mut b) = memory_pair_with_capacity(1500, 2);
        assert_eq!(a.queue_full(), QueueFull::Backpressure);
        for i in 0..2u8 {
            a.transmit(now()).unwrap().consume(100, |buf| buf.fill(i));
        }
        assert!(
            a.transmit(now()).is_none(),
            "a full queue hands out no token"
        );
        assert_eq!(a.stats().tx_dropped, 0);
        // The peer receives one frame: room for one more.
        let (rx, _) = b.receive(now()).unwrap();
        rx.consume(|buf| assert!(buf.iter().all(|&x| x == 0)));
        a.transmit(now()).unwrap().consume(100, |buf| buf.fill(2));
        assert!(a.transmit(now()).is_none());
        for i in 1..3u8 {
            let (rx, _) = b.receive(now()).unwrap();
            rx.consume(|buf| assert!(buf.iter().all(|&x| x == i), "frame {i} lost or reordered"));
        }
        assert_eq!(a.stats().tx_frames, 3);
        assert_eq!(a.stats().tx_dropped, 0);
    }

    #[test]
    fn replies_pass_a_full_queue_so_two_full_ends_drain() {
        let (mut a, mut b) = memory_pair_with_capacity(1500, 1);
        a.transmit(now()).unwrap().consume(60, |buf| buf.fill(1));
        b.transmit(now()).unwrap().consume(60, |buf| buf.fill(2));
        assert!(a.transmit(now()).is_none() && b.transmit(now()).is_none());
        // Both queues are full; receiving still works and its reply is queued.
        let (rx, tx) = a.receive(now()).unwrap();
        rx.consume(|_| ());
        tx.consume(60, |buf| buf.fill(3));
        assert_eq!(b.rx_pending(), 2);
        assert_eq!(a.stats().tx_dropped, 0);
    }

    #[test]
    fn capabilities_follow_mtu() {
        for mtu in [1500, 9000, 65535] {
            let (a, _b) = memory_pair(mtu);
            let caps = a.capabilities();
            assert_eq!(caps.max_transmission_unit, mtu + 14);
            assert_eq!(caps.ip_mtu(), mtu);
            assert_eq!(caps.medium, Medium::Ethernet);
            assert!(!caps.checksum.ipv4.rx() && !caps.checksum.ipv4.tx());
            assert!(!caps.checksum.tcp.rx() && !caps.checksum.tcp.tx());
            assert_eq!(a.mtu(), mtu);
        }
    }

    #[test]
    #[should_panic]
    fn mtu_too_large_panics() {
        let _ = memory_pair(65536);
    }

    #[test]
    fn wait_on_idle_link_returns_without_frames() {
        let (mut a, _b) = memory_pair(1500);
        a.wait(Some(Duration::from_millis(20))).unwrap();
        assert!(a.receive(now()).is_none());
        assert_eq!(a.stats().rx_frames, 0);
    }

    #[test]
    fn wait_wakes_on_frame_from_other_thread() {
        let (mut a, mut b) = memory_pair(1500);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            b.transmit(now()).unwrap().consume(64, |buf| buf.fill(1));
            b
        });
        // Without a timeout this only returns because the frame arrived.
        while a.rx_pending() == 0 {
            a.wait(None).unwrap();
        }
        assert!(a.receive(now()).is_some());
        let _b = t.join().unwrap();
    }

    #[test]
    fn wait_errors_when_peer_dropped() {
        let (mut a, b) = memory_pair(1500);
        drop(b);
        let err = a.wait(None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotConnected);
        // Sending into a dropped peer drops the frame.
        a.transmit(now()).unwrap().consume(64, |_| ());
        assert_eq!(a.stats().tx_dropped, 1);
    }

    #[test]
    fn buffers_are_recycled() {
        let (mut a, mut b) = memory_pair(1500);
        let mut ptrs = std::collections::HashSet::new();
        for _ in 0..50 {
            a.transmit(now()).unwrap().consume(1000, |buf| buf.fill(3));
            let (rx, _tx) = b.receive(now()).unwrap();
            rx.consume(|buf| {
                ptrs.insert(buf.as_ptr() as usize);
            });
        }
        // Steady ping-pong uses a handful of buffers, not one per frame.
        assert!(ptrs.len() <= 3, "{} distinct buffers", ptrs.len());
    }
}
