//! Measurement code shared by the criterion benches (`benches/`) and the report binary
//! (`src/bin/report.rs`), so that both measure the same thing the same way.
//!
//! - [`rtt`]: the cross-core cache-line round trip, which decides what offload can do here.
//! - [`copy`]: CPU memcpy against software DMA (synchronous, pipelined, CPU/DMA split),
//!   hot and cold buffers, 1..N channels.
//! - [`engine_ops`]: `find_channel` lookups, descriptor submission, completion latency.
//! - [`recv`]: a TCP stream over two smoltcp stacks joined in memory, received by each
//!   [`recv::RecvMode`], with throughput and the receiving thread's CPU time per MiB.
//! - [`report`]: runs everything interleaved, computes the ratios and targets, and renders
//!   JSON, Markdown (`BENCHMARKS.md`) and the SVG plot.
//! - [`stats`]: medians and percentiles.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod copy;
pub mod engine_ops;
pub mod handoff;
pub mod recv;
pub mod report;
pub mod rtt;
pub mod stats;

/// 1 KiB.
pub const KIB: usize = 1024;
/// 1 MiB.
pub const MIB: usize = 1024 * 1024;

/// A size as text, in IEC units: `64 B`, `4.0 KiB`, `1.0 MiB`.
pub fn fmt_size(bytes: usize) -> String {
    bytesize::ByteSize(bytes as u64).display().iec().to_string()
}
