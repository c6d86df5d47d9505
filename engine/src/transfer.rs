//! The safe transfer APIs. Buffer ownership, as NET_DMA learned the hard way:
//!
//! | phase | who may touch the buffers |
//! | --- | --- |
//! | before submit | the caller |
//! | submitted, `InProgress` | the device only: the source must not change, the destination must not be read or written |
//! | `Complete` or `Error` (or after a confirmed cancellation) | the caller again |
//!
//! [`scope`] enforces this with borrows: a buffer lent to a transfer stays borrowed until
//! the scope returns, and the scope returns only after every transfer in it is done
//! (waiting, and on timeout cancelling), also when the closure panics.
//! [`Channel::memcpy_owned`] enforces it with ownership: the buffers travel with the
//! transfer and come back with its result; dropping an unfinished transfer waits for it.

use crate::channel::DEFAULT_WAIT_TIMEOUT;
use crate::provider::Descriptor;
use crate::{Channel, Cookie, SubmitError, TxStatus, WaitError};
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

/// Runs `f` with a [`Scope`] in which transfers may borrow buffers; returns after every
/// transfer submitted in it is done. Waits up to [`DEFAULT_WAIT_TIMEOUT`] per transfer
/// before cancelling it.
///
/// ```
/// use dmaengine::{scope, Cap, Engine, SoftwareDevice};
/// let engine = Engine::new();
/// engine.register_device(SoftwareDevice::builder().channels(1).build()).unwrap();
/// let client = engine.client(Cap::Memcpy.into());
/// let chan = client.find_channel(Cap::Memcpy).unwrap();
///
/// let src = vec![7u8; 4096];
/// let mut dst = vec![0u8; 4096];
/// scope(|s| {
///     let t = s.memcpy(&chan, &mut dst, &src).unwrap();
///     t.wait().unwrap();
/// });
/// assert_eq!(dst, src);
/// ```
pub fn scope<'env, F, T>(f: F) -> T
where
    F: for<'scope> FnOnce(&'scope Scope<'scope, 'env>) -> T,
{
    scope_with_timeout(DEFAULT_WAIT_TIMEOUT, f)
}

/// [`scope`] with a chosen per-transfer timeout.
pub fn scope_with_timeout<'env, F, T>(timeout: Duration, f: F) -> T
where
    F: for<'scope> FnOnce(&'scope Scope<'scope, 'env>) -> T,
{
    let scope = Scope {
        inflight: RefCell::new(spare_list()),
        timeout,
        _scope: PhantomData,
        _env: PhantomData,
    };
    // The guard's drop runs on return and on unwind alike: the borrows handed to
    // transfers end only after it has seen every transfer done.
    let guard = DrainOnDrop(&scope);
    let result = f(&scope);
    drop(guard);
    result
}

struct DrainOnDrop<'a, 'scope, 'env>(&'a Scope<'scope, 'env>);

impl Drop for DrainOnDrop<'_, '_, '_> {
    fn drop(&mut self) {
        let mut inflight = std::mem::take(&mut *self.0.inflight.borrow_mut());
        for (channel, cookie) in inflight.drain(..) {
            // Most were waited on in the scope already: a status load, not a second wait.
            if channel.status(cookie).is_ok_and(|s| s.is_done()) {
                continue;
            }
            channel.wait_or_terminate(cookie, self.0.timeout);
        }
        keep_spare_list(inflight);
    }
}

thread_local! {
    /// An empty list with room, kept for the next scope on this thread: a scope on a warm
    /// thread allocates nothing.
    static SPARE_LIST: RefCell<Vec<(Channel, Cookie)>> = const { RefCell::new(Vec::new()) };
}

/// The thread's spare list (empty), or a new one.
fn spare_list() -> Vec<(Channel, Cookie)> {
    SPARE_LIST
        .try_with(|spare| std::mem::take(&mut *spare.borrow_mut()))
        .unwrap_or_default()
}

/// Keeps `list` (emptied) for the next scope on this thread, if it has more room than the
/// spare already kept.
fn keep_spare_list(mut list: Vec<(Channel, Cookie)>) {
    list.clear();
    let _ = SPARE_LIST.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if list.capacity() > spare.capacity() {
            *spare = list;
        }
    });
}

/// Transfers over borrowed buffers; see [`scope`].
pub struct Scope<'scope, 'env: 'scope> {
    inflight: RefCell<Vec<(Channel, Cookie)>>,
    timeout: Duration,
    // Invariant lifetimes, as `std::thread::Scope`: 'scope cannot be shrunk to let a
    // borrow end early.
    _scope: PhantomData<&'scope mut &'scope ()>,
    _env: PhantomData<&'env mut &'env ()>,
}

impl<'scope> Scope<'scope, '_> {
    /// Submits a copy of `src` into `dst` (equal lengths) on `channel`. Both stay borrowed
    /// until the scope ends. Issue it with [`Channel::issue_pending`] or wait on it.
    pub fn memcpy(
        &'scope self,
        channel: &Channel,
        dst: &'scope mut [u8],
        src: &'scope [u8],
    ) -> Result<Transfer<'scope>, SubmitError> {
        if dst.len() != src.len() {
            return Err(SubmitError::LengthMismatch {
                src: src.len(),
                dst: dst.len(),
            });
        }
        let desc = Descriptor::Memcpy {
            dst: dst.as_mut_ptr(),
            src: src.as_ptr(),
            len: src.len(),
        };
        self.submit(channel, desc)
    }

    /// Submits filling `dst` with `value` on `channel`.
    pub fn memset(
        &'scope self,
        channel: &Channel,
        dst: &'scope mut [u8],
        value: u8,
    ) -> Result<Transfer<'scope>, SubmitError> {
        let desc = Descriptor::Memset {
            dst: dst.as_mut_ptr(),
            value,
            len: dst.len(),
        };
        self.submit(channel, desc)
    }

    fn submit(
        &'scope self,
        channel: &Channel,
        desc: Descriptor,
    ) -> Result<Transfer<'scope>, SubmitError> {
        // SAFETY: the buffers behind `desc` are borrowed (the destination exclusively) for
        // 'scope, which lasts until `scope_with_timeout` returns; before it returns, the
        // drain guard sees this cookie done (waiting, then cancelling it and waiting for
        // the device to confirm, Provider rules 1, 2 and 5). Slices from distinct `&mut`/`&` borrows cannot overlap.
        let cookie = unsafe { channel.submit(desc) }?;
        self.inflight.borrow_mut().push((channel.clone(), cookie));
        Ok(Transfer {
            channel: channel.clone(),
            cookie,
            timeout: self.timeout,
            _scope: PhantomData,
        })
    }
}

/// A transfer inside a [`scope`].
#[must_use = "a transfer's result is only known by waiting on it"]
pub struct Transfer<'scope> {
    channel: Channel,
    cookie: Cookie,
    timeout: Duration,
    _scope: PhantomData<&'scope ()>,
}

impl fmt::Debug for Transfer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Transfer").field(&self.cookie).finish()
    }
}

impl Transfer<'_> {
    /// The transfer's cookie.
    pub fn cookie(&self) -> Cookie {
        self.cookie
    }

    /// Its state now, without blocking.
    pub fn status(&self) -> TxStatus {
        self.channel
            .status(self.cookie)
            .expect("a transfer's cookie belongs to its channel")
    }

    /// Issues and waits for it with the scope's timeout. A timeout leaves it in flight
    /// until the scope ends (which cancels it).
    pub fn wait(&self) -> Result<(), WaitError> {
        self.channel.wait(self.cookie, self.timeout)
    }
}

/// A buffer whose address does not change when the value moves, so a device may keep
/// accessing it while an [`OwnedTransfer`] carries it around.
///
/// # Safety
///
/// `dma_ptr` must return the same pointer, valid for `dma_len()` bytes, for as long as the
/// value lives and is not accessed through other means, across moves.
pub unsafe trait StableBuffer {
    /// The start of the bytes.
    fn dma_ptr(&mut self) -> *mut u8;
    /// Their number.
    fn dma_len(&self) -> usize;
}

// SAFETY: a Vec's elements live in a heap allocation that moving the Vec does not touch
// (Vec holds a raw pointer, not a `Box`, so a move does not retag it), and `as_mut_ptr`
// returns that allocation's start for `len()` bytes.
unsafe impl StableBuffer for Vec<u8> {
    fn dma_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn dma_len(&self) -> usize {
        self.len()
    }
}

/// A refused owned submission: the error and both buffers, handed back.
pub struct Rejected<D, S> {
    /// Why.
    pub error: SubmitError,
    /// The destination, untouched.
    pub dst: D,
    /// The source, untouched.
    pub src: S,
}

impl<D, S> fmt::Debug for Rejected<D, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<D, S> fmt::Display for Rejected<D, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "submission refused: {}", self.error)
    }
}

impl<D, S> std::error::Error for Rejected<D, S> {}

/// A copy that owns its buffers; [`wait`](OwnedTransfer::wait) hands them back.
/// Dropping it unfinished waits for (and on timeout cancels) the copy before freeing them.
#[must_use = "dropping an owned transfer blocks until it is done"]
pub struct OwnedTransfer<D: StableBuffer, S: StableBuffer> {
    channel: Channel,
    cookie: Cookie,
    buffers: Option<(D, S)>,
}

impl<D: StableBuffer, S: StableBuffer> fmt::Debug for OwnedTransfer<D, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedTransfer")
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// Submits a copy of `src` into `dst` (equal lengths), taking ownership of both.
    /// On refusal the buffers come back inside [`Rejected`].
    pub fn memcpy_owned<D: StableBuffer, S: StableBuffer>(
        &self,
        mut dst: D,
        mut src: S,
    ) -> Result<OwnedTransfer<D, S>, Rejected<D, S>> {
        if dst.dma_len() != src.dma_len() {
            let error = SubmitError::LengthMismatch {
                src: src.dma_len(),
                dst: dst.dma_len(),
            };
            return Err(Rejected { error, dst, src });
        }
        let desc = Descriptor::Memcpy {
            dst: dst.dma_ptr(),
            src: src.dma_ptr(),
            len: src.dma_len(),
        };
        // SAFETY: both buffers move into the returned OwnedTransfer, which gives them up
        // only from `wait` (after the cookie is done) or from Drop (after waiting and, on
        // timeout, cancelling and waiting for the confirmation); StableBuffer keeps their addresses fixed across the
        // moves, and two distinct owned buffers cannot overlap.
        match unsafe { self.submit(desc) } {
            Ok(cookie) => Ok(OwnedTransfer {
                channel: self.clone(),
                cookie,
                buffers: Some((dst, src)),
            }),
            Err(error) => Err(Rejected { error, dst, src }),
        }
    }
}

impl<D: StableBuffer, S: StableBuffer> OwnedTransfer<D, S> {
    /// The transfer's cookie.
    pub fn cookie(&self) -> Cookie {
        self.cookie
    }

    /// Its state now.
    pub fn status(&self) -> TxStatus {
        self.channel
            .status(self.cookie)
            .expect("a transfer's cookie belongs to its channel")
    }

    /// Waits at most `timeout` (cancelling this transfer on timeout, see
    /// [`Channel::terminate`]) and hands the buffers back with the outcome.
    pub fn wait(mut self, timeout: Duration) -> (Result<(), WaitError>, D, S) {
        let result = match self.channel.wait(self.cookie, timeout) {
            Err(WaitError::Timeout { .. }) => {
                self.channel.cancel_and_wait(self.cookie, timeout);
                Err(WaitError::Timeout {
                    cookie: self.cookie,
                    timeout,
                })
            }
            other => other,
        };
        let (dst, src) = self.buffers.take().expect("buffers present until wait");
        (result, dst, src)
    }
}

impl<D: StableBuffer, S: StableBuffer> Drop for OwnedTransfer<D, S> {
    fn drop(&mut self) {
        if self.buffers.is_some() {
            self.channel
                .wait_or_terminate(self.cookie, DEFAULT_WAIT_TIMEOUT);
        }
    }
}
