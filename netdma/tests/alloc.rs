//! The offloaded read allocates nothing of its own once warm: no allocation per read or
//! per region on the receiving thread. What is left is the software device's doorbell
//! channel, which allocates a block per 31 doorbells (kept for its latency; see
//! `engine/src/software`).

mod common;

use common::*;
use netdma::config::{Copybreak, NetDmaConfig};
use netdma::NetDma;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting this thread's allocations while `COUNTING` is set.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds
// `GlobalAlloc`'s contract; the counting touches only const-initialized thread-locals,
// which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|a| a.set(a.get() + 1));
        }
        // SAFETY: forwarded with the caller's layout, under the caller's contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from the system allocator, with
        // this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn a_warm_dma_read_allocates_nothing_of_its_own() {
    let netdma = NetDma::from_config(NetDmaConfig {
        tcp_dma_copybreak: Copybreak::Bytes(4096),
        ..NetDmaConfig::default()
    })
    .unwrap();
    let (mut pair, server, client) = connected(65535);
    let data = pattern(8 * MIB, 77);
    // Warm up: the connection, the engine's rings, any per-thread scratch.
    let warm = stream_64k(&mut pair, server, client, &netdma, &data[..MIB]);
    assert_same(&warm, &data[..MIB]);

    let mut buf = vec![0u8; 65536];
    let mut sent = MIB;
    let mut got = Vec::with_capacity(data.len());
    let (mut reads, mut allocations) = (0u64, 0u64);
    while got.len() < data.len() - MIB {
        let sock = pair.client.tcp_mut(client);
        if sent < data.len() && sock.can_send() {
            sent += sock.send_slice(&data[sent..]).unwrap();
        }
        pair.poll();
        // Count only the read itself.
        COUNTING.with(|c| c.set(true));
        let before = ALLOCATIONS.with(Cell::get);
        let n = netdma.recv(pair.server.tcp_mut(server), &mut buf).unwrap();
        allocations += ALLOCATIONS.with(Cell::get) - before;
        COUNTING.with(|c| c.set(false));
        if n > 0 {
            reads += 1;
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert_same(&got, &data[MIB..]);
    assert!(netdma.stats().dma_bytes > 0);
    // Before the per-thread lists, every read allocated twice (228 in 112 reads).
    assert!(
        allocations * 8 < reads,
        "{allocations} allocations in {reads} DMA reads: more than the doorbell channel's"
    );
}
