//! Cookies and transfer status (`dma_cookie_t`, `enum dma_status`).

use crate::ChannelId;
use serde::Serialize;
use std::fmt;

/// Identifies one submitted transfer on one channel (`dma_cookie_t`).
///
/// Sequence numbers are 64-bit and start at 1 on every channel; they never wrap in
/// practice (2^64 transfers), so unlike Linux's 32-bit cookies no wrap-around ordering is
/// needed. A cookie remembers its channel so that asking the wrong channel about it is
/// a typed error rather than a silently wrong answer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Cookie {
    channel: ChannelId,
    seq: u64,
}

impl Cookie {
    pub(crate) const fn new(channel: ChannelId, seq: u64) -> Cookie {
        Cookie { channel, seq }
    }

    /// The channel the transfer was submitted to.
    pub const fn channel(self) -> ChannelId {
        self.channel
    }

    /// The per-channel sequence number, as the provider assigned it (1, 2, 3, ...).
    pub const fn seq(self) -> u64 {
        self.seq
    }
}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cookie({}#{})", self.channel, self.seq)
    }
}

impl fmt::Display for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The state of a transfer (`enum dma_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TxStatus {
    /// Done; the destination holds the data. The device will not touch either buffer again.
    Complete,
    /// Submitted (and possibly not yet issued); the device may still access the buffers.
    InProgress,
    /// Failed or cancelled. The destination may hold any mix of old and new bytes, but the
    /// device will not touch either buffer again.
    Error,
}

impl TxStatus {
    /// Whether the device is finished with the buffers (complete or failed).
    pub const fn is_done(self) -> bool {
        !matches!(self, TxStatus::InProgress)
    }
}
