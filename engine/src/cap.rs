//! Capabilities: what a device can do (`dma_cap_mask_t` in Linux).

use serde::Serialize;
use std::fmt;

/// One DMA capability (`enum dma_transaction_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cap {
    /// Memory to memory copy (`DMA_MEMCPY`).
    Memcpy,
    /// Fill memory with a byte value (`DMA_MEMSET`).
    Memset,
    /// The device's channels are only handed out exclusively through
    /// [`Engine::request_channel`](crate::Engine::request_channel) (`DMA_PRIVATE`).
    /// This is a property of a device, not an operation.
    Private,
}

impl Cap {
    /// Every capability, in table order.
    pub const ALL: [Cap; 3] = [Cap::Memcpy, Cap::Memset, Cap::Private];

    /// The capabilities that are operations (and so have a column in the per-CPU table).
    pub const OPERATIONS: [Cap; 2] = [Cap::Memcpy, Cap::Memset];

    const fn bit(self) -> u32 {
        1 << self as u32
    }

    /// The Linux name of the capability, as sysfs and the kernel headers spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Cap::Memcpy => "DMA_MEMCPY",
            Cap::Memset => "DMA_MEMSET",
            Cap::Private => "DMA_PRIVATE",
        }
    }

    /// Index of an operation capability in the per-CPU table, `None` for [`Cap::Private`].
    pub(crate) const fn table_index(self) -> Option<usize> {
        match self {
            Cap::Memcpy => Some(0),
            Cap::Memset => Some(1),
            Cap::Private => None,
        }
    }
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`Cap`]s (`dma_cap_mask_t`).
///
/// ```
/// use dmaengine::{Cap, CapMask};
/// let mask = CapMask::from(Cap::Memcpy) | Cap::Memset;
/// assert!(mask.contains(Cap::Memcpy));
/// assert!(!mask.contains(Cap::Private));
/// assert_eq!(mask.operations(), mask);
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CapMask(u32);

impl CapMask {
    /// The empty set.
    pub const EMPTY: CapMask = CapMask(0);

    /// A mask holding exactly `caps`.
    pub fn of(caps: &[Cap]) -> CapMask {
        caps.iter().fold(CapMask::EMPTY, |m, &c| m | c)
    }

    /// Whether `cap` is in the set (`dma_has_cap`).
    pub const fn contains(self, cap: Cap) -> bool {
        self.0 & cap.bit() != 0
    }

    /// Whether every capability of `other` is in `self`.
    pub const fn contains_all(self, other: CapMask) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the two sets share a capability.
    pub const fn intersects(self, other: CapMask) -> bool {
        self.0 & other.0 != 0
    }

    /// The set without [`Cap::Private`]: only the operations.
    pub const fn operations(self) -> CapMask {
        CapMask(self.0 & !Cap::Private.bit())
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The set with `cap` added.
    pub const fn with(self, cap: Cap) -> CapMask {
        CapMask(self.0 | cap.bit())
    }

    /// The capabilities in the set, in [`Cap::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Cap> {
        Cap::ALL.into_iter().filter(move |&c| self.contains(c))
    }
}

impl From<Cap> for CapMask {
    fn from(cap: Cap) -> Self {
        CapMask(cap.bit())
    }
}

impl std::ops::BitOr<Cap> for CapMask {
    type Output = CapMask;
    fn bitor(self, cap: Cap) -> CapMask {
        self.with(cap)
    }
}

impl std::ops::BitOr for CapMask {
    type Output = CapMask;
    fn bitor(self, other: CapMask) -> CapMask {
        CapMask(self.0 | other.0)
    }
}

impl fmt::Debug for CapMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for CapMask {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_drop_private() {
        let m = CapMask::of(&[Cap::Memcpy, Cap::Private]);
        assert_eq!(m.operations(), CapMask::from(Cap::Memcpy));
        assert!(m.contains_all(CapMask::from(Cap::Private)));
        assert!(!m.operations().contains(Cap::Private));
    }

    #[test]
    fn serializes_as_list_of_names() {
        let m = CapMask::of(&[Cap::Memset, Cap::Memcpy]);
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"["memcpy","memset"]"#);
    }
}
