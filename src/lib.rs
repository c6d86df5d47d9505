//! Umbrella crate: re-exports [`dmaengine`] and [`netdma`] so examples and integration
//! tests can use both through one dependency.

pub use dmaengine;
pub use netdma;
