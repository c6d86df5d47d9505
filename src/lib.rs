//! Umbrella crate: re-exports [`dmaengine`] and [`netdma`] so examples and integration
//! tests can use both through one dependency, and hosts the harnesses they share.

pub use dmaengine;
pub use netdma;

pub mod soak;
