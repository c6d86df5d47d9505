//! netdma: TCP receive copies offloaded to DMA channels, on top of smoltcp.
//!
//! This is Linux's NET_DMA rebuilt in userspace: a read from a TCP socket of at least
//! `tcp_dma_copybreak` bytes is copied from the socket's receive ring into the caller's
//! buffer by a DMA channel found in the per-CPU table of a [`dmaengine::Engine`];
//! everything else, and everything DMA cannot do, is copied by the CPU. Offload can be
//! disabled and enabled at run time, and disabling drops every engine reference so a DMA
//! device can be removed.
//!
//! - [`config`]: settings, from a TOML file, `NETDMA_*` variables and sysctl-style keys.
//! - [`NetDma`] (in [`control`]): routing state, enable/disable, idle release, counters.
//! - [`ctl`]: the control socket: those run-time controls, the engine's device removal and
//!   the counters, served to other processes (`netdmactl`) as line-delimited JSON.
//! - [`recv`]: the receive path itself, [`NetDma::recv`]; every read, there and in the
//!   pipeline, is routed by one decision (`route`).
//! - [`link`]: link devices for smoltcp (in-memory pair, TAP, AF_PACKET).
//! - [`stack`]: a smoltcp interface with its sockets and link; [`pipeline`] adds the
//!   pipelined receive (copies in flight while the stack polls); [`pair`] joins two
//!   stacks in memory for tests, benchmarks and the embedded echo server.
//! - [`counters`]: where every byte went, and why.

#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

// `unsafe` lives in three places only: the thread CPU clock, the link devices' system
// calls, and the pipelined receive's raw copies out of the socket ring.
#[allow(unsafe_code)]
mod adaptive;
pub mod config;
pub mod control;
pub mod counters;
pub mod ctl;
#[allow(unsafe_code)]
pub mod link;
pub mod pair;
#[allow(unsafe_code)]
pub mod pipeline;
pub mod recv;
mod route;
pub mod stack;
mod sync;

pub use adaptive::thread_cpu_ns;
pub use config::{Copybreak, NetDmaConfig};
pub use control::{ControlError, NetDma, NetDmaSnapshot};
pub use counters::{Fallback, FallbackCounts, RecvStats};
pub use recv::RecvError;
