//! Shared test bed: a seeded stream from the client stack to the server stack, read on the
//! server through netdma and checked byte for byte.
#![allow(dead_code)]

use netdma::link::MemoryLink;
use netdma::pair::StackPair;
use netdma::pipeline::Pipeline;
use netdma::stack::Stack;
use netdma::NetDma;
use smoltcp::iface::SocketHandle;
use std::sync::Arc;

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

/// A pipeline over one connection, and the client stack that feeds it.
pub struct Bed {
    pub pipeline: Pipeline<Stack<MemoryLink>>,
    pub client: Stack<MemoryLink>,
    pub server_h: SocketHandle,
    pub client_h: SocketHandle,
}

pub fn bed(netdma: Arc<NetDma>) -> Bed {
    bed_with(netdma, 65535, MIB)
}

/// A pipeline over one connection at `mtu`, with `socket_bytes` of buffer each way.
pub fn bed_with(netdma: Arc<NetDma>, mtu: usize, socket_bytes: usize) -> Bed {
    let mut pair = StackPair::new(mtu);
    let (server_h, client_h) = pair.connect(socket_bytes, socket_bytes).unwrap();
    let StackPair { server, client, .. } = pair;
    Bed {
        pipeline: Pipeline::new(server, netdma),
        client,
        server_h,
        client_h,
    }
}

/// Streams `data` through the pipeline with posted buffers of `post` bytes, keeping
/// `depth` of them posted; checks that every read comes back full, in order.
#[track_caller]
pub fn pump(bed: &mut Bed, data: &[u8], post: usize, depth: usize) -> Vec<u8> {
    pump_sizes(bed, data, &[post], depth)
}

/// As [`pump`], with the posted sizes cycling through `sizes`.
#[track_caller]
pub fn pump_sizes(bed: &mut Bed, data: &[u8], sizes: &[usize], depth: usize) -> Vec<u8> {
    let mut next_size = sizes.iter().copied().cycle();
    let mut sent = 0;
    let mut got = Vec::with_capacity(data.len());
    let mut claimed = 0; // bytes the posted reads will take
    let mut idle = 0u64;
    while got.len() < data.len() {
        let mut progress = false;
        let sock = bed.client.tcp_mut(bed.client_h);
        if sent < data.len() && sock.can_send() {
            sent += sock.send_slice(&data[sent..]).unwrap();
            progress = true;
        }
        bed.client.poll();
        while bed.pipeline.posted(bed.server_h) < depth && claimed < data.len() {
            let want = next_size.next().unwrap().min(data.len() - claimed);
            bed.pipeline
                .post_recv(bed.server_h, vec![0; want], want)
                .unwrap();
            claimed += want;
        }
        progress |= bed.pipeline.poll();
        while let Some(done) = bed.pipeline.take_completed(bed.server_h) {
            assert_eq!(done.error, None);
            assert_eq!(
                done.len,
                done.buf.len(),
                "a read completed before it was full"
            );
            got.extend_from_slice(&done.buf[..done.len]);
            progress = true;
        }
        idle = if progress { 0 } else { idle + 1 };
        assert!(idle < 5_000_000, "stuck at {} of {}", got.len(), data.len());
    }
    got
}
