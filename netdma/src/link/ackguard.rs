//! Makes sure smoltcp sees every acknowledgment the peer sends, per TCP flow.
//!
//! smoltcp 0.14 ignores the ACK number of a segment in two cases where TCP must not:
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
}

/// The per-flow acknowledgment state (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct AckGuard {
    flows: HashMap<FlowKey, Flow>,
    /// Segments whose ACK (and window) were replaced by newer ones.
    pub(crate) rewritten: u64,
    /// Segments turned into pure ACKs because smoltcp's window was closed.
    pub(crate) zero_window_acks: u64,
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
        match flow.peer {
            Some((old_ack, old_win)) if after(old_ack, ack) => {
                if carries {
                    frame[seg.l4 + 8..seg.l4 + 12].copy_from_slice(&old_ack.to_be_bytes());
                    frame[seg.l4 + 14..seg.l4 + 16].copy_from_slice(&old_win.to_be_bytes());
                    self.rewritten += 1;
                }
            }
            _ => flow.peer = Some((ack, win)),
        }
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
        if flags & ACK == 0 {
            return;
        }
        let closed = seg.window(frame) == 0;
        match self.flows.get_mut(&key) {
            Some(flow) => flow.closed_at = closed.then(|| seg.ack(frame)),
            None if closed => {
                if self.flows.len() >= MAX_FLOWS {
                    self.flows.clear();
                }
                self.flows.insert(
                    key,
                    Flow {
                        peer: None,
                        closed_at: Some(seg.ack(frame)),
                    },
                );
            }
            None => {}
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
