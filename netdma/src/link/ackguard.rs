//! Makes sure smoltcp sees every acknowledgment the peer sends, per TCP flow.
//!
//! smoltcp 0.14 mishandles the acknowledgment of a segment in four cases:
//!
//! - **An older ACK.** smoltcp drops a whole segment, data included, when its ACK
//!   number is older than one it has already processed (it treats the segment as a
//!   duplicate ACK). On Linux the frames of one connection may reach a link slightly out
//!   of order: a pure ACK sent from one CPU can overtake a data super-frame sent from
//!   another. The data frame then carries an older ACK, smoltcp throws its 64 KiB away,
//!   and the kernel retransmits some 44 segments (seen on a veth: one such fast
//!   retransmit every few echoes). The link remembers, per flow, the newest ACK number
//!   and window the peer sent, and gives a data-bearing (or FIN) segment that arrives
//!   with an older ACK the newest ones instead. That only replays what the peer already
//!   said: an acknowledgment is cumulative, and the window goes with the ACK it came with.
//! - **A stale window.** smoltcp takes the window of every segment it accepts, in the
//!   order segments arrive. The same reordering can deliver a zero-window ACK after the
//!   window update that followed it (both with the same ACK number: the kernel sends the
//!   first from the softirq that took our data, the second from the reading thread on
//!   another CPU). smoltcp then believes the window closed and waits for its
//!   zero-window probe, which smoltcp times at 1 s at least: seen as a 1 s pause on a
//!   veth. A receiver never moves the right edge of its window to the left (RFC 9293
//!   strongly discourages it; Linux does not unless `net.ipv4.tcp_shrink_window` is set),
//!   so with the same ACK number the larger window is the newer one: the link gives a
//!   segment that arrives with a smaller one the larger instead. Should a peer shrink
//!   its window after all, smoltcp may send past the new edge and the peer drops and
//!   later gets again what did not fit: slower, never wrong.
//! - **A window reopened in LAST-ACK.** Once the application has closed a connection
//!   the peer closed first (LAST-ACK), smoltcp answers a pure ACK that acknowledges
//!   nothing new with a challenge ACK and drops it, window included, even while its own
//!   data still waits to be sent. If the peer's window was zero, the update that reopens
//!   it is such an ACK: smoltcp keeps waiting for its zero-window probe (1 s at least;
//!   seen on a veth whenever the reading side fell behind at the end of a transfer). So
//!   the link gives smoltcp every zero-window ACK one byte short (ACK number minus one):
//!   smoltcp still learns that the window closed and keeps one byte it has sent as not
//!   yet acknowledged, so the ACK that reopens the window acknowledges that byte, counts
//!   as new, and is taken in every state. Not done for an ACK of smoltcp's SYN or FIN
//!   (nothing waits to be sent behind those).
//! - **A closed window.** While smoltcp advertises a zero receive window it drops every
//!   segment that carries data, and every window probe, without looking at the ACK
//!   (RFC 9293 asks receivers to accept valid ACKs even then). A server that stops
//!   reading because its transmit buffer is full then never learns that the peer has
//!   acknowledged that buffer: neither side moves again (seen with 256 KiB buffers on a
//!   wire that loses frames). The link watches the segments smoltcp sends, so it knows
//!   each flow's last advertised window and next expected sequence number (the ACK
//!   number smoltcp sent). While that window is zero, the link turns every segment smoltcp
//!   would drop into the pure ACK it accepts: sequence number = the expected one, no
//!   payload, no FIN, the peer's ACK and window. The data it drops is data smoltcp would
//!   have dropped (the window is closed); the peer sends it again once the window opens.
//!
//! Rewritten ACK numbers and windows keep the TCP checksum as it was: the link has
//! verified the frame already (or the kernel vouched for it) and smoltcp is told not to
//! verify it. A frame turned into a pure ACK gets both checksums recomputed.

use std::collections::HashMap;

/// Flows remembered at most; beyond that the table starts afresh (the cost: an old ACK
/// may again get a segment dropped once).
const MAX_FLOWS: usize = 1 << 16;

const ETH_HDR: usize = 14;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// (source address, destination address, source port, destination port), as the peer
/// sends: segments smoltcp sends are filed under the reversed tuple.
type FlowKey = ([u8; 4], [u8; 4], u16, u16);

/// What the guard knows of one flow.
#[derive(Debug, Default, Clone, Copy)]
struct Flow {
    /// The newest ACK number and window the peer sent.
    peer: Option<(u32, u16)>,
    /// While smoltcp's last segment on the flow advertised a zero window: the ACK number
    /// it carried, i.e. the sequence number smoltcp expects next.
    closed_at: Option<u32>,
    /// The sequence number after smoltcp's SYN, once seen.
    syn_end: Option<u32>,
    /// The sequence number after smoltcp's FIN, once seen.
    fin_end: Option<u32>,
}

/// The per-flow acknowledgment state (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct AckGuard {
    flows: HashMap<FlowKey, Flow>,
    /// Segments whose ACK (and window) were replaced by newer ones.
    pub(crate) rewritten: u64,
    /// Segments turned into pure ACKs because smoltcp's window was closed.
    pub(crate) zero_window_acks: u64,
    /// Zero-window ACKs from the peer given to smoltcp one byte short.
    pub(crate) peer_zero_windows: u64,
}

/// The TCP/IPv4 segment in an Ethernet frame: where its TCP header starts, its IP
/// header and total lengths, its TCP header length.
struct Segment {
    l4: usize,
    ihl: usize,
    total: usize,
    doff: usize,
}

impl Segment {
    fn parse(frame: &[u8]) -> Option<Segment> {
        if frame.len() < ETH_HDR + 40 || frame[12..14] != [0x08, 0x00] || frame[23] != 6 {
            return None;
        }
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
        let l4 = ETH_HDR + ihl;
        if ihl < 20 || frame.len() < l4 + 20 || total + ETH_HDR > frame.len() || total < ihl + 20 {
            return None;
        }
        let doff = usize::from(frame[l4 + 12] >> 4) * 4;
        if doff < 20 || ihl + doff > total {
            return None;
        }
        Some(Segment {
            l4,
            ihl,
            total,
            doff,
        })
    }

    fn word(frame: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]])
    }

    fn seq(&self, frame: &[u8]) -> u32 {
        Self::word(frame, self.l4 + 4)
    }

    fn ack(&self, frame: &[u8]) -> u32 {
        Self::word(frame, self.l4 + 8)
    }

    fn window(&self, frame: &[u8]) -> u16 {
        u16::from_be_bytes([frame[self.l4 + 14], frame[self.l4 + 15]])
    }

    fn flags(&self, frame: &[u8]) -> u8 {
        frame[self.l4 + 13]
    }

    fn payload_len(&self) -> usize {
        self.total - self.ihl - self.doff
    }
}

/// `a` comes after `b` in sequence space.
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl AckGuard {
    /// Looks at one received Ethernet frame and rewrites it if smoltcp would otherwise
    /// miss its acknowledgment (see the module documentation).
    pub(crate) fn check(&mut self, frame: &mut [u8]) {
        let Some(seg) = Segment::parse(frame) else {
            return;
        };
        let flags = seg.flags(frame);
        if flags & (SYN | RST) != 0 {
            // A new or reset connection: forget what the old one said.
            self.flows.remove(&key(frame, seg.l4));
            return;
        }
        if flags & ACK == 0 {
            return;
        }
        let carries = seg.payload_len() > 0 || flags & FIN != 0;
        let (ack, win) = (seg.ack(frame), seg.window(frame));
        if self.flows.len() >= MAX_FLOWS {
            self.flows.clear();
        }
        let flow = self.flows.entry(key(frame, seg.l4)).or_default();
        let (mut to_ack, mut to_win) = (ack, win);
        match flow.peer {
            Some((old_ack, old_win)) if after(old_ack, ack) => {
                if carries {
                    (to_ack, to_win) = (old_ack, old_win);
                    self.rewritten += 1;
                }
            }
            Some((old_ack, old_win)) if old_ack == ack && old_win > win => {
                // The same ACK with a smaller window: the right edge would move left, which
                // the peer does not do; this segment was sent before the one that opened
                // the window further.
                to_win = old_win;
                self.rewritten += 1;
            }
            _ => flow.peer = Some((ack, win)),
        }
        let newest = flow.peer.is_some_and(|(a, _)| a == to_ack);
        if to_win == 0
            && newest
            && flow.syn_end.is_some_and(|s| after(to_ack, s))
            && flow.fin_end != Some(to_ack)
        {
            to_ack = to_ack.wrapping_sub(1);
            self.peer_zero_windows += 1;
        }
        frame[seg.l4 + 8..seg.l4 + 12].copy_from_slice(&to_ack.to_be_bytes());
        frame[seg.l4 + 14..seg.l4 + 16].copy_from_slice(&to_win.to_be_bytes());
        // Under a closed window smoltcp accepts only a pure ACK at the sequence number it
        // expects; anything else (data, a FIN, a probe, a pure ACK sent after data it
        // dropped) it drops unread.
        if let Some(expected) = flow.closed_at {
            if carries || seg.seq(frame) != expected {
                into_pure_ack(frame, &seg, expected);
                self.zero_window_acks += 1;
            }
        }
    }

    /// Looks at one Ethernet frame smoltcp sends: notes whether it closes or opens the
    /// flow's receive window.
    pub(crate) fn sent(&mut self, frame: &[u8]) {
        let Some(seg) = Segment::parse(frame) else {
            return;
        };
        let flags = seg.flags(frame);
        let key = reverse(key(frame, seg.l4));
        if flags & RST != 0 {
            self.flows.remove(&key);
            return;
        }
        let closed = flags & ACK != 0 && seg.window(frame) == 0;
        let (syn, fin) = (flags & SYN != 0, flags & FIN != 0);
        if !(closed || syn || fin || self.flows.contains_key(&key)) {
            return;
        }
        if self.flows.len() >= MAX_FLOWS {
            self.flows.clear();
        }
        let flow = self.flows.entry(key).or_default();
        let seq = seg.seq(frame);
        if syn {
            // Our side of a new connection: whatever was known of the flow is stale.
            *flow = Flow {
                syn_end: Some(seq.wrapping_add(1)),
                ..Flow::default()
            };
        }
        if flags & ACK != 0 {
            flow.closed_at = closed.then(|| seg.ack(frame));
        }
        if fin {
            flow.fin_end = Some(seq.wrapping_add(seg.payload_len() as u32 + 1));
        }
    }
}

/// Turns a received segment into a pure ACK at sequence number `seq`: no payload, no
/// FIN or PSH, both checksums recomputed.
fn into_pure_ack(frame: &mut [u8], seg: &Segment, seq: u32) {
    let l4 = seg.l4;
    frame[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
    frame[l4 + 13] &= !(FIN | PSH);
    let total = (seg.ihl + seg.doff) as u16;
    frame[ETH_HDR + 2..ETH_HDR + 4].copy_from_slice(&total.to_be_bytes());
    super::vnet::seal_tcp4(frame, l4);
}

fn reverse((src, dst, sport, dport): FlowKey) -> FlowKey {
    (dst, src, dport, sport)
}

/// The flow, sequence number and payload length of a TCP/IPv4 frame with data.
pub(crate) fn data_segment(frame: &[u8]) -> Option<(FlowKey, u32, u32)> {
    let seg = Segment::parse(frame)?;
    let len = seg.payload_len();
    (len > 0).then(|| (key(frame, seg.l4), seg.seq(frame), len as u32))
}

/// Whether `later` is the data segment that comes right before `earlier` on the same
/// flow (the two arrived swapped).
pub(crate) fn swapped(earlier: &[u8], later: &[u8]) -> bool {
    match (data_segment(earlier), data_segment(later)) {
        (Some((fa, sa, _)), Some((fb, sb, lb))) => fa == fb && sb.wrapping_add(lb) == sa,
        _ => false,
    }
}

fn key(frame: &[u8], l4: usize) -> FlowKey {
    let a = |i: usize| [frame[i], frame[i + 1], frame[i + 2], frame[i + 3]];
    (
        a(26),
        a(30),
        u16::from_be_bytes([frame[l4], frame[l4 + 1]]),
        u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]),
    )
}

#[cfg(test)]
mod tests {
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
}
