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
//!   (nothing waits to be sent behind those). Until the window reopens, smoltcp's
//!   `send_queue()` counts that byte as not yet acknowledged.
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
        if (to_ack, to_win) != (ack, win) {
            frame[seg.l4 + 8..seg.l4 + 12].copy_from_slice(&to_ack.to_be_bytes());
            frame[seg.l4 + 14..seg.l4 + 16].copy_from_slice(&to_win.to_be_bytes());
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
    /// flow's receive window, and where smoltcp's SYN and FIN end in its sequence space.
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
mod tests;
