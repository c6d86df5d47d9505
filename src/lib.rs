//! Umbrella crate: re-exports [`dmaengine`] and [`netdma`] so the examples and the
//! integration tests use both through one dependency, and holds the code they share.
//!
//! - [`echo`]: the echo server's per-connection state and the embedded run (a smoltcp
//!   echo server and client in one process, every byte verified).
//! - [`listeners`]: the echo server's pool of listening sockets, grown up to a maximum
//!   number of connections.
//! - [`report`]: the echo server's end-of-run report, and the final disable-and-unregister.
//! - [`setup`]: a [`netdma::NetDma`] from a config file, `NETDMA_*` variables and flags.
//! - [`pattern`]: seeded, position-addressable test data.
//! - [`size`]: sizes on the command line and for people.
//! - [`soak`]: the soak harness (verified streams under seeded chaos).
//! - [`tune`]: the copybreak tuner's edit of a `netdma.toml`.

pub use dmaengine;
pub use netdma;

pub mod echo;
pub mod listeners;
pub mod pattern;
pub mod pipelined;
pub mod report;
pub mod setup;
pub mod size;
pub mod soak;
pub mod tune;
