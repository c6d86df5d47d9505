//! Bad input on the wire: random and mutated Ethernet/IPv4/TCP frames fed into a live
//! stack (truncated, wrong lengths and checksums, wild options and flags, out-of-window
//! segments) while a good connection alongside is verified byte for byte. Nothing may
//! panic or hang, and the good stream must arrive intact.

mod common;

use common::*;
use netdma::config::{Copybreak, NetDmaConfig};
use netdma::NetDma;
use proptest::prelude::*;
use smoltcp::phy::{Device, TxToken};

/// A frame to inject from the client's side of the link.
#[derive(Clone, Debug)]
enum Frame {
    /// Arbitrary bytes.
    Random(Vec<u8>),
    /// A TCP segment to the server, mutated.
    Tcp(Segment),
}

#[derive(Clone, Debug)]
struct Segment {
    /// Use the good connection's ports. Such segments carry no payload and no SYN, FIN or
    /// RST: the test cannot know the connection's sequence numbers (smoltcp does not
    /// expose them), and in-window data or a reset from the peer's own address and port
    /// is indistinguishable from the peer itself.
    good_tuple: bool,
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    options: Vec<u8>,
    payload: Vec<u8>,
    /// Added to the IPv4 total length field (wrapping).
    ip_len_delta: i16,
    /// Cut the frame to this many bytes.
    truncate: Option<usize>,
    bad_checksum: bool,
    ttl: u8,
}

fn segment() -> impl Strategy<Value = Segment> {
    (
        any::<bool>(),
        any::<u16>(),
        prop_oneof![Just(5000u16), any::<u16>()],
        any::<u32>(),
        any::<u32>(),
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 0..40),
        prop::collection::vec(any::<u8>(), 0..1500),
        prop_oneof![Just(0i16), any::<i16>()],
        prop::option::of(0usize..200),
        any::<bool>(),
        any::<u8>(),
    )
        .prop_map(
            |(
                good_tuple,
                src_port,
                dst_port,
                seq,
                ack,
                flags,
                options,
                payload,
                ip_len_delta,
                truncate,
                bad_checksum,
                ttl,
            )| Segment {
                good_tuple,
                src_port,
                dst_port,
                seq,
                ack,
                flags,
                options,
                payload,
                ip_len_delta,
                truncate,
                bad_checksum,
                ttl,
            },
        )
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2000).prop_map(Frame::Random),
        segment().prop_map(Frame::Tcp),
    ]
}

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builds the bytes of `seg`. `good` is the good connection's (client port, server port).
fn build(seg: &Segment, good: (u16, u16)) -> Vec<u8> {
    let (src_port, dst_port) = if seg.good_tuple {
        (good.0, good.1)
    } else {
        let src = if seg.src_port == good.0 {
            seg.src_port ^ 1
        } else {
            seg.src_port
        };
        (src, seg.dst_port)
    };
    let seq = seg.seq;
    let payload: &[u8] = if seg.good_tuple { &[] } else { &seg.payload };
    let mut options = seg.options.clone();
    options.truncate(40);
    while !options.len().is_multiple_of(4) {
        options.push(1); // NOP
    }
    let tcp_len = 20 + options.len() + payload.len();
    let mut tcp = Vec::with_capacity(tcp_len);
    tcp.extend_from_slice(&src_port.to_be_bytes());
    tcp.extend_from_slice(&dst_port.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&seg.ack.to_be_bytes());
    tcp.push((((20 + options.len()) / 4) as u8) << 4);
    tcp.push(if seg.good_tuple {
        seg.flags & !0x07
    } else {
        seg.flags
    });
    tcp.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    tcp.extend_from_slice(&options);
    tcp.extend_from_slice(payload);
    let src_ip = [10, 0, 0, 2];
    let dst_ip = [10, 0, 0, 1];
    let pseudo: u32 = [src_ip, dst_ip]
        .iter()
        .flat_map(|a| a.chunks(2))
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>()
        + 6
        + tcp_len as u32;
    let mut sum = checksum(&tcp, pseudo);
    if seg.bad_checksum {
        sum = sum.wrapping_add(1);
    }
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());

    let total = (20 + tcp_len) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.wrapping_add_signed(seg.ip_len_delta).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, seg.ttl, 6, 0, 0]);
    ip.extend_from_slice(&src_ip);
    ip.extend_from_slice(&dst_ip);
    let ip_sum = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());

    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&tcp);
    if let Some(n) = seg.truncate {
        frame.truncate(n);
    }
    frame
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn garbage_frames_do_not_disturb_a_good_connection(frames in prop::collection::vec(frame(), 1..24), seed in any::<u64>()) {
        let netdma = NetDma::from_config(NetDmaConfig {
            tcp_dma_copybreak: Copybreak::Bytes(4096),
            ..NetDmaConfig::default()
        }).unwrap();
        let (mut pair, server, client) = connected(65535);
        let data = pattern(512 * 1024, seed);
        let good_client_port = pair.client.tcp_mut(client).local_endpoint().unwrap().port;
        let good_server_port = pair.server.tcp_mut(server).local_endpoint().unwrap().port;
        let mut sent = 0;
        let mut received = Vec::new();
        let mut buf = vec![0u8; 65536];
        let mut frames = frames.into_iter();
        let mut polls = 0u64;
        while received.len() < data.len() {
            polls += 1;
            prop_assert!(polls < 2_000_000, "stuck at {} of {}", received.len(), data.len());
            let sock = pair.client.tcp_mut(client);
            if sent < data.len() && sock.can_send() {
                sent += sock.send_slice(&data[sent..(sent + 32 * 1024).min(data.len())]).unwrap();
            }
            if let Some(f) = frames.next() {
                let bytes = match &f {
                    Frame::Random(b) => b.clone(),
                    Frame::Tcp(seg) => build(seg, (good_client_port, good_server_port)),
                };
                if !bytes.is_empty() && bytes.len() <= 65535 + 14 {
                    if let Some(tx) = pair.client.link_mut().transmit(smoltcp::time::Instant::now()) {
                        tx.consume(bytes.len(), |b| b.copy_from_slice(&bytes));
                    }
                }
            }
            pair.poll();
            let sock = pair.server.tcp_mut(server);
            let n = netdma.recv(sock, &mut buf).unwrap();
            received.extend_from_slice(&buf[..n]);
        }
        prop_assert!(received == data, "the good stream was corrupted");
    }
}
