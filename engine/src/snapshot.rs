//! A serializable picture of the engine (what Linux spreads over sysfs).

use crate::table::TableSnapshot;
use crate::{CapMask, ChannelCounters, ChannelId, DeviceId, ProviderKind};
use serde::Serialize;

/// Devices, channels, counters and the per-CPU table at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EngineSnapshot {
    /// Live public clients.
    pub clients: usize,
    /// Registered devices, in registration order.
    pub devices: Vec<DeviceSnapshot>,
    /// The per-CPU channel table.
    pub table: TableSnapshot,
}

impl EngineSnapshot {
    /// The sum of all devices' references: 0 when nothing pins any device.
    pub fn total_references(&self) -> usize {
        self.devices.iter().map(|d| d.references).sum()
    }

    /// The channel with `id`, if its device is registered.
    pub fn channel(&self, id: ChannelId) -> Option<&ChannelSnapshot> {
        self.devices
            .iter()
            .flat_map(|d| d.channels.iter())
            .find(|c| c.id == id)
    }
}

/// One registered device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceSnapshot {
    /// The device.
    pub id: DeviceId,
    /// Its provider's name.
    pub name: String,
    /// What kind of provider drives it.
    pub provider: ProviderKind,
    /// Advertised capabilities.
    pub capabilities: CapMask,
    /// Whether the device is private (advertises `DMA_PRIVATE` or has a private channel
    /// out), and so absent from the table.
    pub private: bool,
    /// Public clients it serves.
    pub clients: usize,
    /// Channels handed out privately.
    pub private_channels: usize,
    /// The module pin: one reference per channel per user. Unregistering needs 0.
    pub references: usize,
    /// Its channels.
    pub channels: Vec<ChannelSnapshot>,
}

/// One channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChannelSnapshot {
    /// The channel.
    pub id: ChannelId,
    /// Index within its device.
    pub index: usize,
    /// Per-CPU table slots pointing at it.
    pub table_count: usize,
    /// Whether it has resources (ring, worker) allocated.
    pub resources: bool,
    /// Whether it is held privately.
    pub private: bool,
    /// Its counters.
    #[serde(flatten)]
    pub counters: ChannelCounters,
}

/// Counts of the engine's bookkeeping, to check the rules about work done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Device capability masks tested against clients (once per device per update, never
    /// once per channel; none without clients).
    pub mask_tests: u64,
    /// Per-channel reference count writes.
    pub channel_ref_updates: u64,
    /// Table rebuilds.
    pub rebalances: u64,
    /// Channels looked at to allocate or free resources (none for devices without users
    /// or resources).
    pub channel_resource_checks: u64,
}
