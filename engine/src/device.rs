//! Registered devices (`struct dma_device` as the engine tracks it).

use crate::channel::ChannelShared;
use crate::provider::Provider;
use crate::sync::{AtomicUsize, Ordering};
use crate::{Cap, CapMask, RegisterError};
use serde::Serialize;
use std::fmt;
use std::sync::Arc;

/// Names a registered device (stable for the engine's lifetime, never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DeviceId(pub(crate) u32);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dev{}", self.0)
    }
}

/// The engine's record of a registered device.
pub(crate) struct Device {
    pub(crate) id: DeviceId,
    pub(crate) name: String,
    pub(crate) provider: Arc<dyn Provider>,
    /// Advertised capabilities, read once at registration.
    pub(crate) caps: CapMask,
    pub(crate) channels: Vec<Arc<ChannelShared>>,
    /// Public clients whose capabilities this device serves; each holds a reference
    /// through every channel of the device.
    pub(crate) clients: usize,
    /// Channels handed out by `request_channel`.
    pub(crate) private_channels: usize,
    /// Channels with resources allocated at the provider.
    pub(crate) allocated: AtomicUsize,
}

impl Device {
    /// Checks what Linux's `dma_async_device_register` BUG-checks: every advertised
    /// operation is implemented, and there is something to register.
    pub(crate) fn validate(provider: &dyn Provider) -> Result<CapMask, RegisterError> {
        let name = provider.name().to_owned();
        let caps = provider.capabilities();
        if provider.channel_count() == 0 {
            return Err(RegisterError::NoChannels { name });
        }
        if caps.operations().is_empty() {
            return Err(RegisterError::NoOperations { name });
        }
        let implemented = provider.operations();
        if let Some(cap) = caps.operations().iter().find(|&c| !implemented.contains(c)) {
            return Err(RegisterError::MissingOperation { name, cap });
        }
        Ok(caps)
    }

    /// Whether the device's channels are private: it advertises `DMA_PRIVATE`, or it has
    /// handed out a private channel. Private devices never appear in the per-CPU table.
    pub(crate) fn is_private(&self) -> bool {
        self.caps.contains(Cap::Private) || self.private_channels > 0
    }

    /// Whether any channel may have or want resources: the device has users or still
    /// holds resources. When false the resource pass skips it without a per-channel look.
    pub(crate) fn may_hold_resources(&self) -> bool {
        self.clients > 0 || self.private_channels > 0 || self.allocated.load(Ordering::Relaxed) > 0
    }

    /// The module pin: one reference per channel per user.
    pub(crate) fn references(&self) -> usize {
        self.channels
            .iter()
            .map(|c| c.client_count.load(Ordering::Relaxed))
            .sum()
    }
}
