//! The per-CPU channel table (`channel_table[cap][cpu]`) and its distribution
//! (`dma_channel_rebalance`, `nth_chan`).
//!
//! The table is rebuilt whole under the engine lock and published in one atomic swap;
//! [`Engine::find_channel`](crate::Engine::find_channel) reads it without a lock: one
//! `sched_getcpu`, one load of the published table, one index.

use crate::cap::Cap;
use crate::channel::{Channel, ChannelShared};
use crate::sync::Ordering;
use crate::ChannelId;
use serde::Serialize;
use std::sync::Arc;

/// Number of operation capabilities, i.e. table columns.
pub(crate) const TABLE_CAPS: usize = Cap::OPERATIONS.len();

/// One published distribution: for each operation capability, a channel per CPU slot.
#[derive(Default)]
pub(crate) struct ChannelTable {
    /// `slots[cap][cpu]`; every possible CPU has a slot, offline ones borrow an online
    /// CPU's channel (a userspace thread can run anywhere, unlike on a real offline CPU).
    slots: [Box<[Option<Channel>]>; TABLE_CAPS],
}

impl ChannelTable {
    /// This CPU's channel for `cap`.
    #[inline]
    pub(crate) fn lookup(&self, cap: Cap, cpu: usize) -> Option<&Channel> {
        let column = &self.slots[cap.table_index()?];
        if column.is_empty() {
            return None;
        }
        column[cpu % column.len()].as_ref()
    }

    pub(crate) fn snapshot(&self, online: &[usize]) -> TableSnapshot {
        let column = |cap: Cap| -> Vec<Option<ChannelId>> {
            let idx = cap.table_index().expect("operation capability");
            self.slots[idx]
                .iter()
                .map(|c| c.as_ref().map(Channel::id))
                .collect()
        };
        TableSnapshot {
            online_cpus: online.to_vec(),
            memcpy: column(Cap::Memcpy),
            memset: column(Cap::Memset),
        }
    }
}

/// The per-CPU table as data: which channel each CPU uses, per capability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TableSnapshot {
    /// The online CPU set the table was built for.
    pub online_cpus: Vec<usize>,
    /// `memcpy[cpu]`: the channel CPU `cpu` uses for `DMA_MEMCPY`.
    pub memcpy: Vec<Option<ChannelId>>,
    /// `memset[cpu]`: the channel CPU `cpu` uses for `DMA_MEMSET`.
    pub memset: Vec<Option<ChannelId>>,
}

/// Distributes `candidates` (public channels in registration order, each with its device's
/// capabilities and a non-zero client count) over the online CPUs, exactly as Linux's
/// `dma_channel_rebalance`: CPU slots are filled capability by capability, the n-th slot
/// overall gets the n-th channel with the capability (`nth_chan`), and once those run out,
/// the one with the lowest table count. Only capabilities in `wanted` get a column.
///
/// `slots` is the table size: every CPU number that can occur. Resets and then sets every
/// candidate's `table_count`.
pub(crate) fn distribute(
    candidates: &[Arc<ChannelShared>],
    wanted: crate::CapMask,
    online: &[usize],
    slots: usize,
) -> ChannelTable {
    for chan in candidates {
        chan.table_count.store(0, Ordering::Relaxed);
    }
    let mut table = ChannelTable::default();
    let mut n = 0usize;
    for cap in Cap::OPERATIONS {
        let idx = cap.table_index().expect("operation capability");
        if !wanted.contains(cap) {
            continue;
        }
        let mut column: Vec<Option<Channel>> = vec![None; slots];
        for &cpu in online {
            // Linux: `num_possible_cpus() > 1 ? nth_chan(cap, n++) : nth_chan(cap, -1)`.
            let nth = if slots > 1 { Some(n) } else { None };
            n += 1;
            column[cpu] = nth_chan(candidates, cap, nth).map(|c| Channel(c.clone()));
        }
        // Offline CPUs borrow the channel of an online CPU (round robin) so a thread the
        // scheduler puts there still finds one; they do not add to table counts.
        for cpu in 0..slots {
            if !online.contains(&cpu) {
                column[cpu] = column[online[cpu % online.len()]].clone();
            }
        }
        table.slots[idx] = column.into_boxed_slice();
    }
    table
}

/// `nth_chan`: the `n`-th channel with `cap` (counting across devices), or the one with the
/// lowest table count if there are fewer than `n + 1`; `None` if there is none at all.
fn nth_chan(
    candidates: &[Arc<ChannelShared>],
    cap: Cap,
    n: Option<usize>,
) -> Option<Arc<ChannelShared>> {
    let mut remaining = n;
    let mut min: Option<&Arc<ChannelShared>> = None;
    let mut found = None;
    for chan in candidates.iter().filter(|c| c.caps.contains(cap)) {
        let better = match min {
            None => true,
            Some(m) => {
                chan.table_count.load(Ordering::Relaxed) < m.table_count.load(Ordering::Relaxed)
            }
        };
        if better {
            min = Some(chan);
        }
        if remaining == Some(0) {
            found = Some(chan);
            break;
        }
        remaining = remaining.map(|r| r - 1);
    }
    let chosen = found.or(min)?;
    chosen.table_count.fetch_add(1, Ordering::Relaxed);
    Some(chosen.clone())
}
