//! A userspace model of Linux's dmaengine.
//!
//! DMA **providers** (drivers) implement [`Provider`] and register devices with an
//! [`Engine`]. A device has channels and a capability mask ([`CapMask`]: `DMA_MEMCPY`,
//! `DMA_MEMSET`, `DMA_PRIVATE`). Users either share **public** channels or take a
//! **private** one exclusively:
//!
//! - [`Engine::client`] registers a public user (`dmaengine_get`); the returned [`Client`]
//!   guard is the reference, and dropping it is `dmaengine_put`. While a client lives,
//!   every public channel of every device serving one of its capabilities holds a
//!   reference on its device — the module-level reference counting of the 2008 patch
//!   series — so [`Engine::unregister_device`] is refused (`rmmod` fails) until the
//!   client says it is done. [`Engine::remove_device`] is the forced hot-unplug path.
//! - [`Engine::find_channel`] reads this CPU's entry of the **per-CPU channel table**
//!   (`dma_find_channel`) without a lock; the table is rebalanced as devices, clients and
//!   the online CPU set change, distributing channels as Linux's `nth_chan` does.
//! - [`Engine::request_channel`] hands out a [`PrivateChannel`] (`dma_request_channel`).
//!
//! Transfers return a [`Cookie`]; [`Channel::issue_pending`] rings the doorbell,
//! [`Channel::status`] polls and [`Channel::wait`] waits with a bounded timeout. The safe
//! forms, [`scope`] over borrowed buffers and [`Channel::memcpy_owned`] over owned ones,
//! make it impossible to free or reuse a buffer while a device accesses it.
//!
//! [`SoftwareDevice`] is the default provider: worker threads that really copy
//! asynchronously. [`FaultInjector`] wraps a provider to fail, stall or lose transfers.
//! [`dsa`] drives an Intel DSA work queue with its real descriptor formats, or the same
//! provider over a descriptor-exact software portal. A device that stops part way
//! reports the bytes it completed ([`Provider::bytes_done`], [`WaitError::Partial`]), so
//! that the caller copies exactly the rest.
//!
//! | Linux | here |
//! | --- | --- |
//! | `dma_async_device_register` / `_unregister` | [`Engine::register_device`] / [`Engine::unregister_device`] |
//! | `dmaengine_get` / `dmaengine_put` | [`Engine::client`] / drop of [`Client`] |
//! | `dma_find_channel` | [`Engine::find_channel`] |
//! | `dma_request_channel` / `dma_release_channel` | [`Engine::request_channel`] / drop of [`PrivateChannel`] |
//! | `dma_async_memcpy_buf_to_buf` | [`Scope::memcpy`], [`Channel::memcpy_owned`], [`Channel::memcpy_raw`] |
//! | `dma_async_issue_pending` / `dma_issue_pending_all` | [`Channel::issue_pending`] / [`Engine::issue_pending_all`] |
//! | `dma_async_is_tx_complete` / `dma_sync_wait` | [`Channel::status`] / [`Channel::wait`] |
//! | sysfs `memcpy_count`, `bytes_transferred`, `in_use` | [`ChannelCounters`], [`Engine::snapshot`] |

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod cap;
mod channel;
mod client;
mod cookie;
pub mod cpu;
mod device;
#[cfg(all(not(loom), target_os = "linux"))]
pub mod dsa;
mod engine;
mod error;
#[cfg(not(loom))]
mod fault;
mod private;
mod provider;
mod snapshot;
#[cfg(not(loom))]
mod software;
mod sync;
mod table;
mod transfer;

pub use cap::{Cap, CapMask};
pub use channel::{Channel, ChannelCounters, ChannelId, DEFAULT_WAIT_TIMEOUT};
pub use client::Client;
pub use cookie::{Cookie, TxStatus};
pub use device::DeviceId;
pub use engine::{Engine, MAX_CPUS};
pub use error::{
    CpuSetError, RegisterError, RequestError, SubmitError, UnregisterError, WaitError,
};
#[cfg(not(loom))]
pub use fault::{FaultInjector, FaultPlan};
pub use private::PrivateChannel;
pub use provider::{
    Cancel, Descriptor, Provider, ProviderError, ProviderKind, ProviderSubmitError, Terminated,
};
pub use snapshot::{ChannelSnapshot, DeviceSnapshot, EngineSnapshot, EngineStats};
#[cfg(not(loom))]
pub use software::{SoftwareDevice, SoftwareDeviceBuilder, DEFAULT_SPIN};
pub use table::TableSnapshot;
pub use transfer::{
    scope, scope_with_timeout, OwnedTransfer, Rejected, Scope, StableBuffer, Transfer,
};
