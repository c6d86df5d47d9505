//! Keeps the acknowledgment numbers smoltcp sees in order, per TCP flow.
//!
//! smoltcp drops a whole segment, data included, when its ACK number is older than one
//! it has already processed (it treats the segment as a duplicate ACK). On Linux the
//! frames of one connection may reach a link slightly out of order: a pure ACK sent
//! from one CPU can overtake a data super-frame sent from another. The data frame then
//! carries an older ACK, smoltcp throws its 64 KiB away, and the kernel retransmits
//! some 44 segments (seen on a veth: one such fast retransmit every few echoes).
//!
//! The link remembers, per flow, the newest ACK number and window the peer sent, and
//! gives a data-bearing (or FIN) segment that arrives with an older ACK the newest ones
//! instead. That only replays what the peer already said: an acknowledgment is
//! cumulative, and the window goes with the ACK it came with. The TCP checksum is not
//! updated; the link has verified the frame already (or the kernel vouched for it) and
//! smoltcp is told not to verify it.

use std::collections::HashMap;

/// Flows remembered at most; beyond that the table starts afresh (the cost: an old ACK
/// may again get a segment dropped once).
const MAX_FLOWS: usize = 1 << 16;

/// (source address, destination address, source port, destination port).
type FlowKey = ([u8; 4], [u8; 4], u16, u16);

/// The newest ACK number and window per flow (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct AckGuard {
    flows: HashMap<FlowKey, (u32, u16)>,
    /// Segments whose ACK (and window) were replaced.
    pub(crate) rewritten: u64,
}

impl AckGuard {
    /// Looks at one received Ethernet frame; rewrites its ACK number and window if it
    /// carries data or a FIN with an ACK older than one already seen on its flow.
    pub(crate) fn check(&mut self, frame: &mut [u8]) {
        if frame.len() < 54 || frame[12..14] != [0x08, 0x00] || frame[23] != 6 {
            return;
        }
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
        let l4 = 14 + ihl;
        if ihl < 20 || frame.len() < l4 + 20 || total + 14 > frame.len() || total < ihl + 20 {
            return;
        }
        let flags = frame[l4 + 13];
        // ACK set, SYN and RST clear.
        if flags & 0x16 != 0x10 {
            if flags & 0x06 != 0 {
                // A new or reset connection: forget what the old one said.
                self.flows.remove(&key(frame, l4));
            }
            return;
        }
        let doff = usize::from(frame[l4 + 12] >> 4) * 4;
        let carries = total > ihl + doff || flags & 0x01 != 0;
        let ack =
            u32::from_be_bytes([frame[l4 + 8], frame[l4 + 9], frame[l4 + 10], frame[l4 + 11]]);
        let win = u16::from_be_bytes([frame[l4 + 14], frame[l4 + 15]]);
        if self.flows.len() >= MAX_FLOWS {
            self.flows.clear();
        }
        let entry = self.flows.entry(key(frame, l4)).or_insert((ack, win));
        if (ack.wrapping_sub(entry.0) as i32) >= 0 {
            *entry = (ack, win);
        } else if carries {
            frame[l4 + 8..l4 + 12].copy_from_slice(&entry.0.to_be_bytes());
            frame[l4 + 14..l4 + 16].copy_from_slice(&entry.1.to_be_bytes());
            self.rewritten += 1;
        }
    }
}

/// The flow, sequence number and payload length of a TCP/IPv4 frame with data.
pub(crate) fn data_segment(frame: &[u8]) -> Option<(FlowKey, u32, u32)> {
    if frame.len() < 54 || frame[12..14] != [0x08, 0x00] || frame[23] != 6 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let l4 = 14 + ihl;
    if ihl < 20 || frame.len() < l4 + 20 || total + 14 > frame.len() {
        return None;
    }
    let doff = usize::from(frame[l4 + 12] >> 4) * 4;
    let len = total.checked_sub(ihl + doff).filter(|l| *l > 0)?;
    let seq = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]);
    Some((key(frame, l4), seq, len as u32))
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
