//! The driver side: what a DMA device implements (`struct dma_device`'s operations).

use crate::CapMask;
use std::time::Instant;

/// One operation handed to a device. Pointers, not slices: the device accesses the memory
/// asynchronously, after the call that submitted it has returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Descriptor {
    /// Copy `len` bytes from `src` to `dst` (`device_prep_dma_memcpy`).
    Memcpy {
        /// Destination.
        dst: *mut u8,
        /// Source.
        src: *const u8,
        /// Bytes to copy.
        len: usize,
    },
    /// Fill `len` bytes at `dst` with `value` (`device_prep_dma_memset`).
    Memset {
        /// Destination.
        dst: *mut u8,
        /// Fill byte.
        value: u8,
        /// Bytes to fill.
        len: usize,
    },
}

impl Descriptor {
    /// Bytes the descriptor writes.
    pub const fn len(&self) -> usize {
        match *self {
            Descriptor::Memcpy { len, .. } | Descriptor::Memset { len, .. } => len,
        }
    }

    /// Whether the descriptor moves no bytes.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The capability that performs this descriptor.
    pub const fn cap(&self) -> crate::Cap {
        match self {
            Descriptor::Memcpy { .. } => crate::Cap::Memcpy,
            Descriptor::Memset { .. } => crate::Cap::Memset,
        }
    }
}

// SAFETY: a Descriptor is plain data (addresses and a length); the memory it names is
// accessed only under the contract of `Provider::submit`, whose caller guarantees the
// memory stays valid and unaliased until the transfer is done, from whichever thread.
unsafe impl Send for Descriptor {}

/// What kind of provider drives a device; the engine snapshot names it per device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// The software DMA device (worker threads copying).
    Software,
    /// An Intel DSA work queue driven through its hardware portal or `write()` path.
    Dsa,
    /// The DSA provider over its descriptor-exact software portal (no hardware).
    DsaEmulated,
    /// Any other provider (the default of [`Provider::kind`]).
    Other,
}

impl ProviderKind {
    /// The lower-case name, as serialized.
    pub const fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Software => "software",
            ProviderKind::Dsa => "dsa",
            ProviderKind::DsaEmulated => "dsa_emulated",
            ProviderKind::Other => "other",
        }
    }
}

/// Provider-level failure to allocate channel resources.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProviderError(pub String);

/// Provider-level submission failure; the engine maps it to
/// [`SubmitError`](crate::SubmitError).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderSubmitError {
    /// The descriptor ring is full.
    RingFull {
        /// Ring capacity in descriptors.
        capacity: usize,
    },
    /// The channel has no resources (never allocated, or freed).
    NoResources,
    /// The device is gone (hot-unplugged).
    Gone,
    /// The descriptor moves more bytes than one hardware descriptor may.
    TooLarge {
        /// The largest length the device accepts.
        max: usize,
    },
}

/// Which descriptors [`Provider::terminate_within`] cancels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancel<'a> {
    /// Everything submitted on the channel before the call (as `terminate_all`).
    All,
    /// Only these sequence numbers of the channel; the channel's other descriptors go on.
    Only(&'a [u64]),
}

/// How a bounded cancellation ([`Provider::terminate_within`]) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Terminated {
    /// What was asked is done (cancelled, or it had finished), and nothing else on the
    /// channel was touched.
    Exact,
    /// The device can only abort a whole channel: it did, so every descriptor submitted
    /// on the channel before the call is done, including others' that nobody asked to
    /// cancel (they report `Error`).
    WholeChannel,
    /// The deadline passed before the device confirmed: some of the descriptors may
    /// still be in flight. Their memory must not be reused until `tx_status` reports
    /// them done.
    Pending,
}

/// A DMA device driver (`struct dma_device` with its operations).
///
/// Channels are numbered `0..channel_count()`. Sequence numbers (cookies) are per channel,
/// start at 1 and increase by one per accepted descriptor.
///
/// # Safety
///
/// The engine's safe APIs ([`scope`](crate::scope), [`OwnedTransfer`](crate::OwnedTransfer))
/// free or reuse buffers on the strength of what a provider reports, so an implementation
/// must guarantee:
///
/// 1. once [`tx_status`](Provider::tx_status) has reported `Complete` or `Error` for a
///    cookie, the device never accesses that descriptor's memory again;
/// 2. when [`terminate_all`](Provider::terminate_all) returns, every descriptor submitted
///    on that channel before the call is done (`Complete` or `Error`), so rule 1 applies;
/// 3. when [`free_chan_resources`](Provider::free_chan_resources) returns, every
///    descriptor submitted before is done;
/// 4. `tx_status` never reports `Complete` for a descriptor whose bytes were not all
///    written;
/// 5. when [`terminate_within`](Provider::terminate_within) returns
///    [`Terminated::Exact`], every descriptor it was asked to cancel is done, and when it
///    returns [`Terminated::WholeChannel`], rule 2 holds as for `terminate_all`; a
///    provider that returns `Exact` for [`Cancel::Only`] also says so in
///    [`cancels_exactly`](Provider::cancels_exactly).
/// 6. when [`bytes_done`](Provider::bytes_done) answers `Some(n)` for a descriptor
///    reported `Error`, its first `n` destination bytes hold their final values (a
///    partial completion), and `n` is at most the descriptor's length.
pub unsafe trait Provider: Send + Sync + 'static {
    /// The device's name, for logs and snapshots.
    fn name(&self) -> &str;

    /// What kind of provider this is (named in the engine snapshot). Default
    /// [`ProviderKind::Other`].
    fn kind(&self) -> ProviderKind {
        ProviderKind::Other
    }

    /// The capabilities the device advertises (`cap_mask`). Read once at registration.
    fn capabilities(&self) -> CapMask;

    /// The operations the device implements (Linux: the non-null `device_prep_*`
    /// pointers). Registration fails if an advertised operation is missing here.
    fn operations(&self) -> CapMask;

    /// Number of channels (`chancnt`).
    fn channel_count(&self) -> usize;

    /// Allocates the channel's resources (rings, worker threads) on first use
    /// (`device_alloc_chan_resources`).
    fn alloc_chan_resources(&self, chan: usize) -> Result<(), ProviderError>;

    /// Finishes outstanding work and frees the channel's resources
    /// (`device_free_chan_resources`). See rule 3 under Safety.
    fn free_chan_resources(&self, chan: usize);

    /// Prepares and submits one descriptor (`device_prep_dma_*` + `tx_submit`); returns its
    /// sequence number. Nothing starts before [`issue_pending`](Provider::issue_pending).
    ///
    /// # Safety
    ///
    /// Until the returned cookie is done (`tx_status` reports `Complete` or `Error`, or
    /// `terminate_all`/`free_chan_resources` has returned), the caller keeps the memory the
    /// descriptor names allocated, the source unmodified, and the destination neither read
    /// nor written by anyone else. Source and destination do not overlap.
    unsafe fn submit(&self, chan: usize, desc: Descriptor) -> Result<u64, ProviderSubmitError>;

    /// Starts every submitted descriptor (`device_issue_pending`: the doorbell).
    fn issue_pending(&self, chan: usize);

    /// The state of a descriptor (`device_tx_status`).
    fn tx_status(&self, chan: usize, seq: u64) -> crate::TxStatus;

    /// Waits until the descriptor is done or `deadline` passes, and returns its status.
    /// The default polls [`tx_status`](Provider::tx_status), yielding the CPU between
    /// polls; providers with a completion interrupt (or a parked worker) do better.
    fn wait(&self, chan: usize, seq: u64, deadline: Instant) -> crate::TxStatus {
        loop {
            let status = self.tx_status(chan, seq);
            if status.is_done() || Instant::now() >= deadline {
                return status;
            }
            std::thread::yield_now();
        }
    }

    /// Cancels everything submitted on the channel (`device_terminate_all`). See rule 2.
    /// It returns only once the device has confirmed; callers that must not block on a
    /// device that never answers use [`terminate_within`](Provider::terminate_within).
    fn terminate_all(&self, chan: usize);

    /// Cancels `what` and waits for the device to confirm until `deadline` (rule 5).
    ///
    /// The default is for devices that can only abort a whole channel and cannot bound
    /// the wait: it calls [`terminate_all`](Provider::terminate_all) and reports
    /// [`Terminated::WholeChannel`] for [`Cancel::Only`].
    fn terminate_within(&self, chan: usize, what: Cancel<'_>, deadline: Instant) -> Terminated {
        let _ = deadline;
        self.terminate_all(chan);
        match what {
            Cancel::All => Terminated::Exact,
            Cancel::Only(_) => Terminated::WholeChannel,
        }
    }

    /// Whether [`terminate_within`](Provider::terminate_within) cancels exactly the
    /// descriptors listed in [`Cancel::Only`] (default: no, the whole channel).
    fn cancels_exactly(&self) -> bool {
        false
    }

    /// Transfers on this channel that ended in error so far.
    fn error_count(&self, chan: usize) -> u64;

    /// For a descriptor that ended in `Error`: how many of its leading bytes the device
    /// completed before it stopped (a partial completion, such as a DSA page fault), when
    /// the device says so. `None` (the default) means unknown: the whole descriptor must
    /// be redone. See rule 5 under Safety.
    fn bytes_done(&self, chan: usize, seq: u64) -> Option<usize> {
        let _ = (chan, seq);
        None
    }
}
