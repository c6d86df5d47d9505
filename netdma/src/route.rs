//! Routing: the one decision every read goes through, whether it comes from
//! [`NetDma::recv`] or from the pipelined receive.
//!
//! A read goes to DMA only if offload is enabled, low-latency mode is off, the read is at
//! least `tcp_dma_copybreak` bytes (with `"auto"`: at least [`AUTO_MIN_READ`] and the
//! adaptive policy picks DMA), and this CPU has a channel. Otherwise the CPU copies, and
//! the reason is counted. The checks run cheapest first: a read routed to the CPU never
//! looks up a channel.
//!
//! # The read side
//!
//! A DMA route comes with the read side of the client lock ([`ReadSide`]). Copies are
//! submitted only while a read side is held, and [`NetDma::disable`] takes the write side,
//! so once `disable` holds it no new copy can start. `recv` keeps its read side until its
//! copies are done; the pipelined receive, whose copies outlive one call, takes a read
//! side for each batch it submits and counts its copies in flight, and `disable` then waits
//! for that count to reach zero (bounded by the wait timeout) before it drops the client.

use crate::config::Copybreak;
use crate::control::{DmaState, NetDma, RecvParams};
use crate::counters::Fallback;
use crate::sync::RwLockReadGuard;
use dmaengine::{Cap, Channel};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// With the adaptive copybreak, reads shorter than this always go to the CPU: below it
/// the hand-off alone costs more than the copy (4 KiB copies in ~0.1 us here).
pub const AUTO_MIN_READ: usize = 4096;

/// The read side of the client lock: while one is held, `disable` waits.
pub(crate) type ReadSide<'a> = RwLockReadGuard<'a, DmaState>;

/// Who copies a read.
#[derive(Clone, Debug)]
pub(crate) enum Route {
    /// The CPU, counted under this reason (`None`: an empty read, nothing to count).
    Cpu(Option<Fallback>),
    /// This DMA channel.
    Dma(Channel),
}

/// A routing decision.
pub(crate) struct Routed<'a> {
    /// Who copies.
    pub(crate) route: Route,
    /// Held exactly when the route is DMA.
    pub(crate) side: Option<ReadSide<'a>>,
    /// The adaptive policy measures this read (its cost is a sample of its route).
    pub(crate) sample: bool,
}

impl Routed<'_> {
    fn cpu(reason: Fallback, sample: bool) -> Self {
        Routed {
            route: Route::Cpu(Some(reason)),
            side: None,
            sample,
        }
    }
}

impl NetDma {
    /// Routes a read of `len` bytes.
    pub(crate) fn route(&self, len: usize, p: &RecvParams) -> Routed<'_> {
        if len == 0 {
            return Routed {
                route: Route::Cpu(None),
                side: None,
                sample: false,
            };
        }
        if !self.enabled.load(Ordering::Relaxed) {
            return Routed::cpu(Fallback::Disabled, false);
        }
        if p.low_latency {
            return Routed::cpu(Fallback::LowLatency, false);
        }
        let threshold = match p.copybreak {
            Copybreak::Bytes(n) => n,
            Copybreak::Auto => AUTO_MIN_READ,
        };
        if len < threshold {
            return Routed::cpu(Fallback::BelowCopybreak, false);
        }
        let mut sample = false;
        if p.copybreak.is_auto() {
            // Before the channel lookup, so a read the policy sends to the CPU costs no
            // lock and no lookup.
            let choice = self.adaptive.choose(|| self.clock_ns());
            if !choice.dma {
                return Routed::cpu(Fallback::Adaptive, choice.sample);
            }
            sample = choice.sample;
        }
        match self.dma_channel() {
            Ok((side, channel)) => Routed {
                route: Route::Dma(channel),
                side: Some(side),
                sample,
            },
            Err(reason) => Routed::cpu(reason, false),
        }
    }

    /// This CPU's channel under a read side, for a read that may go to DMA. Takes the
    /// client again lazily after an idle release; fails (without waiting) while `disable`
    /// holds or waits for the write side.
    pub(crate) fn dma_channel(&self) -> Result<(ReadSide<'_>, Channel), Fallback> {
        self.note_eligible_read(Instant::now());
        let mut side = self.dma.try_read().ok_or(Fallback::Disabled)?;
        if side.client.is_none() {
            drop(side);
            self.reacquire();
            side = self.dma.try_read().ok_or(Fallback::Disabled)?;
        }
        let client = side.client.as_ref().ok_or(Fallback::Disabled)?;
        let channel = client
            .find_channel(Cap::Memcpy)
            .ok_or(Fallback::NoChannel)?;
        Ok((side, channel))
    }
}
