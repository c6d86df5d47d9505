//! The ACK guard's rewrites, frame by frame, and with smoltcp itself.

use super::*;

/// A TCP/IPv4 frame (no options) with the given fields and `payload` bytes.
fn frame(sport: u16, flags: u8, ack: u32, win: u16, payload: usize) -> Vec<u8> {
    let mut f = vec![0u8; 54 + payload];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
    f[23] = 6;
    f[26..30].copy_from_slice(&[10, 0, 0, 2]);
    f[30..34].copy_from_slice(&[10, 0, 0, 1]);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&7000u16.to_be_bytes());
    f[42..46].copy_from_slice(&ack.to_be_bytes());
    f[46] = 0x50;
    f[47] = flags;
    f[48..50].copy_from_slice(&win.to_be_bytes());
    f
}

fn ack_win(f: &[u8]) -> (u32, u16) {
    (
        u32::from_be_bytes([f[42], f[43], f[44], f[45]]),
        u16::from_be_bytes([f[48], f[49]]),
    )
}

#[test]
fn a_data_segment_overtaken_by_a_newer_ack_gets_the_newer_ack_and_window() {
    let mut g = AckGuard::default();
    let mut pure = frame(40000, 0x10, 5000, 300, 0);
    g.check(&mut pure);
    let mut data = frame(40000, 0x18, 4000, 900, 1000);
    g.check(&mut data);
    assert_eq!(ack_win(&data), (5000, 300));
    assert_eq!(g.rewritten, 1);
    // The payload is untouched.
    assert!(data[54..].iter().all(|b| *b == 0));
    // A FIN without data too.
    let mut fin = frame(40000, 0x11, 4500, 900, 0);
    g.check(&mut fin);
    assert_eq!(ack_win(&fin), (5000, 300));
    assert_eq!(g.rewritten, 2);
}

#[test]
fn in_order_and_pure_acks_are_left_alone() {
    let mut g = AckGuard::default();
    for (ack, payload) in [(100u32, 10usize), (200, 0), (300, 10), (u32::MAX - 5, 10)] {
        let mut f = frame(40001, 0x10, ack, 77, payload);
        let before = f.clone();
        g.check(&mut f);
        if ack != u32::MAX - 5 {
            assert_eq!(f, before);
        }
    }
    // An old pure ACK: smoltcp may ignore it, nothing is lost; left alone.
    let mut g = AckGuard::default();
    g.check(&mut frame(40001, 0x10, 1000, 1, 0));
    let mut old = frame(40001, 0x10, 900, 1, 0);
    let before = old.clone();
    g.check(&mut old);
    assert_eq!(old, before);
    assert_eq!(g.rewritten, 0);
}

#[test]
fn a_zero_window_overtaken_by_the_update_that_reopened_it_gets_the_update() {
    // As captured on a veth: the peer sent "ack 5000 win 0", then "ack 5000 win 456";
    // the link got them the other way round.
    let mut g = AckGuard::default();
    g.check(&mut frame(40002, 0x10, 5000, 456, 0));
    let mut stale = frame(40002, 0x10, 5000, 0, 0);
    g.check(&mut stale);
    assert_eq!(ack_win(&stale), (5000, 456));
    assert_eq!(g.rewritten, 1);
    // Data with the same ACK and a smaller window: the window is replaced too.
    let mut data = frame(40002, 0x18, 5000, 100, 10);
    g.check(&mut data);
    assert_eq!(ack_win(&data), (5000, 456));
    assert_eq!(g.rewritten, 2);
    // A larger window with the same ACK, then a newer ACK with a smaller window
    // (its right edge may well be further right): both left alone.
    for (ack, win) in [(5000u32, 900u16), (9000, 10)] {
        let mut f = frame(40002, 0x10, ack, win, 0);
        let before = f.clone();
        g.check(&mut f);
        assert_eq!(f, before);
    }
    assert_eq!(g.rewritten, 2);
    // And a zero window that really is the newest (a newer ACK) stays zero.
    let mut closed = frame(40002, 0x10, 9500, 0, 0);
    g.check(&mut closed);
    assert_eq!(ack_win(&closed), (9500, 0));
    assert_eq!(g.rewritten, 2);
}

#[test]
fn sequence_numbers_wrap_and_flows_are_separate() {
    let mut g = AckGuard::default();
    g.check(&mut frame(1, 0x10, u32::MAX - 10, 5, 0));
    // 20 bytes later, across the wrap: newer, kept.
    let mut newer = frame(1, 0x18, 9, 6, 10);
    g.check(&mut newer);
    assert_eq!(ack_win(&newer), (9, 6));
    // Another port's older ACK is its own business.
    let mut other = frame(2, 0x18, 3, 7, 10);
    g.check(&mut other);
    assert_eq!(ack_win(&other), (3, 7));
    // Older than the wrapped one on flow 1: rewritten.
    let mut old = frame(1, 0x18, u32::MAX - 1, 8, 10);
    g.check(&mut old);
    assert_eq!(ack_win(&old), (9, 6));
    assert_eq!(g.rewritten, 1);
}

#[test]
fn adjacent_swapped_segments_are_recognised() {
    let seg = |seq: u32, sport: u16| {
        let mut f = frame(sport, 0x18, 1, 1, 100);
        f[38..42].copy_from_slice(&seq.to_be_bytes());
        f
    };
    assert!(swapped(&seg(1100, 5), &seg(1000, 5)));
    assert!(!swapped(&seg(1000, 5), &seg(1100, 5)));
    assert!(!swapped(&seg(1100, 5), &seg(1000, 6)));
    assert!(!swapped(&seg(1200, 5), &seg(1000, 5)));
    // Across the wrap.
    assert!(swapped(&seg(40, 5), &seg(u32::MAX - 59, 5)));
    // A pure ACK is no data segment.
    assert!(!swapped(&seg(1100, 5), &frame(5, 0x10, 1, 1, 0)));
}

/// A segment smoltcp sends to the peer's port `dport`: ACK number and window.
fn from_smoltcp(dport: u16, flags: u8, ack: u32, win: u16) -> Vec<u8> {
    let mut f = frame(7000, flags, ack, win, 0);
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f
}

fn with_seq(mut f: Vec<u8>, seq: u32) -> Vec<u8> {
    f[38..42].copy_from_slice(&seq.to_be_bytes());
    f
}

fn seq_of(f: &[u8]) -> u32 {
    u32::from_be_bytes([f[38], f[39], f[40], f[41]])
}

fn ip_total(f: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([f[16], f[17]]))
}

#[test]
fn a_zero_window_from_the_peer_reaches_smoltcp_one_byte_short() {
    let mut g = AckGuard::default();
    // Before smoltcp's SYN is seen, nothing is known of its sequence space: left alone.
    let unknown = frame(40003, 0x10, 5000, 0, 0);
    let mut kept = unknown.clone();
    g.check(&mut kept);
    assert_eq!(kept, unknown);
    // smoltcp answers a new connection (SYN-ACK, its sequence number 999).
    g.check(&mut with_seq(frame(40004, 0x02, 0, 64, 0), 77));
    g.sent(&with_seq(from_smoltcp(40004, 0x12, 78, 512), 999));
    // The handshake's ACK and a window that closes later, with data acknowledged.
    let mut hello = frame(40004, 0x10, 1000, 100, 0);
    g.check(&mut hello);
    assert_eq!(ack_win(&hello), (1000, 100));
    let mut closed = frame(40004, 0x10, 5000, 0, 0);
    g.check(&mut closed);
    assert_eq!(ack_win(&closed), (4999, 0), "one byte short");
    // Data (or a FIN) the peer sends under its closed window: the same.
    let mut data = frame(40004, 0x19, 5000, 0, 10);
    g.check(&mut data);
    assert_eq!(ack_win(&data), (4999, 0));
    assert_eq!(g.peer_zero_windows, 2);
    // The update that reopens the window goes as sent: to smoltcp it acknowledges
    // one more byte, so even LAST-ACK takes it.
    let reopen = frame(40004, 0x10, 5000, 300, 0);
    let mut kept = reopen.clone();
    g.check(&mut kept);
    assert_eq!(kept, reopen);
    // A late copy of the zero-window ACK is a stale window now: it gets the update's.
    let mut late = frame(40004, 0x10, 5000, 0, 0);
    g.check(&mut late);
    assert_eq!(ack_win(&late), (5000, 300));
    assert_eq!(g.peer_zero_windows, 2);
    // Once smoltcp's FIN (after byte 8999) is acknowledged, a zero window is left as
    // it is: smoltcp has nothing left to send, and one short would un-acknowledge the FIN.
    g.sent(&with_seq(from_smoltcp(40004, 0x11, 78, 512), 9000));
    let done = frame(40004, 0x10, 9001, 0, 0);
    let mut kept = done.clone();
    g.check(&mut kept);
    assert_eq!(kept, done);
    // So is one that acknowledges only smoltcp's SYN.
    g.check(&mut with_seq(frame(40005, 0x02, 0, 64, 0), 77));
    g.sent(&with_seq(from_smoltcp(40005, 0x12, 78, 512), 999));
    let syn_only = frame(40005, 0x10, 1000, 0, 0);
    let mut kept = syn_only.clone();
    g.check(&mut kept);
    assert_eq!(kept, syn_only);
    assert_eq!(g.peer_zero_windows, 2);
}

#[test]
fn under_a_closed_window_segments_become_the_pure_ack_smoltcp_accepts() {
    use crate::link::vnet::{verify_frame, RxCheck};
    let mut g = AckGuard::default();
    // smoltcp expects byte 9000 next and has no room.
    g.sent(&from_smoltcp(40000, 0x10, 9000, 0));
    // Data at the expected sequence number, with FIN and PSH, and a new ACK.
    let mut data = with_seq(frame(40000, 0x19, 7000, 512, 100), 9000);
    g.check(&mut data);
    assert_eq!(seq_of(&data), 9000);
    assert_eq!(ack_win(&data), (7000, 512));
    assert_eq!(ip_total(&data), 40, "the payload is cut off");
    assert_eq!(data[47], 0x10, "FIN and PSH cleared, ACK kept");
    assert_eq!(verify_frame(&data[..54]), Ok(RxCheck::Verified));
    // A window probe (one below the expected sequence number) and a pure ACK sent
    // after data smoltcp dropped (beyond it).
    for seq in [8999, 9100] {
        let mut probe = with_seq(frame(40000, 0x10, 7000, 512, 0), seq);
        g.check(&mut probe);
        assert_eq!(seq_of(&probe), 9000);
        assert_eq!(verify_frame(&probe), Ok(RxCheck::Verified));
    }
    assert_eq!(g.zero_window_acks, 3);
    // A pure ACK at the expected sequence number is accepted as it is.
    let ok = with_seq(frame(40000, 0x10, 7100, 512, 0), 9000);
    let mut same = ok.clone();
    g.check(&mut same);
    assert_eq!(same, ok);
    assert_eq!(g.zero_window_acks, 3);
    // Another flow's window is its own.
    let other = with_seq(frame(40001, 0x18, 7000, 512, 100), 9000);
    let mut untouched = other.clone();
    g.check(&mut untouched);
    assert_eq!(untouched, other);
    // The window opens: data goes through unchanged again.
    g.sent(&from_smoltcp(40000, 0x10, 9000, 64));
    let open = with_seq(frame(40000, 0x18, 7200, 512, 100), 9000);
    let mut kept = open.clone();
    g.check(&mut kept);
    assert_eq!(kept, open);
    assert_eq!(g.zero_window_acks, 3);
    // A reset forgets the flow, closed window included.
    g.sent(&from_smoltcp(40000, 0x10, 9100, 0));
    g.sent(&from_smoltcp(40000, 0x14, 9100, 0));
    let after_reset = with_seq(frame(40000, 0x18, 7300, 512, 100), 9100);
    let mut kept = after_reset.clone();
    g.check(&mut kept);
    assert_eq!(kept, after_reset);
}

#[test]
fn a_new_connection_starts_afresh() {
    let mut g = AckGuard::default();
    g.check(&mut frame(3, 0x10, 1_000_000, 5, 0));
    g.check(&mut frame(3, 0x02, 0, 5, 0)); // SYN on the same 4-tuple
    let mut data = frame(3, 0x18, 10, 5, 10);
    g.check(&mut data);
    assert_eq!(ack_win(&data), (10, 5));
    assert_eq!(g.rewritten, 0);
    // Frames that are not TCP/IPv4, or too short, are ignored.
    let mut arp = frame(3, 0x18, 1, 1, 0);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let before = arp.clone();
    g.check(&mut arp);
    assert_eq!(arp, before);
    g.check(&mut [0u8; 20]);
}

/// Two smoltcp stacks joined by an in-test cable, the server's end passing frames
/// through an [`AckGuard`] as the kernel-backed links do (or not, to show what smoltcp
/// does alone). Time never moves unless a test moves it.
mod with_smoltcp {
    use std::collections::VecDeque;

    use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
    use smoltcp::phy::{self, Checksum, Device, DeviceCapabilities, Medium};
    use smoltcp::socket::tcp;
    use smoltcp::time::{Duration, Instant};
    use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

    use super::super::AckGuard;

    /// One end of the cable.
    #[derive(Default)]
    struct End {
        inbox: VecDeque<Vec<u8>>,
        outbox: VecDeque<Vec<u8>>,
        guard: Option<AckGuard>,
    }

    struct Rx(Vec<u8>);

    impl phy::RxToken for Rx {
        fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
            f(&self.0)
        }
    }

    struct Tx<'a> {
        outbox: &'a mut VecDeque<Vec<u8>>,
        guard: Option<&'a mut AckGuard>,
    }

    impl phy::TxToken for Tx<'_> {
        fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
            let mut frame = vec![0; len];
            let r = f(&mut frame);
            if let Some(g) = self.guard {
                g.sent(&frame);
            }
            self.outbox.push_back(frame);
            r
        }
    }

    impl Device for End {
        type RxToken<'a> = Rx;
        type TxToken<'a> = Tx<'a>;

        fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
            let mut frame = self.inbox.pop_front()?;
            if let Some(g) = &mut self.guard {
                g.check(&mut frame);
            }
            let tx = Tx {
                outbox: &mut self.outbox,
                guard: self.guard.as_mut(),
            };
            Some((Rx(frame), tx))
        }

        fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
            Some(Tx {
                outbox: &mut self.outbox,
                guard: self.guard.as_mut(),
            })
        }

        fn capabilities(&self) -> DeviceCapabilities {
            let mut caps = DeviceCapabilities::default();
            caps.medium = Medium::Ethernet;
            caps.max_transmission_unit = 1514;
            // As on the kernel-backed links, TCP checksums are not smoltcp's business:
            // the guard rewrites ACK numbers and windows without refreshing them.
            caps.checksum.tcp = Checksum::None;
            caps
        }
    }

    struct Host {
        iface: Interface,
        end: End,
        sockets: SocketSet<'static>,
        tcp: SocketHandle,
    }

    impl Host {
        fn new(
            last_octet: u8,
            guard: Option<AckGuard>,
            rx: usize,
            tx: usize,
            now: Instant,
        ) -> Host {
            let mut end = End {
                guard,
                ..End::default()
            };
            let mac = EthernetAddress([2, 0, 0, 0, 0, last_octet]);
            let mut config = Config::new(HardwareAddress::Ethernet(mac));
            config.random_seed = u64::from(last_octet);
            let mut iface = Interface::new(config, &mut end, now);
            iface.update_ip_addrs(|a| {
                a.push(IpCidr::new(IpAddress::v4(10, 0, 0, last_octet), 24))
                    .unwrap();
            });
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; rx]),
                tcp::SocketBuffer::new(vec![0; tx]),
            );
            socket.set_ack_delay(None);
            let mut sockets = SocketSet::new(Vec::new());
            let tcp = sockets.add(socket);
            Host {
                iface,
                end,
                sockets,
                tcp,
            }
        }

        fn socket(&mut self) -> &mut tcp::Socket<'static> {
            self.sockets.get_mut(self.tcp)
        }
    }

    /// Polls both hosts at `now` and carries frames across until neither sends more.
    fn pump(server: &mut Host, client: &mut Host, now: Instant) {
        for _ in 0..10_000 {
            server.iface.poll(now, &mut server.end, &mut server.sockets);
            client.iface.poll(now, &mut client.end, &mut client.sockets);
            if server.end.outbox.is_empty() && client.end.outbox.is_empty() {
                return;
            }
            client.end.inbox.extend(server.end.outbox.drain(..));
            server.end.inbox.extend(client.end.outbox.drain(..));
        }
        panic!("the hosts never went quiet");
    }

    /// The window field of a TCP/IPv4 frame without options... or with them: the field
    /// sits at the same offset.
    fn window_of(frame: &[u8]) -> u16 {
        u16::from_be_bytes([frame[48], frame[49]])
    }

    const REPLY: usize = 40 * 1024;
    const CLIENT_WINDOW: usize = 8 * 1024;

    /// A server (its frames through `guard`) and a client (a receive buffer of
    /// `CLIENT_WINDOW`) with a connection established between them at `now`.
    fn connected(guard: Option<AckGuard>, now: Instant) -> (Host, Host) {
        let mut server = Host::new(1, guard, 4096, 64 * 1024, now);
        let mut client = Host::new(2, None, CLIENT_WINDOW, 4096, now);
        server.socket().listen(7000).unwrap();
        let cx = client.iface.context();
        client
            .sockets
            .get_mut::<tcp::Socket>(client.tcp)
            .connect(cx, (IpAddress::v4(10, 0, 0, 1), 7000), 40000)
            .unwrap();
        pump(&mut server, &mut client, now);
        assert_eq!(server.socket().state(), tcp::State::Established);
        (server, client)
    }

    /// A client sends one byte and closes; the server answers with more than the
    /// client's receive buffer holds and closes too (LAST-ACK with data still to send),
    /// so the client's window closes. Then the client reads, at the same instant, until
    /// nothing more arrives. Returns the server, the client and what the client read.
    fn reply_after_close(guard: Option<AckGuard>) -> (Host, Host, Vec<u8>) {
        let now = Instant::from_secs(1);
        let (mut server, mut client) = connected(guard, now);
        client.socket().send_slice(b"?").unwrap();
        client.socket().close();
        pump(&mut server, &mut client, now);
        assert_eq!(server.socket().state(), tcp::State::CloseWait);
        let mut question = [0u8; 1];
        assert_eq!(server.socket().recv_slice(&mut question), Ok(1));
        let reply: Vec<u8> = (0..REPLY).map(|i| (i % 251) as u8).collect();
        assert_eq!(server.socket().send_slice(&reply), Ok(REPLY));
        server.socket().close();
        pump(&mut server, &mut client, now);
        assert_eq!(server.socket().state(), tcp::State::LastAck);
        assert_eq!(
            client.socket().recv_queue(),
            CLIENT_WINDOW,
            "the window closed"
        );
        let mut got = Vec::new();
        loop {
            let mut buf = [0u8; CLIENT_WINDOW];
            let n = client.socket().recv_slice(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            pump(&mut server, &mut client, now);
        }
        (server, client, got)
    }

    #[test]
    fn a_window_reopened_in_last_ack_lets_smoltcp_send_at_once() {
        let (mut server, mut client, got) = reply_after_close(Some(AckGuard::default()));
        let reply: Vec<u8> = (0..REPLY).map(|i| (i % 251) as u8).collect();
        assert_eq!(got, reply, "every byte, in order, without time passing");
        assert_eq!(client.socket().state(), tcp::State::TimeWait);
        assert_eq!(server.socket().state(), tcp::State::Closed);
        let guard = server.end.guard.as_ref().unwrap();
        assert!(guard.peer_zero_windows > 0, "the window closed on the way");
    }

    /// What the guard is for (if smoltcp stops dropping such window updates, this test
    /// fails and the one-byte-short rewrite can go): smoltcp alone takes the first
    /// window the client had, then ignores the updates that reopen it, and sends again
    /// only when its zero-window probe goes out, a second later.
    #[test]
    fn without_the_guard_smoltcp_waits_for_its_zero_window_probe() {
        let (mut server, mut client, got) = reply_after_close(None);
        assert_eq!(got.len(), CLIENT_WINDOW, "stuck after the first window");
        assert_eq!(server.socket().state(), tcp::State::LastAck);
        let later = Instant::from_secs(1) + Duration::from_millis(1100);
        pump(&mut server, &mut client, later);
        assert!(client.socket().recv_queue() > 0, "the probe moved it on");
    }

    /// A connection whose client reads, then sends nothing: the server's data fills the
    /// client's window, and the client's zero-window ACK reaches the server only after
    /// the window update the client sends once it has read (as two CPUs can deliver
    /// them). Returns the bytes the client got, all at one instant.
    fn overtaken_zero_window(guard: Option<AckGuard>) -> usize {
        let now = Instant::from_secs(1);
        let (mut server, mut client) = connected(guard, now);
        let reply = vec![7u8; REPLY];
        assert_eq!(server.socket().send_slice(&reply), Ok(REPLY));
        // Carry frames across, holding back the client's zero-window ACK.
        let mut held = None;
        for _ in 0..100 {
            server.iface.poll(now, &mut server.end, &mut server.sockets);
            client.iface.poll(now, &mut client.end, &mut client.sockets);
            client.end.inbox.extend(server.end.outbox.drain(..));
            for frame in client.end.outbox.drain(..) {
                if held.is_none() && frame.len() == 54 && window_of(&frame) == 0 {
                    held = Some(frame);
                } else {
                    server.end.inbox.push_back(frame);
                }
            }
            if server.end.inbox.is_empty() && client.end.inbox.is_empty() {
                break;
            }
        }
        let held = held.expect("the client's window closed");
        assert_eq!(client.socket().recv_queue(), CLIENT_WINDOW);
        // The client reads: its window update goes first, the zero-window ACK after.
        let mut got = 0;
        let mut buf = [0u8; CLIENT_WINDOW];
        got += client.socket().recv_slice(&mut buf).unwrap();
        client.iface.poll(now, &mut client.end, &mut client.sockets);
        server.end.inbox.extend(client.end.outbox.drain(..));
        server.end.inbox.push_back(held);
        loop {
            pump(&mut server, &mut client, now);
            let n = client.socket().recv_slice(&mut buf).unwrap();
            if n == 0 {
                return got;
            }
            got += n;
        }
    }

    #[test]
    fn a_zero_window_overtaken_by_its_update_does_not_stop_smoltcp() {
        assert_eq!(overtaken_zero_window(Some(AckGuard::default())), REPLY);
    }

    /// smoltcp alone takes the late zero window and stops until its probe.
    #[test]
    fn without_the_guard_an_overtaken_zero_window_stops_smoltcp() {
        assert_eq!(overtaken_zero_window(None), CLIENT_WINDOW);
    }
}
