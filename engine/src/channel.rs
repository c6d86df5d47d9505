//! Channels (`struct dma_chan`): submit, issue, status, wait, counters.

use crate::provider::{Cancel, Descriptor, Provider, ProviderSubmitError, Terminated};
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use crate::{CapMask, Cookie, DeviceId, SubmitError, TxStatus, WaitError};
use serde::Serialize;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long [`Channel::wait`] waits by default: 5000 ms, as Linux's `dma_sync_wait`.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_millis(5000);

/// Names a channel across the whole engine (stable for the engine's lifetime).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ChannelId(pub(crate) u32);

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dma{}", self.0)
    }
}

/// A channel's counters, as Linux's sysfs shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChannelCounters {
    /// Memcpy descriptors submitted (`memcpy_count`).
    pub memcpy_count: u64,
    /// Memset descriptors submitted.
    pub memset_count: u64,
    /// Bytes submitted (`bytes_transferred`).
    pub bytes_transferred: u64,
    /// Users (`in_use`/`client_count`): potential users for a public channel, the one
    /// actual user for a private one, 0 when free.
    pub in_use: usize,
    /// Transfers that ended in error.
    pub errors: u64,
}

/// The engine's record of one channel, shared by handles and the table.
pub(crate) struct ChannelShared {
    pub(crate) id: ChannelId,
    pub(crate) device: DeviceId,
    /// Index of the channel within its device.
    pub(crate) index: usize,
    pub(crate) provider: Arc<dyn Provider>,
    /// The device's advertised capabilities (read once at registration).
    pub(crate) caps: CapMask,
    /// `client_count`: written under the engine lock, read lock-free for counters.
    pub(crate) client_count: AtomicUsize,
    /// How many per-CPU table slots point here (`table_count`).
    pub(crate) table_count: AtomicUsize,
    /// Handed out by `request_channel`.
    pub(crate) private_held: AtomicBool,
    /// Resources allocated at the provider.
    pub(crate) has_resources: AtomicBool,
    /// False once the device was removed.
    pub(crate) alive: AtomicBool,
    memcpy_count: AtomicU64,
    memset_count: AtomicU64,
    bytes_transferred: AtomicU64,
    /// The provider cancels exactly (read once): no abort bookkeeping needed.
    exact_cancel: bool,
    /// Highest sequence number submitted through the engine.
    last_seq: AtomicU64,
    /// Every sequence up to this one has had its doorbell rung (`issue_pending`), so
    /// `wait` need not ring it again.
    issued_upto: AtomicU64,
    /// Sequences up to this one were covered by a whole-channel abort that a
    /// [`Channel::terminate`] of *other* transfers caused (0: never).
    aborted_upto: AtomicU64,
}

impl ChannelShared {
    pub(crate) fn new(
        id: ChannelId,
        device: DeviceId,
        index: usize,
        provider: Arc<dyn Provider>,
        caps: CapMask,
    ) -> Self {
        ChannelShared {
            exact_cancel: provider.cancels_exactly(),
            id,
            device,
            index,
            provider,
            caps,
            client_count: AtomicUsize::new(0),
            table_count: AtomicUsize::new(0),
            private_held: AtomicBool::new(false),
            has_resources: AtomicBool::new(false),
            alive: AtomicBool::new(true),
            memcpy_count: AtomicU64::new(0),
            memset_count: AtomicU64::new(0),
            bytes_transferred: AtomicU64::new(0),
            last_seq: AtomicU64::new(0),
            issued_upto: AtomicU64::new(0),
            aborted_upto: AtomicU64::new(0),
        }
    }

    pub(crate) fn counters(&self) -> ChannelCounters {
        ChannelCounters {
            memcpy_count: self.memcpy_count.load(Ordering::Relaxed),
            memset_count: self.memset_count.load(Ordering::Relaxed),
            bytes_transferred: self.bytes_transferred.load(Ordering::Relaxed),
            in_use: self.client_count.load(Ordering::Relaxed),
            errors: self.provider.error_count(self.index),
        }
    }
}

/// A handle to a DMA channel. Cheap to clone.
///
/// Public channels come from [`Engine::find_channel`](crate::Engine::find_channel) and are
/// shared; private ones from [`Engine::request_channel`](crate::Engine::request_channel).
/// A handle stays usable after its device is removed: submissions then fail with
/// [`SubmitError::ChannelGone`], and nothing dangles.
#[derive(Clone)]
pub struct Channel(pub(crate) Arc<ChannelShared>);

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.0.id)
            .field("device", &self.0.device)
            .field("index", &self.0.index)
            .finish()
    }
}

impl PartialEq for Channel {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Channel {}

impl Channel {
    /// The channel's engine-wide id.
    pub fn id(&self) -> ChannelId {
        self.0.id
    }

    /// The device the channel belongs to.
    pub fn device(&self) -> DeviceId {
        self.0.device
    }

    /// The channel's index within its device.
    pub fn index(&self) -> usize {
        self.0.index
    }

    /// The device's capabilities.
    pub fn capabilities(&self) -> CapMask {
        self.0.caps
    }

    /// The channel's counters now.
    pub fn counters(&self) -> ChannelCounters {
        self.0.counters()
    }

    /// Submits a copy of `len` bytes from `src` to `dst` (`dma_async_memcpy_buf_to_buf`).
    /// It starts at the next [`issue_pending`](Channel::issue_pending).
    ///
    /// # Safety
    ///
    /// `src` must be valid for reads and `dst` for writes of `len` bytes, the two must not
    /// overlap, and until the returned cookie is done ([`status`](Channel::status) is not
    /// `InProgress`, or [`terminate_all`](Channel::terminate_all) has returned) the caller
    /// must keep both allocated, must not write `src`, and must not read or write `dst`.
    /// Prefer [`scope`](crate::scope) or [`Channel::memcpy_owned`], which enforce this.
    pub unsafe fn memcpy_raw(
        &self,
        dst: *mut u8,
        src: *const u8,
        len: usize,
    ) -> Result<Cookie, SubmitError> {
        // SAFETY: forwarded verbatim from this function's contract.
        unsafe { self.submit(Descriptor::Memcpy { dst, src, len }) }
    }

    /// Submits filling `len` bytes at `dst` with `value`.
    ///
    /// # Safety
    ///
    /// As [`memcpy_raw`](Channel::memcpy_raw), for `dst` alone.
    pub unsafe fn memset_raw(
        &self,
        dst: *mut u8,
        value: u8,
        len: usize,
    ) -> Result<Cookie, SubmitError> {
        // SAFETY: forwarded verbatim from this function's contract.
        unsafe { self.submit(Descriptor::Memset { dst, value, len }) }
    }

    /// # Safety
    ///
    /// The memory `desc` names obeys the contract of [`Channel::memcpy_raw`].
    pub(crate) unsafe fn submit(&self, desc: Descriptor) -> Result<Cookie, SubmitError> {
        let shared = &*self.0;
        if !shared.alive.load(Ordering::Acquire) {
            return Err(SubmitError::ChannelGone(shared.id));
        }
        let cap = desc.cap();
        if !shared.caps.contains(cap) {
            return Err(SubmitError::Unsupported(cap));
        }
        // SAFETY: the caller upholds Provider::submit's contract (ours is the same).
        let seq = unsafe { shared.provider.submit(shared.index, desc) }.map_err(|e| match e {
            ProviderSubmitError::RingFull { capacity } => SubmitError::RingFull { capacity },
            ProviderSubmitError::NoResources => SubmitError::NoResources(shared.id),
            ProviderSubmitError::Gone => SubmitError::ChannelGone(shared.id),
            ProviderSubmitError::TooLarge { max } => SubmitError::TooLarge {
                len: desc.len(),
                max,
            },
        })?;
        match desc {
            Descriptor::Memcpy { .. } => shared.memcpy_count.fetch_add(1, Ordering::Relaxed),
            Descriptor::Memset { .. } => shared.memset_count.fetch_add(1, Ordering::Relaxed),
        };
        shared
            .bytes_transferred
            .fetch_add(desc.len() as u64, Ordering::Relaxed);
        // After the provider accepted it: an `issue_pending` that reads this value rings
        // a doorbell that covers it.
        shared.last_seq.fetch_max(seq, Ordering::Release);
        Ok(Cookie::new(shared.id, seq))
    }

    /// Starts every submitted transfer on this channel (`dma_async_issue_pending`).
    pub fn issue_pending(&self) {
        let shared = &*self.0;
        let submitted = shared.last_seq.load(Ordering::Acquire);
        shared.provider.issue_pending(shared.index);
        shared.issued_upto.fetch_max(submitted, Ordering::Release);
    }

    fn check_cookie(&self, cookie: Cookie) -> Result<(), WaitError> {
        if cookie.channel() == self.0.id {
            Ok(())
        } else {
            Err(WaitError::WrongChannel {
                cookie,
                channel: self.0.id,
            })
        }
    }

    /// The state of a transfer (`dma_async_is_tx_complete`); never blocks.
    pub fn status(&self, cookie: Cookie) -> Result<TxStatus, WaitError> {
        self.check_cookie(cookie)?;
        Ok(self.0.provider.tx_status(self.0.index, cookie.seq()))
    }

    /// For a transfer that ended in error: how many leading bytes the device completed
    /// before it stopped, when it says so (a partial completion); `None` when unknown or
    /// when the transfer did not fail. Never blocks.
    pub fn bytes_done(&self, cookie: Cookie) -> Result<Option<usize>, WaitError> {
        self.check_cookie(cookie)?;
        if self.0.provider.tx_status(self.0.index, cookie.seq()) != TxStatus::Error {
            return Ok(None);
        }
        Ok(self.0.provider.bytes_done(self.0.index, cookie.seq()))
    }

    /// Issues pending work, then waits at most `timeout` for `cookie` (`dma_sync_wait`):
    /// spinning briefly, then parking. `Ok` means complete; [`WaitError::Partial`] means
    /// the device completed only a prefix.
    pub fn wait(&self, cookie: Cookie, timeout: Duration) -> Result<(), WaitError> {
        self.check_cookie(cookie)?;
        // The doorbell only if it has not rung for this cookie yet: a batch issued once
        // and then waited on transfer by transfer rings it once.
        if cookie.seq() > self.0.issued_upto.load(Ordering::Acquire) {
            self.issue_pending();
        }
        let deadline = Instant::now() + timeout;
        match self.0.provider.wait(self.0.index, cookie.seq(), deadline) {
            TxStatus::Complete => Ok(()),
            TxStatus::Error => match self.0.provider.bytes_done(self.0.index, cookie.seq()) {
                Some(bytes_done) => Err(WaitError::Partial { cookie, bytes_done }),
                None => Err(WaitError::Failed(cookie)),
            },
            TxStatus::InProgress => Err(WaitError::Timeout { cookie, timeout }),
        }
    }

    /// Cancels every transfer submitted on this channel (`dmaengine_terminate_all`). When
    /// it returns, each of them is done (complete or failed) and its memory is free. It
    /// returns only once the device has confirmed; [`terminate`](Channel::terminate)
    /// cancels only some transfers, with a bound on the wait.
    pub fn terminate_all(&self) {
        self.0.provider.terminate_all(self.0.index)
    }

    /// Cancels `cookies` (transfers of this channel; others are ignored) and waits at most
    /// `timeout` for the device to confirm. The channel's other transfers go on where the
    /// device can cancel exactly ([`Terminated::Exact`]); a device that can only abort the
    /// whole channel aborts them too ([`Terminated::WholeChannel`]), and
    /// [`aborted_for_others`](Channel::aborted_for_others) then tells their owners why
    /// they failed. With [`Terminated::Pending`] the device did not confirm in time: the
    /// memory of the transfers not yet done stays lent to it.
    pub fn terminate(&self, cookies: &[Cookie], timeout: Duration) -> Terminated {
        let shared = &*self.0;
        let seqs: Vec<u64> = cookies
            .iter()
            .filter(|c| c.channel() == shared.id)
            .map(|c| c.seq())
            .collect();
        if seqs.is_empty() {
            return Terminated::Exact;
        }
        if !shared.exact_cancel {
            // Recorded before the abort, so that an owner who sees its transfer fail also
            // sees why. Conservative: a transfer submitted after this load and aborted
            // all the same is counted as an error of its own.
            let last = shared.last_seq.load(Ordering::Relaxed);
            shared.aborted_upto.fetch_max(last, Ordering::AcqRel);
        }
        let deadline = Instant::now() + timeout;
        shared
            .provider
            .terminate_within(shared.index, Cancel::Only(&seqs), deadline)
    }

    /// Whether `cookie`'s transfer was covered by a whole-channel abort that a
    /// [`terminate`](Channel::terminate) of *other* transfers caused (a device that cannot
    /// cancel exactly). Its failure is then that abort's doing, not a fault of its own.
    /// Always `false` on devices that cancel exactly.
    pub fn aborted_for_others(&self, cookie: Cookie) -> bool {
        cookie.channel() == self.0.id && cookie.seq() <= self.0.aborted_upto.load(Ordering::Acquire)
    }

    /// Cancels `cookie` alone and returns its final status; if the device does not confirm
    /// within `timeout`, keeps waiting (warning each `timeout`): the caller's memory is
    /// lent until the device lets go of it. Used by the safe APIs.
    pub(crate) fn cancel_and_wait(&self, cookie: Cookie, timeout: Duration) -> TxStatus {
        if self.terminate(&[cookie], timeout) != Terminated::Pending {
            // Rule 5 of `Provider`: the cookie is done.
            return self.0.provider.tx_status(self.0.index, cookie.seq());
        }
        let started = Instant::now();
        loop {
            let deadline = Instant::now() + timeout.max(Duration::from_millis(1));
            let status = self.0.provider.wait(self.0.index, cookie.seq(), deadline);
            if status.is_done() {
                return status;
            }
            tracing::error!(%cookie, waited = ?started.elapsed(), "DMA device does not confirm a cancellation; the buffers stay lent to it");
        }
    }

    /// Waits for `cookie`; on timeout cancels it (and only it, where the device can) so
    /// that the memory is released either way. Used by the safe APIs.
    pub(crate) fn wait_or_terminate(&self, cookie: Cookie, timeout: Duration) -> TxStatus {
        match self.wait(cookie, timeout) {
            Ok(()) => TxStatus::Complete,
            Err(WaitError::Timeout { .. }) => {
                tracing::warn!(%cookie, ?timeout, "DMA transfer timed out; cancelling it");
                self.cancel_and_wait(cookie, timeout)
            }
            Err(_) => TxStatus::Error,
        }
    }
}
