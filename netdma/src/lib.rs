//! netdma: TCP receive copies offloaded to DMA channels on top of smoltcp.

pub mod config;
pub mod link;
pub mod stack;
