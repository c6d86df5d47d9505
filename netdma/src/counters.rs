//! Where every received byte went, and why (Linux has no such counters; NET_DMA users
//! could not tell why their copies were not offloaded).

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a read, or part of one, was copied by the CPU instead of DMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// The read was shorter than `tcp_dma_copybreak`.
    BelowCopybreak,
    /// Offload is disabled (or being disabled).
    Disabled,
    /// `tcp_low_latency` is set.
    LowLatency,
    /// The read was a peek, which must not consume data.
    Peek,
    /// No DMA channel for this CPU (no device, or none serving memcpy).
    NoChannel,
    /// The channel's descriptor ring was full.
    RingFull,
    /// The channel refused or failed the copy.
    ChannelError,
    /// The copy did not complete within the wait timeout; it was cancelled.
    Timeout,
    /// The adaptive policy judged the CPU cheaper right now.
    Adaptive,
    /// Another read's copy on the same channel timed out and the device, which can only
    /// cancel a whole channel, aborted this copy with it. Not a fault of this read's.
    Aborted,
    /// The engine completed only part of a copy (a page fault on DSA); the CPU copied
    /// exactly the rest. Counted per descriptor, with the bytes the CPU copied.
    Partial,
}

impl Fallback {
    /// Every reason, in counter order.
    pub const ALL: [Fallback; 11] = [
        Fallback::BelowCopybreak,
        Fallback::Disabled,
        Fallback::LowLatency,
        Fallback::Peek,
        Fallback::NoChannel,
        Fallback::RingFull,
        Fallback::ChannelError,
        Fallback::Timeout,
        Fallback::Adaptive,
        Fallback::Aborted,
        Fallback::Partial,
    ];
}

/// Live counters, updated with relaxed atomics on the receive path.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    dma_bytes: AtomicU64,
    dma_reads: AtomicU64,
    cpu_bytes: AtomicU64,
    cpu_reads: AtomicU64,
    fallback_events: [AtomicU64; Fallback::ALL.len()],
    fallback_bytes: [AtomicU64; Fallback::ALL.len()],
    bytes_in_flight: AtomicU64,
}

impl Counters {
    pub(crate) fn dma(&self, bytes: usize) {
        self.dma_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn cpu(&self, bytes: usize) {
        self.cpu_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// One read that used DMA (for all or part of its bytes).
    pub(crate) fn dma_read(&self) {
        self.dma_reads.fetch_add(1, Ordering::Relaxed);
    }

    /// One read copied entirely by the CPU.
    pub(crate) fn cpu_read(&self) {
        self.cpu_reads.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn fallback(&self, reason: Fallback, bytes: usize) {
        self.fallback_events[reason as usize].fetch_add(1, Ordering::Relaxed);
        self.fallback_bytes[reason as usize].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn in_flight_add(&self, bytes: usize) {
        self.bytes_in_flight
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn in_flight_sub(&self, bytes: usize) {
        self.bytes_in_flight
            .fetch_sub(bytes as u64, Ordering::Relaxed);
    }

    /// Bytes under DMA copy now.
    pub(crate) fn in_flight(&self) -> u64 {
        self.bytes_in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn snapshot(&self) -> RecvStats {
        let by = |arr: &[AtomicU64; Fallback::ALL.len()]| FallbackCounts {
            below_copybreak: arr[Fallback::BelowCopybreak as usize].load(Ordering::Relaxed),
            disabled: arr[Fallback::Disabled as usize].load(Ordering::Relaxed),
            low_latency: arr[Fallback::LowLatency as usize].load(Ordering::Relaxed),
            peek: arr[Fallback::Peek as usize].load(Ordering::Relaxed),
            no_channel: arr[Fallback::NoChannel as usize].load(Ordering::Relaxed),
            ring_full: arr[Fallback::RingFull as usize].load(Ordering::Relaxed),
            channel_error: arr[Fallback::ChannelError as usize].load(Ordering::Relaxed),
            timeout: arr[Fallback::Timeout as usize].load(Ordering::Relaxed),
            adaptive: arr[Fallback::Adaptive as usize].load(Ordering::Relaxed),
            aborted: arr[Fallback::Aborted as usize].load(Ordering::Relaxed),
            partial: arr[Fallback::Partial as usize].load(Ordering::Relaxed),
        };
        RecvStats {
            dma_bytes: self.dma_bytes.load(Ordering::Relaxed),
            dma_reads: self.dma_reads.load(Ordering::Relaxed),
            cpu_bytes: self.cpu_bytes.load(Ordering::Relaxed),
            cpu_reads: self.cpu_reads.load(Ordering::Relaxed),
            fallback: by(&self.fallback_events),
            fallback_bytes: by(&self.fallback_bytes),
            bytes_in_flight: self.bytes_in_flight.load(Ordering::Relaxed),
        }
    }
}

/// Counts per fallback reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FallbackCounts {
    /// See [`Fallback::BelowCopybreak`].
    pub below_copybreak: u64,
    /// See [`Fallback::Disabled`].
    pub disabled: u64,
    /// See [`Fallback::LowLatency`].
    pub low_latency: u64,
    /// See [`Fallback::Peek`].
    pub peek: u64,
    /// See [`Fallback::NoChannel`].
    pub no_channel: u64,
    /// See [`Fallback::RingFull`].
    pub ring_full: u64,
    /// See [`Fallback::ChannelError`].
    pub channel_error: u64,
    /// See [`Fallback::Timeout`].
    pub timeout: u64,
    /// See [`Fallback::Adaptive`].
    pub adaptive: u64,
    /// See [`Fallback::Aborted`].
    pub aborted: u64,
    /// See [`Fallback::Partial`].
    pub partial: u64,
}

impl FallbackCounts {
    /// The count for `reason`.
    pub fn get(&self, reason: Fallback) -> u64 {
        match reason {
            Fallback::BelowCopybreak => self.below_copybreak,
            Fallback::Disabled => self.disabled,
            Fallback::LowLatency => self.low_latency,
            Fallback::Peek => self.peek,
            Fallback::NoChannel => self.no_channel,
            Fallback::RingFull => self.ring_full,
            Fallback::ChannelError => self.channel_error,
            Fallback::Timeout => self.timeout,
            Fallback::Adaptive => self.adaptive,
            Fallback::Aborted => self.aborted,
            Fallback::Partial => self.partial,
        }
    }
}

/// A snapshot of the receive counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RecvStats {
    /// Bytes delivered by DMA.
    pub dma_bytes: u64,
    /// Reads that used DMA for some of their bytes.
    pub dma_reads: u64,
    /// Bytes delivered by the CPU (whole CPU reads, the CPU share of split copies, and
    /// DMA copies the CPU had to redo).
    pub cpu_bytes: u64,
    /// Reads copied entirely by the CPU.
    pub cpu_reads: u64,
    /// Fallback events by reason: reads for the per-read reasons, descriptors for
    /// `ring_full`, `channel_error`, `timeout`, `aborted` and `partial`.
    pub fallback: FallbackCounts,
    /// Bytes affected by each fallback reason.
    pub fallback_bytes: FallbackCounts,
    /// Bytes submitted to DMA and not yet completed.
    pub bytes_in_flight: u64,
}

impl RecvStats {
    /// All bytes delivered to callers.
    pub fn total_bytes(&self) -> u64 {
        self.dma_bytes + self.cpu_bytes
    }
}
