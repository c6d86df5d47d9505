//! One error type per operation, named after it.

use crate::{Cap, ChannelId, Cookie, DeviceId};
use std::time::Duration;

/// Why [`Engine::register_device`](crate::Engine::register_device) refused a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The device has no channels.
    #[error("device {name:?} has no channels")]
    NoChannels {
        /// The device's name.
        name: String,
    },
    /// The device advertises a capability whose operation it does not implement
    /// (Linux BUG-checks this in `dma_async_device_register`).
    #[error("device {name:?} advertises {cap} but does not implement its operation")]
    MissingOperation {
        /// The device's name.
        name: String,
        /// The advertised capability without an operation.
        cap: Cap,
    },
    /// The device advertises no operation at all.
    #[error("device {name:?} advertises no operation (neither DMA_MEMCPY nor DMA_MEMSET)")]
    NoOperations {
        /// The device's name.
        name: String,
    },
}

/// Why [`Engine::unregister_device`](crate::Engine::unregister_device) refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnregisterError {
    /// No such device is registered (never was, or was already removed).
    #[error("device {0} is not registered")]
    UnknownDevice(DeviceId),
    /// The device is pinned by clients (Linux: `rmmod` refused while the module is in use).
    #[error(
        "device {device} is in use: pinned by {clients} client(s) and {private_channels} \
         private channel(s) ({references} channel references)"
    )]
    Busy {
        /// The device.
        device: DeviceId,
        /// Public clients whose capabilities the device serves.
        clients: usize,
        /// Private channels of the device handed out by `request_channel`.
        private_channels: usize,
        /// The device's reference count (the module pin): one per channel per user.
        references: usize,
    },
    /// Forced removal: the device is out of the engine (no channel of it is handed out,
    /// every submission to it fails), but it did not confirm the end of its in-flight
    /// transfers within the time allowed. Its teardown goes on in the background.
    #[error(
        "device {device} was removed but did not confirm the end of its transfers within \
         {waited:?} ({references} channel references dropped); its teardown goes on"
    )]
    Unresponsive {
        /// The device.
        device: DeviceId,
        /// References dropped by the removal.
        references: usize,
        /// How long the removal waited.
        waited: Duration,
    },
}

/// Why [`Engine::request_channel`](crate::Engine::request_channel) found nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No free channel with the capabilities on a device that can be made private, or the
    /// filter rejected every candidate.
    #[error("no free channel with capabilities {0:?} (devices in public use cannot go private)")]
    NoChannel(crate::CapMask),
}

/// Why [`Engine::set_online_cpus`](crate::Engine::set_online_cpus) refused a CPU set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuSetError {
    /// The set is empty.
    #[error("the online CPU set must not be empty")]
    Empty,
    /// A CPU number is too large.
    #[error("CPU {cpu} is out of range (at most {max})")]
    OutOfRange {
        /// The CPU.
        cpu: usize,
        /// The largest accepted CPU number.
        max: usize,
    },
}

/// Why a transfer could not be submitted. The caller falls back to the CPU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The channel's descriptor ring is full; retry after issuing and waiting, or copy with
    /// the CPU. Never an unbounded spin.
    #[error("descriptor ring full ({capacity} descriptors outstanding)")]
    RingFull {
        /// The ring's capacity.
        capacity: usize,
    },
    /// The device cannot do this operation.
    #[error("the channel does not support {0}")]
    Unsupported(Cap),
    /// The channel has no resources allocated (it holds no reference or is not in the
    /// per-CPU table any more).
    #[error("channel {0} has no resources allocated")]
    NoResources(ChannelId),
    /// The channel's device was removed.
    #[error("channel {0} is gone: its device was removed")]
    ChannelGone(ChannelId),
    /// The copy is longer than one descriptor of the device may move; split it, or copy
    /// with the CPU.
    #[error("{len} bytes exceed the device's largest transfer ({max} bytes)")]
    TooLarge {
        /// The requested length.
        len: usize,
        /// The device's largest transfer.
        max: usize,
    },
    /// Source and destination differ in length.
    #[error("source is {src} bytes but destination is {dst} bytes")]
    LengthMismatch {
        /// Source length.
        src: usize,
        /// Destination length.
        dst: usize,
    },
}

/// Why waiting for a transfer did not end in [`TxStatus::Complete`](crate::TxStatus).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// The transfer failed or was cancelled; the destination holds undefined bytes.
    #[error("transfer {0} failed")]
    Failed(Cookie),
    /// The device stopped part way (a DSA page fault): the first `bytes_done` bytes of the
    /// destination hold their final values, the rest are undefined. Copy exactly the rest
    /// with the CPU.
    #[error("transfer {cookie} stopped after {bytes_done} bytes (partial completion)")]
    Partial {
        /// The transfer.
        cookie: Cookie,
        /// Leading bytes done.
        bytes_done: usize,
    },
    /// The transfer did not finish in time. It is still in flight: cancel it with
    /// `terminate_all` before reusing its buffers (the safe APIs do this for you).
    #[error("transfer {cookie} did not complete within {timeout:?}")]
    Timeout {
        /// The transfer.
        cookie: Cookie,
        /// How long the caller waited.
        timeout: Duration,
    },
    /// The cookie belongs to another channel.
    #[error("cookie {cookie} belongs to channel {}, not to channel {channel}", cookie.channel())]
    WrongChannel {
        /// The cookie.
        cookie: Cookie,
        /// The channel that was asked.
        channel: ChannelId,
    },
}
