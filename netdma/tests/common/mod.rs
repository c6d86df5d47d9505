//! Shared test bed: a seeded stream from the client stack to the server stack, read on the
//! server through netdma and checked byte for byte.
#![allow(dead_code)]

use netdma::pair::StackPair;
use netdma::NetDma;
use smoltcp::iface::SocketHandle;

/// Deterministic pseudo-random bytes (xorshift64).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes()[..(len - out.len()).min(8)]);
    }
    out
}

pub const MIB: usize = 1 << 20;

/// A connected pair with 1 MiB socket buffers.
pub fn connected(mtu: usize) -> (StackPair, SocketHandle, SocketHandle) {
    let mut pair = StackPair::new(mtu);
    let (server, client) = pair.connect(MIB, MIB).expect("handshake");
    (pair, server, client)
}

/// Polls beyond which a stream is declared stuck (a test failure, never a hang).
const STUCK_POLLS: usize = 1_000_000;

/// Sends `data` from client to server and reads it on the server with `netdma.recv`,
/// read sizes from `next_read`; `after_read(read_size, bytes)` runs after every read.
/// Returns what was received.
#[track_caller]
pub fn stream(
    pair: &mut StackPair,
    server: SocketHandle,
    client: SocketHandle,
    netdma: &NetDma,
    data: &[u8],
    mut next_read: impl FnMut() -> usize,
    mut after_read: impl FnMut(usize, usize),
) -> Vec<u8> {
    let mut sent = 0;
    let mut received = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; 0];
    let mut idle = 0;
    while received.len() < data.len() {
        let mut progress = false;
        {
            let sock = pair.client.tcp_mut(client);
            if sent < data.len() && sock.can_send() {
                let n = sock.send_slice(&data[sent..]).expect("send");
                sent += n;
                progress |= n > 0;
            }
        }
        pair.poll();
        let sock = pair.server.tcp_mut(server);
        while sock.can_recv() {
            let want = next_read().max(1);
            if buf.len() < want {
                buf.resize(want, 0);
            }
            let n = netdma.recv(sock, &mut buf[..want]).expect("recv");
            after_read(want, n);
            received.extend_from_slice(&buf[..n]);
            progress |= n > 0;
            if n == 0 {
                break;
            }
        }
        idle = if progress { 0 } else { idle + 1 };
        assert!(
            idle < STUCK_POLLS,
            "stream stuck at {} of {} bytes",
            received.len(),
            data.len()
        );
    }
    received
}

/// Asserts equality without printing megabytes on failure.
#[track_caller]
pub fn assert_same(got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "length differs");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "first differing byte at offset {i}: got {} want {}",
            got[i], want[i]
        );
    }
}

/// [`stream`] with 64 KiB reads and no per-read check.
#[track_caller]
pub fn stream_64k(
    pair: &mut StackPair,
    server: SocketHandle,
    client: SocketHandle,
    netdma: &NetDma,
    data: &[u8],
) -> Vec<u8> {
    stream(pair, server, client, netdma, data, || 65536, |_, _| {})
}
