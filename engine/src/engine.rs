//! The engine: registered devices, clients, private channels, the online CPU set, and the
//! rules tying them together (`drivers/dma/dmaengine.c`).
//!
//! Every change (device registered or removed, first or last client of a capability,
//! private channel taken or released, online CPUs changed) runs one [`State::update`]
//! under the engine lock, in three steps:
//!
//! 1. **references**: each public device's channels get one reference per client whose
//!    capabilities the device serves (Linux's module-level reference counting,
//!    narrowed to matching capabilities). With no clients, no channel is touched.
//! 2. **rebalance**: the per-CPU table is redistributed over referenced public channels.
//! 3. **resources**: channels that hold a reference *and* appear in the table (or are
//!    held privately) get resources; the rest have them freed.
//!
//! The table is published after allocation and before freeing, so a reader never finds
//! a channel the update is about to free.

use crate::channel::{Channel, ChannelShared};
use crate::client::Client;
use crate::cpu;
use crate::device::{Device, DeviceId};
use crate::private::PrivateChannel;
use crate::snapshot::{ChannelSnapshot, DeviceSnapshot, EngineSnapshot, EngineStats};
use crate::sync::{AtomicUsize, Mutex, Ordering, SwapCell};
use crate::table::{self, ChannelTable};
use crate::{
    Cap, CapMask, ChannelId, CpuSetError, Provider, RegisterError, RequestError, UnregisterError,
};
use std::sync::Arc;

/// Largest CPU number accepted in an online set (glibc's `CPU_SETSIZE`).
pub const MAX_CPUS: usize = 1024;

/// A handle to a DMA engine. Cheap to clone; all clones are the same engine.
///
/// ```
/// use dmaengine::{Cap, Engine, SoftwareDevice};
/// let engine = Engine::new();
/// let dev = engine.register_device(SoftwareDevice::builder().channels(2).build()).unwrap();
/// let client = engine.client(Cap::Memcpy.into());
/// assert!(client.find_channel(Cap::Memcpy).is_some());
/// // Pinned while the client lives (rmmod refused) ...
/// assert!(engine.unregister_device(dev).is_err());
/// drop(client);
/// // ... removable after.
/// engine.unregister_device(dev).unwrap();
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    state: Mutex<State>,
    table: SwapCell<ChannelTable>,
}

struct State {
    devices: Vec<Device>,
    /// Live public clients and the capabilities each asked for.
    clients: Vec<(u64, CapMask)>,
    next_client: u64,
    next_device: u32,
    next_channel: u32,
    online: Vec<usize>,
    possible: usize,
    stats: EngineStats,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine with no devices; online CPUs are the process's affinity mask.
    pub fn new() -> Engine {
        let online = cpu::process_affinity();
        let possible = cpu::possible_cpus().max(online.iter().max().map_or(1, |m| m + 1));
        Engine {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    devices: Vec::new(),
                    clients: Vec::new(),
                    next_client: 1,
                    next_device: 0,
                    next_channel: 0,
                    online,
                    possible,
                    stats: EngineStats::default(),
                }),
                table: SwapCell::new(ChannelTable::default()),
            }),
        }
    }

    /// Registers a device (`dma_async_device_register`). If clients exist, its channels
    /// take references on their behalf and the table is rebalanced.
    pub fn register_device<P: Provider>(
        &self,
        provider: Arc<P>,
    ) -> Result<DeviceId, RegisterError> {
        self.inner.register(provider)
    }

    /// Unregisters an idle device (`dma_async_device_unregister` after a successful
    /// `rmmod`). Refused with [`UnregisterError::Busy`] while any client or private
    /// channel pins it.
    pub fn unregister_device(&self, device: DeviceId) -> Result<(), UnregisterError> {
        self.inner.unregister(device)
    }

    /// Forced hot removal: the device goes away even while pinned. Its in-flight transfers
    /// finish or complete with an error, its channels refuse new work, the table is
    /// rebalanced, and clients go on with the remaining channels. Returns how many
    /// references it dropped.
    ///
    /// The device leaves the engine under the engine lock; its transfers are then
    /// cancelled and its resources freed *outside* it, so a device that does not answer
    /// holds up only this call, never the rest of the engine. To bound this call too,
    /// use [`remove_device_within`](Engine::remove_device_within).
    pub fn remove_device(&self, device: DeviceId) -> Result<usize, UnregisterError> {
        let (dev, references) = self.inner.detach(device)?;
        teardown(&dev, None);
        Ok(references)
    }

    /// [`remove_device`](Engine::remove_device), waiting at most `timeout` for the device
    /// to confirm the end of its transfers. If it does not, the device is out of the
    /// engine all the same, the teardown goes on in a background thread, and the result
    /// is [`UnregisterError::Unresponsive`].
    #[cfg(not(loom))]
    pub fn remove_device_within(
        &self,
        device: DeviceId,
        timeout: std::time::Duration,
    ) -> Result<usize, UnregisterError> {
        let (dev, references) = self.inner.detach(device)?;
        let started = std::time::Instant::now();
        let deadline = started + timeout;
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("dma-remove-{device}"))
            .spawn(move || {
                teardown(&dev, Some(deadline));
                let _ = done_tx.send(());
            });
        if let Err(e) = spawned {
            tracing::error!(%device, error = %e, "cannot spawn the removal thread");
            return Err(UnregisterError::Unresponsive {
                device,
                references,
                waited: std::time::Duration::ZERO,
            });
        }
        match done_rx.recv_timeout(timeout) {
            Ok(()) => Ok(references),
            Err(_) => {
                tracing::error!(%device, ?timeout, "removed device does not confirm the end of its transfers");
                Err(UnregisterError::Unresponsive {
                    device,
                    references,
                    waited: started.elapsed(),
                })
            }
        }
    }

    /// Takes a public client reference for `caps` (`dmaengine_get`).
    pub fn client(&self, caps: CapMask) -> Client {
        self.inner.get_client(caps)
    }

    /// This CPU's public channel for `cap` (`dma_find_channel`): a lock-free table read.
    /// `None` without clients for `cap` or without channels.
    #[inline]
    pub fn find_channel(&self, cap: Cap) -> Option<Channel> {
        self.inner.find_channel(cap)
    }

    /// Takes a channel exclusively (`dma_request_channel`): the first free channel, in
    /// registration order, of a device with every capability in `mask` that `filter`
    /// accepts. A device in public use cannot go private (as Linux's `private_candidate`).
    pub fn request_channel(
        &self,
        mask: CapMask,
        filter: impl FnMut(&Channel) -> bool,
    ) -> Result<PrivateChannel, RequestError> {
        self.inner.request(mask, filter)
    }

    /// Issues pending work on every channel in the table (`dma_issue_pending_all`).
    pub fn issue_pending_all(&self) {
        let state = self.inner.state.lock();
        for dev in &state.devices {
            for chan in &dev.channels {
                if chan.has_resources.load(Ordering::Acquire) {
                    dev.provider.issue_pending(chan.index);
                }
            }
        }
    }

    /// Sets the online CPU set and rebalances (CPU hotplug).
    pub fn set_online_cpus(&self, cpus: &[usize]) -> Result<(), CpuSetError> {
        self.inner.set_online(cpus)
    }

    /// The online CPU set, ascending.
    pub fn online_cpus(&self) -> Vec<usize> {
        self.inner.state.lock().online.clone()
    }

    /// Devices, channels, counters and the per-CPU table, as one consistent picture.
    pub fn snapshot(&self) -> EngineSnapshot {
        self.inner.snapshot()
    }

    /// Counts of the engine's own bookkeeping work, for tests and diagnostics.
    pub fn stats(&self) -> EngineStats {
        self.inner.state.lock().stats
    }

    /// The total of all devices' references (module pins): 0 when nothing is pinned.
    pub fn total_references(&self) -> usize {
        self.inner
            .state
            .lock()
            .devices
            .iter()
            .map(Device::references)
            .sum()
    }
}

impl Inner {
    fn register(self: &Arc<Self>, provider: Arc<dyn Provider>) -> Result<DeviceId, RegisterError> {
        let caps = Device::validate(&*provider)?;
        let mut state = self.state.lock();
        let id = DeviceId(state.next_device);
        state.next_device += 1;
        let mut channels = Vec::with_capacity(provider.channel_count());
        for index in 0..provider.channel_count() {
            let chan_id = ChannelId(state.next_channel);
            state.next_channel += 1;
            channels.push(Arc::new(ChannelShared::new(
                chan_id,
                id,
                index,
                provider.clone(),
                caps,
            )));
        }
        tracing::info!(device = %id, name = provider.name(), ?caps, channels = channels.len(), "device registered");
        state.devices.push(Device {
            id,
            name: provider.name().to_owned(),
            provider,
            caps,
            channels,
            clients: 0,
            private_channels: 0,
            allocated: AtomicUsize::new(0),
        });
        self.update(&mut state);
        Ok(id)
    }

    fn unregister(&self, id: DeviceId) -> Result<(), UnregisterError> {
        let mut state = self.state.lock();
        let pos = state.position(id)?;
        let dev = &state.devices[pos];
        let references = dev.references();
        if references > 0 {
            return Err(UnregisterError::Busy {
                device: id,
                clients: dev.clients,
                private_channels: dev.private_channels,
                references,
            });
        }
        let dev = state.devices.remove(pos);
        for chan in &dev.channels {
            chan.alive.store(false, Ordering::Release);
            release_resources(&dev, chan);
        }
        tracing::info!(device = %id, "device unregistered");
        self.update(&mut state);
        Ok(())
    }

    /// The locked half of a forced removal: takes the device out of the engine, publishes
    /// a table without it and fails new submissions to it. The caller then tears it down
    /// ([`teardown`]) without the lock.
    fn detach(&self, id: DeviceId) -> Result<(Device, usize), UnregisterError> {
        let mut state = self.state.lock();
        let pos = state.position(id)?;
        let dev = state.devices.remove(pos);
        let references = dev.references();
        // First publish a table without the device, so that `find_channel` stops handing
        // out its channels before the (slow) termination: otherwise users keep finding a
        // dead channel, failing and falling back, for the whole removal.
        self.update(&mut state);
        // New submissions fail from here on. (A submission that passed the `alive` check
        // just before is drained by `free_chan_resources`, Provider rule 3.)
        for chan in &dev.channels {
            chan.alive.store(false, Ordering::Release);
        }
        tracing::warn!(device = %id, references, "device hot-removed");
        Ok((dev, references))
    }

    fn get_client(self: &Arc<Self>, caps: CapMask) -> Client {
        let mut state = self.state.lock();
        let id = state.next_client;
        state.next_client += 1;
        state.clients.push((id, caps));
        self.update(&mut state);
        Client {
            inner: self.clone(),
            id,
            caps,
        }
    }

    pub(crate) fn put_client(&self, id: u64) {
        let mut state = self.state.lock();
        state.clients.retain(|&(c, _)| c != id);
        self.update(&mut state);
    }

    #[inline]
    pub(crate) fn find_channel(&self, cap: Cap) -> Option<Channel> {
        let table = self.table.load();
        table.lookup(cap, cpu::current_cpu()).cloned()
    }

    fn request(
        self: &Arc<Self>,
        mask: CapMask,
        mut filter: impl FnMut(&Channel) -> bool,
    ) -> Result<PrivateChannel, RequestError> {
        let mut state = self.state.lock();
        let ops = mask.operations();
        let mut chosen = None;
        'devices: for dev in &state.devices {
            // Tested once per device: the mask, and whether public clients hold it.
            if !dev.caps.contains_all(ops) || (!dev.is_private() && dev.clients > 0) {
                continue;
            }
            for chan in &dev.channels {
                if chan.private_held.load(Ordering::Relaxed) {
                    continue;
                }
                let handle = Channel(chan.clone());
                if filter(&handle) {
                    chosen = Some((dev.id, handle));
                    break 'devices;
                }
            }
        }
        let Some((dev_id, channel)) = chosen else {
            return Err(RequestError::NoChannel(mask));
        };
        let pos = state.position(dev_id).expect("device found above");
        state.devices[pos].private_channels += 1;
        channel.0.private_held.store(true, Ordering::Relaxed);
        channel.0.client_count.store(1, Ordering::Relaxed);
        tracing::debug!(channel = %channel.id(), "private channel taken");
        self.update(&mut state);
        Ok(PrivateChannel {
            inner: self.clone(),
            channel,
        })
    }

    pub(crate) fn release_private(&self, channel: &Channel) {
        let mut state = self.state.lock();
        let Ok(pos) = state.position(channel.device()) else {
            return; // hot-removed meanwhile: nothing left to release
        };
        if !channel.0.private_held.swap(false, Ordering::Relaxed) {
            return;
        }
        channel.0.client_count.store(0, Ordering::Relaxed);
        state.devices[pos].private_channels -= 1;
        tracing::debug!(channel = %channel.id(), "private channel released");
        self.update(&mut state);
    }

    fn set_online(&self, cpus: &[usize]) -> Result<(), CpuSetError> {
        if cpus.is_empty() {
            return Err(CpuSetError::Empty);
        }
        if let Some(&cpu) = cpus.iter().find(|&&c| c >= MAX_CPUS) {
            return Err(CpuSetError::OutOfRange {
                cpu,
                max: MAX_CPUS - 1,
            });
        }
        let mut online = cpus.to_vec();
        online.sort_unstable();
        online.dedup();
        let mut state = self.state.lock();
        state.possible = state.possible.max(online[online.len() - 1] + 1);
        state.online = online;
        self.update(&mut state);
        Ok(())
    }

    fn snapshot(&self) -> EngineSnapshot {
        let state = self.state.lock();
        let table = self.table.load();
        EngineSnapshot {
            clients: state.clients.len(),
            devices: state
                .devices
                .iter()
                .map(|dev| DeviceSnapshot {
                    id: dev.id,
                    name: dev.name.clone(),
                    provider: dev.provider.kind(),
                    capabilities: dev.caps,
                    private: dev.is_private(),
                    clients: dev.clients,
                    private_channels: dev.private_channels,
                    references: dev.references(),
                    channels: dev
                        .channels
                        .iter()
                        .map(|c| ChannelSnapshot {
                            id: c.id,
                            index: c.index,
                            table_count: c.table_count.load(Ordering::Relaxed),
                            resources: c.has_resources.load(Ordering::Relaxed),
                            private: c.private_held.load(Ordering::Relaxed),
                            counters: c.counters(),
                        })
                        .collect(),
                })
                .collect(),
            table: table.snapshot(&state.online),
        }
    }

    /// References, then table, then resources; see the module docs.
    fn update(&self, state: &mut State) {
        state.sync_references();
        let wanted = state
            .clients
            .iter()
            .fold(CapMask::EMPTY, |m, &(_, caps)| m | caps.operations());
        let candidates: Vec<Arc<ChannelShared>> = state
            .devices
            .iter()
            .filter(|d| !d.is_private())
            .flat_map(|d| d.channels.iter())
            .filter(|c| c.client_count.load(Ordering::Relaxed) > 0)
            .cloned()
            .collect();
        let slots = state.possible;
        let new_table = table::distribute(&candidates, wanted, &state.online, slots);
        state.stats.rebalances += 1;

        // A device without users and without resources needs no per-channel look: with
        // no clients, registering devices touches no channel at all.
        let mut checks = 0;
        for dev in state.devices.iter().filter(|d| d.may_hold_resources()) {
            checks += dev.channels.len() as u64;
            for chan in dev.channels.iter().filter(|c| wants_resources(c)) {
                if !chan.has_resources.load(Ordering::Relaxed) {
                    match dev.provider.alloc_chan_resources(chan.index) {
                        Ok(()) => {
                            chan.has_resources.store(true, Ordering::Release);
                            dev.allocated.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            tracing::warn!(channel = %chan.id, error = %e, "allocating channel resources failed")
                        }
                    }
                }
            }
        }
        self.table.store(new_table);
        for dev in state.devices.iter().filter(|d| d.may_hold_resources()) {
            for chan in dev.channels.iter().filter(|c| !wants_resources(c)) {
                release_resources(dev, chan);
            }
        }
        state.stats.channel_resource_checks += checks;
    }
}

/// Resources exist only for channels that hold a reference and appear in the table, or
/// are held privately.
fn wants_resources(chan: &ChannelShared) -> bool {
    chan.alive.load(Ordering::Relaxed)
        && (chan.private_held.load(Ordering::Relaxed)
            || (chan.client_count.load(Ordering::Relaxed) > 0
                && chan.table_count.load(Ordering::Relaxed) > 0))
}

/// The unlocked half of a forced removal: everything in flight is finished or failed (so
/// no transfer of the device touches memory after it returns), then the resources are
/// freed. With a `deadline`, cancellations the device supports bounding are bounded by it.
fn teardown(dev: &Device, deadline: Option<std::time::Instant>) {
    use crate::provider::{Cancel, Terminated};
    for chan in &dev.channels {
        if chan.has_resources.load(Ordering::Acquire) {
            match deadline {
                None => dev.provider.terminate_all(chan.index),
                Some(d) => {
                    if dev.provider.terminate_within(chan.index, Cancel::All, d)
                        == Terminated::Pending
                    {
                        // Rule 2 before freeing: wait for the confirmation after all (we
                        // run in the background by now).
                        dev.provider.terminate_all(chan.index);
                    }
                }
            }
        }
        release_resources(dev, chan);
        chan.client_count.store(0, Ordering::Relaxed);
        chan.private_held.store(false, Ordering::Relaxed);
    }
}

fn release_resources(dev: &Device, chan: &ChannelShared) {
    if chan.has_resources.swap(false, Ordering::AcqRel) {
        dev.provider.free_chan_resources(chan.index);
        dev.allocated.fetch_sub(1, Ordering::Relaxed);
    }
}

impl State {
    fn position(&self, id: DeviceId) -> Result<usize, UnregisterError> {
        self.devices
            .iter()
            .position(|d| d.id == id)
            .ok_or(UnregisterError::UnknownDevice(id))
    }

    /// Step 1 of [`Inner::update`]: one reference per channel per client served.
    fn sync_references(&mut self) {
        // Clients grouped by the operations they asked for: at most 2^2 distinct masks.
        let mut by_mask: Vec<(CapMask, usize)> = Vec::new();
        for &(_, caps) in &self.clients {
            let ops = caps.operations();
            match by_mask.iter_mut().find(|(m, _)| *m == ops) {
                Some((_, n)) => *n += 1,
                None => by_mask.push((ops, 1)),
            }
        }
        for dev in &mut self.devices {
            let clients = if dev.is_private() || self.clients.is_empty() {
                0
            } else {
                self.stats.mask_tests += 1;
                let served = dev.caps.operations();
                by_mask
                    .iter()
                    .filter(|(m, _)| m.intersects(served))
                    .map(|&(_, n)| n)
                    .sum()
            };
            if clients == dev.clients {
                continue;
            }
            for chan in dev
                .channels
                .iter()
                .filter(|c| !c.private_held.load(Ordering::Relaxed))
            {
                chan.client_count.store(clients, Ordering::Relaxed);
                if clients == 0 {
                    // Unreferenced channels leave the table; `distribute` only resets the
                    // counts of the channels it considers (the referenced ones).
                    chan.table_count.store(0, Ordering::Relaxed);
                }
                self.stats.channel_ref_updates += 1;
            }
            tracing::debug!(device = %dev.id, from = dev.clients, to = clients, "device references");
            dev.clients = clients;
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let state = self.state.lock();
        for dev in &state.devices {
            for chan in &dev.channels {
                release_resources(dev, chan);
            }
        }
    }
}
