//! The virtio-net header that Linux puts before each frame on an `AF_PACKET` socket with
//! `PACKET_VNET_HDR` and on a TAP with `IFF_VNET_HDR`, and the checksum work around it.
//!
//! The header tells the two sides what a NIC would otherwise have done:
//!
//! - `flags`: [`F_NEEDS_CSUM`] (the TCP checksum field only holds the pseudo-header sum;
//!   the sum over `csum_start..` is still to be done, by whoever puts the frame on a
//!   wire) or [`F_DATA_VALID`] (the checksum was verified already). Either means the
//!   frame never crossed a wire since the kernel last vouched for it.
//! - `gso_type`/`gso_size`/`hdr_len`: the frame is a TCP "super-frame" of up to 64 KiB
//!   that is to be cut into segments of `gso_size` payload bytes, each with a copy of
//!   the first `hdr_len` bytes of headers.
//!
//! This module parses and builds the header, verifies the IPv4 and TCP checksums of a
//! frame that arrives without flags ([`check_rx`]), prepares a frame smoltcp built for
//! the kernel to finish ([`prepare_tx`]), and does in software what the kernel would
//! do with such a frame ([`complete_checksum`], [`segment`]): the tests use these to
//! check the frames we send, and a forwarder that plays a wire uses them to put real,
//! MTU-sized frames on it.
//!
//! All multi-byte header fields are in the host's byte order (the "legacy" virtio
//! layout both `AF_PACKET` and TAP use unless told otherwise).

/// Length of the virtio-net header (`struct virtio_net_hdr`) used on both links.
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksums were verified by the kernel.
pub const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`: a single frame.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`: a TCP/IPv4 super-frame.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP`.
pub const GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`: a TCP/IPv6 super-frame.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN`: may be or-ed into `gso_type`.
pub const GSO_ECN: u8 = 0x80;

const ETH_HDR: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
/// Offset of the checksum field in a TCP header.
const TCP_CSUM_OFFSET: u16 = 16;

/// A virtio-net header (`struct virtio_net_hdr`, 10 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHeader {
    /// [`F_NEEDS_CSUM`] and/or [`F_DATA_VALID`].
    pub flags: u8,
    /// [`GSO_NONE`], [`GSO_TCPV4`], [`GSO_TCPV6`], [`GSO_UDP`], possibly with [`GSO_ECN`].
    pub gso_type: u8,
    /// Bytes of headers to copy into each segment (Ethernet + IP + TCP).
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS).
    pub gso_size: u16,
    /// Where the checksummed region starts (the TCP header).
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum field is (16 for TCP).
    pub csum_offset: u16,
}

/// Why a received frame was refused by the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than the virtio-net header.
    #[error("shorter than the virtio-net header")]
    ShortHeader,
    /// The IPv4 header is truncated or malformed (version, header length, total length).
    #[error("malformed IPv4 header")]
    MalformedIpv4,
    /// The IPv4 header checksum is wrong.
    #[error("bad IPv4 header checksum")]
    BadIpv4Checksum,
    /// The TCP segment is truncated (shorter than its header).
    #[error("malformed TCP segment")]
    MalformedTcp,
    /// The TCP checksum is wrong.
    #[error("bad TCP checksum")]
    BadTcpChecksum,
    /// An IPv4 fragment: nothing here reassembles, and it cannot be verified alone.
    #[error("IPv4 fragment")]
    Fragment,
    /// A super-frame the software segmenter cannot cut (not TCP/IPv4, or bad sizes).
    #[error("unsupported GSO frame")]
    UnsupportedGso,
}

impl VnetHeader {
    /// Parses the header at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, FrameError> {
        if buf.len() < VNET_HDR_LEN {
            return Err(FrameError::ShortHeader);
        }
        let u16_at = |i: usize| u16::from_ne_bytes([buf[i], buf[i + 1]]);
        Ok(VnetHeader {
            flags: buf[0],
            gso_type: buf[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `buf`.
    ///
    /// Fails with [`FrameError::ShortHeader`] if `buf` is shorter than that.
    pub fn write(&self, buf: &mut [u8]) -> Result<(), FrameError> {
        let Some(out) = buf.get_mut(..VNET_HDR_LEN) else {
            return Err(FrameError::ShortHeader);
        };
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        Ok(())
    }

    /// Whether the header vouches for the frame's checksums ([`F_NEEDS_CSUM`] or
    /// [`F_DATA_VALID`]): it never crossed a wire since the kernel last had it.
    pub fn trusted(&self) -> bool {
        self.flags & (F_NEEDS_CSUM | F_DATA_VALID) != 0
    }

    /// Whether the frame is a super-frame to be segmented.
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }
}

/// The Internet checksum's running sum: 32-bit big-endian words added into 64 bits,
/// folded to 16 bits at the end (equal to the 16-bit one's complement sum, since
/// 2^16 = 1 modulo 0xffff).
fn sum_bytes(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (v >> 32) + (v & 0xffff_ffff);
    }
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a running sum into 16 bits (one's complement addition).
fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The one's complement sum of `data` (not complemented), as 16 bits.
pub fn checksum_sum(data: &[u8]) -> u16 {
    fold(sum_bytes(data))
}

/// The IPv4 pseudo-header sum for TCP (addresses, protocol, TCP length), folded, not
/// complemented: what a partial checksum field holds.
fn pseudo_sum_v4(src: &[u8], dst: &[u8], tcp_len: usize) -> u64 {
    sum_bytes(src) + sum_bytes(dst) + u64::from(IPPROTO_TCP) + tcp_len as u64
}

/// Where an IPv4 packet sits in a frame: header length, total length (both bytes).
struct Ipv4At {
    ihl: usize,
    total: usize,
    proto: u8,
    fragment: bool,
}

/// Parses the IPv4 header of an Ethernet frame, if the frame carries IPv4.
///
/// `Ok(None)`: not IPv4. Lengths are checked against the frame.
fn ipv4_at(frame: &[u8]) -> Result<Option<Ipv4At>, FrameError> {
    if frame.len() < ETH_HDR || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
        return Ok(None);
    }
    let ip = &frame[ETH_HDR..];
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return Err(FrameError::MalformedIpv4);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < 20 || ip.len() < ihl || total < ihl || total > ip.len() {
        return Err(FrameError::MalformedIpv4);
    }
    let flags_frag = u16::from_be_bytes([ip[6], ip[7]]);
    Ok(Some(Ipv4At {
        ihl,
        total,
        proto: ip[9],
        fragment: flags_frag & 0x3fff != 0,
    }))
}

/// What the link made of a received frame's checksums ([`check_rx`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxCheck {
    /// The header vouches for the frame ([`F_NEEDS_CSUM`] or [`F_DATA_VALID`]).
    Trusted,
    /// No flag: the link verified the IPv4 header and TCP checksums, and they are good.
    Verified,
    /// No flag, and not TCP/IPv4 (ARP, ICMP...): left to smoltcp, which verifies those.
    NotTcp,
}

/// Decides whether a received frame may go up to smoltcp, which is told not to verify
/// TCP (or IPv4 header) checksums on a link with virtio-net headers.
///
/// A frame with [`F_NEEDS_CSUM`] or [`F_DATA_VALID`] is accepted as the kernel accepts
/// it. Any other TCP/IPv4 frame has its IPv4 header checksum and TCP checksum verified
/// here, and an error means the frame must be dropped (and counted). Frames that are
/// not TCP/IPv4 pass; smoltcp verifies their checksums itself.
pub fn check_rx(hdr: &VnetHeader, frame: &[u8]) -> Result<RxCheck, FrameError> {
    if hdr.trusted() {
        return Ok(RxCheck::Trusted);
    }
    verify_frame(frame)
}

/// Verifies the IPv4 header and TCP checksums of an Ethernet frame (see [`check_rx`]).
pub fn verify_frame(frame: &[u8]) -> Result<RxCheck, FrameError> {
    let Some(ip) = ipv4_at(frame)? else {
        return Ok(RxCheck::NotTcp);
    };
    let iph = &frame[ETH_HDR..ETH_HDR + ip.ihl];
    if checksum_sum(iph) != 0xffff {
        return Err(FrameError::BadIpv4Checksum);
    }
    if ip.proto != IPPROTO_TCP {
        return Ok(RxCheck::NotTcp);
    }
    if ip.fragment {
        return Err(FrameError::Fragment);
    }
    let tcp = &frame[ETH_HDR + ip.ihl..ETH_HDR + ip.total];
    if tcp.len() < 20 {
        return Err(FrameError::MalformedTcp);
    }
    let sum = pseudo_sum_v4(&iph[12..16], &iph[16..20], tcp.len()) + sum_bytes(tcp);
    if fold(sum) != 0xffff {
        return Err(FrameError::BadTcpChecksum);
    }
    Ok(RxCheck::Verified)
}

/// Prepares a frame smoltcp built (with TCP checksums left to the device) for a kernel
/// that finishes it, and returns the header to send it with.
///
/// For a TCP/IPv4 frame, the TCP checksum field gets the pseudo-header sum and the
/// header says [`F_NEEDS_CSUM`] at the TCP header: nobody sums the payload for a peer
/// on this host, and the kernel sums it if the frame leaves the host. If `gso_size` is
/// given and the payload is longer than that, the header also asks the kernel to cut
/// the frame ([`GSO_TCPV4`], `gso_size`). Other frames (ARP, ICMP) are complete
/// already and get an all-zero header.
pub fn prepare_tx(frame: &mut [u8], gso_size: Option<u16>) -> VnetHeader {
    let Ok(Some(ip)) = ipv4_at(frame) else {
        return VnetHeader::default();
    };
    if ip.proto != IPPROTO_TCP || ip.fragment {
        return VnetHeader::default();
    }
    let l4 = ETH_HDR + ip.ihl;
    let tcp_len = ip.total - ip.ihl;
    if tcp_len < 20 {
        return VnetHeader::default();
    }
    let doff = usize::from(frame[l4 + 12] >> 4) * 4;
    let pseudo = {
        let iph = &frame[ETH_HDR..l4];
        fold(pseudo_sum_v4(&iph[12..16], &iph[16..20], tcp_len))
    };
    let csum_at = l4 + usize::from(TCP_CSUM_OFFSET);
    frame[csum_at..csum_at + 2].copy_from_slice(&pseudo.to_be_bytes());
    let mut hdr = VnetHeader {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: l4 as u16,
        csum_offset: TCP_CSUM_OFFSET,
    };
    if let Some(mss) = gso_size.filter(|m| *m > 0) {
        if tcp_len > doff && tcp_len - doff > usize::from(mss) {
            hdr.gso_type = GSO_TCPV4;
            hdr.gso_size = mss;
            hdr.hdr_len = (l4 + doff) as u16;
        }
    }
    hdr
}

/// Finishes a partial checksum in software, as the kernel does before a frame with
/// [`F_NEEDS_CSUM`] goes onto a wire: sums `frame[csum_start..]` (the field holding the
/// pseudo-header sum) and stores the complement at `csum_start + csum_offset`.
///
/// Does nothing without [`F_NEEDS_CSUM`]; fails if the offsets fall outside the frame.
pub fn complete_checksum(hdr: &VnetHeader, frame: &mut [u8]) -> Result<(), FrameError> {
    if hdr.flags & F_NEEDS_CSUM == 0 {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > frame.len() {
        return Err(FrameError::MalformedTcp);
    }
    let sum = !checksum_sum(&frame[start..]);
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// Cuts a TCP/IPv4 super-frame into complete MTU-sized frames, as the kernel's GSO does
/// before frames go onto a wire, appending them to `out`; a frame that is not a
/// super-frame is appended as is, with its partial checksum (if any) completed.
///
/// Each segment gets the headers of the first, its own IP total length, identification
/// (counting up) and header checksum, its TCP sequence number, FIN and PSH only on the
/// last segment, CWR only on the first, and a full TCP checksum.
pub fn segment(hdr: &VnetHeader, frame: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), FrameError> {
    if !hdr.is_gso() {
        let mut f = frame.to_vec();
        complete_checksum(hdr, &mut f)?;
        out.push(f);
        return Ok(());
    }
    if hdr.gso_type & !GSO_ECN != GSO_TCPV4 || hdr.gso_size == 0 {
        return Err(FrameError::UnsupportedGso);
    }
    let ip = ipv4_at(frame)?.ok_or(FrameError::UnsupportedGso)?;
    if ip.proto != IPPROTO_TCP || ip.fragment {
        return Err(FrameError::UnsupportedGso);
    }
    let l4 = ETH_HDR + ip.ihl;
    if frame.len() < l4 + 20 {
        return Err(FrameError::MalformedTcp);
    }
    let doff = usize::from(frame[l4 + 12] >> 4) * 4;
    let headers = l4 + doff;
    let end = ETH_HDR + ip.total;
    if doff < 20 || headers > end {
        return Err(FrameError::MalformedTcp);
    }
    let payload = &frame[headers..end];
    let mss = usize::from(hdr.gso_size);
    let seq0 = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]);
    let id0 = u16::from_be_bytes([frame[ETH_HDR + 4], frame[ETH_HDR + 5]]);
    let tcp_flags = frame[l4 + 13];
    let n = payload.len().div_ceil(mss).max(1);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let mut f = Vec::with_capacity(headers + chunk.len());
        f.extend_from_slice(&frame[..headers]);
        f.extend_from_slice(chunk);
        let total = (ip.ihl + doff + chunk.len()) as u16;
        f[ETH_HDR + 2..ETH_HDR + 4].copy_from_slice(&total.to_be_bytes());
        f[ETH_HDR + 4..ETH_HDR + 6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
        let seq = seq0.wrapping_add((i * mss) as u32);
        f[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = tcp_flags;
        if i + 1 < n {
            flags &= !(0x01 | 0x08); // FIN, PSH: last segment only
        }
        if i > 0 {
            flags &= !0x80; // CWR: first segment only
        }
        f[l4 + 13] = flags;
        seal_tcp4(&mut f, l4);
        out.push(f);
    }
    Ok(())
}

/// Computes the IPv4 header checksum and the full TCP checksum of a TCP/IPv4 frame
/// whose TCP header starts at `l4` and whose IP total length is final (within the frame).
pub(crate) fn seal_tcp4(f: &mut [u8], l4: usize) {
    let end = ETH_HDR + usize::from(u16::from_be_bytes([f[ETH_HDR + 2], f[ETH_HDR + 3]]));
    f[ETH_HDR + 10..ETH_HDR + 12].copy_from_slice(&[0, 0]);
    let ipsum = !checksum_sum(&f[ETH_HDR..l4]);
    f[ETH_HDR + 10..ETH_HDR + 12].copy_from_slice(&ipsum.to_be_bytes());
    f[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
    let sum = {
        let iph = &f[ETH_HDR..l4];
        pseudo_sum_v4(&iph[12..16], &iph[16..20], end - l4)
    } + sum_bytes(&f[l4..end]);
    f[l4 + 16..l4 + 18].copy_from_slice(&(!fold(sum)).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Address,
        Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    };

    const SRC: Ipv4Address = Ipv4Address::new(10, 77, 0, 2);
    const DST: Ipv4Address = Ipv4Address::new(10, 77, 0, 1);

    /// A TCP/IPv4 Ethernet frame with `payload`, every checksum computed by smoltcp.
    fn tcp_frame(payload: &[u8], control: TcpControl) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 7000,
            control,
            seq_number: TcpSeqNumber(0x1234_5678),
            ack_number: Some(TcpSeqNumber(0x0abc_def0)),
            window_len: 512,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: SRC,
            dst_addr: DST,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut buf = vec![0u8; 14 + ip.buffer_len() + tcp.buffer_len()];
        let caps = ChecksumCapabilities::default();
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut f);
        let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
        ip.emit(&mut p, &caps);
        let mut t = TcpPacket::new_unchecked(p.payload_mut());
        tcp.emit(&mut t, &SRC.into(), &DST.into(), &caps);
        buf
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn header_roundtrip_and_layout() {
        let h = VnetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut buf = [0xaau8; VNET_HDR_LEN];
        h.write(&mut buf).unwrap();
        assert_eq!(buf[0], 1);
        assert_eq!(buf[1], 1);
        assert_eq!(&buf[4..6], &1448u16.to_ne_bytes());
        assert_eq!(VnetHeader::parse(&buf).unwrap(), h);
        assert!(h.trusted() && h.is_gso());
        assert_eq!(VnetHeader::parse(&buf[..9]), Err(FrameError::ShortHeader));
        assert_eq!(h.write(&mut [0u8; 4]), Err(FrameError::ShortHeader));
        let plain = VnetHeader::default();
        assert!(!plain.trusted() && !plain.is_gso());
        let ecn_only = VnetHeader {
            gso_type: GSO_ECN,
            ..plain
        };
        assert!(!ecn_only.is_gso());
    }

    /// The checksum's definition, one 16-bit word at a time (RFC 1071).
    fn reference_sum(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for w in data.chunks(2) {
            let word = u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]);
            acc += u32::from(word);
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn checksum_matches_the_definition_at_every_length_and_offset() {
        let mut data = pattern(300);
        data[10..40].fill(0xff); // carries
        for start in 0..4 {
            for len in 0..data.len() - start {
                let d = &data[start..start + len];
                assert_eq!(
                    checksum_sum(d),
                    reference_sum(d),
                    "start {start} length {len}"
                );
            }
        }
    }

    #[test]
    fn valid_frame_is_verified_and_corrupted_one_refused() {
        let mut frame = tcp_frame(&pattern(1400), TcpControl::Psh);
        let none = VnetHeader::default();
        assert_eq!(check_rx(&none, &frame), Ok(RxCheck::Verified));
        // Flip one payload byte: the TCP checksum catches it.
        let last = frame.len() - 1;
        frame[last] ^= 0x5a;
        assert_eq!(check_rx(&none, &frame), Err(FrameError::BadTcpChecksum));
        // The same frame with a flag is trusted (it never crossed a wire).
        for flags in [F_NEEDS_CSUM, F_DATA_VALID] {
            let h = VnetHeader { flags, ..none };
            assert_eq!(check_rx(&h, &frame), Ok(RxCheck::Trusted));
        }
        frame[last] ^= 0x5a;
        // A flipped bit in the IPv4 header (TTL).
        frame[14 + 8] ^= 1;
        assert_eq!(check_rx(&none, &frame), Err(FrameError::BadIpv4Checksum));
        frame[14 + 8] ^= 1;
        // Total length beyond the frame.
        let mut short = frame.clone();
        short.truncate(100);
        assert_eq!(check_rx(&none, &short), Err(FrameError::MalformedIpv4));
        // Not IPv4 (ARP ethertype): left to smoltcp.
        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(check_rx(&none, &arp), Ok(RxCheck::NotTcp));
    }

    #[test]
    fn every_single_byte_corruption_of_the_tcp_segment_is_caught() {
        let frame = tcp_frame(&pattern(200), TcpControl::None);
        for i in 34..frame.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut f = frame.clone();
                f[i] ^= x;
                assert!(
                    verify_frame(&f).is_err(),
                    "corruption at byte {i} (xor {x:#x}) not caught"
                );
            }
        }
    }

    #[test]
    fn partial_checksum_completed_equals_full_checksum() {
        for len in [0usize, 1, 2, 3, 100, 1460, 8000] {
            let reference = tcp_frame(&pattern(len), TcpControl::Psh);
            let mut frame = reference.clone();
            frame[34 + 16..34 + 18].copy_from_slice(&[0, 0]); // as smoltcp leaves it
            let hdr = prepare_tx(&mut frame, Some(1448));
            assert_eq!(hdr.flags, F_NEEDS_CSUM);
            assert_eq!(hdr.csum_start, 34);
            assert_eq!(hdr.csum_offset, 16);
            assert_eq!(hdr.is_gso(), len > 1448, "length {len}");
            // The partial field holds the pseudo-header sum, not the final checksum.
            let mut finished = frame.clone();
            complete_checksum(&hdr, &mut finished).unwrap();
            assert_eq!(finished, reference, "length {len}");
            let ip = Ipv4Packet::new_checked(&finished[14..]).unwrap();
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            assert!(tcp.verify_checksum(&SRC.into(), &DST.into()));
        }
    }

    #[test]
    fn non_tcp_frames_get_an_empty_header() {
        let mut frame = tcp_frame(b"x", TcpControl::None);
        frame[14 + 9] = 1; // ICMP
        let before = frame.clone();
        assert_eq!(prepare_tx(&mut frame, Some(1000)), VnetHeader::default());
        assert_eq!(frame, before);
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(prepare_tx(&mut arp, None), VnetHeader::default());
    }

    #[test]
    fn super_frame_is_cut_like_the_kernel_would() {
        let data = pattern(10_000);
        let mut frame = tcp_frame(&data, TcpControl::Fin);
        frame[14 + 4..14 + 6].copy_from_slice(&7u16.to_be_bytes()); // IP id
        frame[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
        let ipsum = !checksum_sum(&frame[14..34]);
        frame[14 + 10..14 + 12].copy_from_slice(&ipsum.to_be_bytes());
        let hdr = prepare_tx(&mut frame, Some(1448));
        assert_eq!(hdr.gso_type, GSO_TCPV4);
        assert_eq!(hdr.gso_size, 1448);
        assert_eq!(hdr.hdr_len, 54);
        let mut segs = Vec::new();
        segment(&hdr, &frame, &mut segs).unwrap();
        assert_eq!(segs.len(), 10_000usize.div_ceil(1448));
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(s.len() <= 1514);
            assert_eq!(verify_frame(s), Ok(RxCheck::Verified), "segment {i}");
            let ip = Ipv4Packet::new_checked(&s[14..]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(ip.ident(), 7 + i as u16);
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            assert_eq!(
                tcp.seq_number(),
                TcpSeqNumber(0x1234_5678 + (i * 1448) as i32)
            );
            let last = i + 1 == segs.len();
            assert_eq!(tcp.fin(), last, "segment {i}");
            joined.extend_from_slice(tcp.payload());
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn segmenter_refuses_what_it_cannot_cut() {
        let frame = tcp_frame(&pattern(3000), TcpControl::None);
        let udp = VnetHeader {
            gso_type: GSO_UDP,
            gso_size: 1000,
            ..VnetHeader::default()
        };
        let mut out = Vec::new();
        assert_eq!(
            segment(&udp, &frame, &mut out),
            Err(FrameError::UnsupportedGso)
        );
        let zero = VnetHeader {
            gso_type: GSO_TCPV4,
            gso_size: 0,
            ..VnetHeader::default()
        };
        assert_eq!(
            segment(&zero, &frame, &mut out),
            Err(FrameError::UnsupportedGso)
        );
        let bad = VnetHeader {
            flags: F_NEEDS_CSUM,
            csum_start: 60_000,
            ..VnetHeader::default()
        };
        assert_eq!(
            segment(&bad, &frame, &mut out),
            Err(FrameError::MalformedTcp)
        );
        assert!(out.is_empty());
    }
}
