//! Unit tests of the packet link: the batched path end to end over a Unix socketpair,
//! interface lookup errors, and (as root) opening on loopback with and without
//! virtio-net headers.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::io::RawFd;

use smoltcp::wire::{EthernetAddress, IpCidr, Ipv4Address};

use super::super::vnet::{self, VNET_HDR_LEN};
use super::sys::set_int_opt;
use super::*;
use crate::stack::{Stack, StackConfig};

/// Two batched links joined by a Unix datagram socketpair: each datagram is one
/// `[virtio-net header][frame]`, as on an AF_PACKET socket with `PACKET_VNET_HDR`.
fn socketpair_links(frame_mtu: usize) -> (PacketLink, PacketLink, OwnedFd) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a writable array of two ints, as socketpair(2) requires.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "{}", io::Error::last_os_error());
    for fd in fds {
        // Room for many 64 KiB datagrams in flight.
        let _ = set_int_opt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20);
        let _ = set_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20);
    }
    // A second descriptor on end A, to inject frames into B.
    // SAFETY: dup(2) of a descriptor we own; failure is -1.
    let inject = unsafe { libc::dup(fds[0]) };
    assert!(inject >= 0);
    let link = |fd: RawFd| PacketLink {
        name: format!("socketpair{fd}"),
        frame_mtu,
        rcvbuf_bytes: 0,
        // SAFETY: each descriptor was just created by socketpair(2)/dup(2) and is
        // handed to exactly one owner.
        path: Path::Vnet(Box::new(VnetPacketSocket::over_fd(unsafe {
            OwnedFd::from_raw_fd(fd)
        }))),
        rx_errors: 0,
        stats: LinkStats::default(),
    };
    // SAFETY: `inject` was just returned by dup(2) (checked non-negative above) and is
    // owned by no one else, so `OwnedFd` may take it.
    let inject = unsafe { OwnedFd::from_raw_fd(inject) };
    (link(fds[0]), link(fds[1]), inject)
}

#[test]
fn tcp_over_batched_links_sends_super_frames_and_refuses_corrupted_ones() {
    let (la, lb, inject) = socketpair_links(1514);
    let mk = |l: PacketLink, last: u8| {
        Stack::new(
            l,
            StackConfig {
                mac: EthernetAddress([2, 0, 0, 0, 0, last]),
                addr: IpCidr::new(Ipv4Address::new(10, 0, 0, last).into(), 24),
                gateway: None,
                random_seed: u64::from(last),
            },
        )
    };
    let mut a = mk(la, 1);
    let mut b = mk(lb, 2);
    let server = b.add_tcp_socket(1 << 20, 64 * 1024);
    b.tcp_mut(server).listen(5000).unwrap();
    let client = a.add_tcp_socket(64 * 1024, 1 << 20);
    a.tcp_connect(client, (Ipv4Address::new(10, 0, 0, 2), 5000), 49152)
        .unwrap();
    let total = 3 << 20;
    let data: Vec<u8> = (0..total).map(|i| (i * 31 + i / 4099) as u8).collect();
    let (mut sent, mut got) = (0, Vec::with_capacity(total));
    let mut buf = vec![0u8; 256 * 1024];
    let mut corrupted_sent = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while got.len() < total {
        assert!(
            std::time::Instant::now() < deadline,
            "stalled at {}",
            got.len()
        );
        a.poll();
        let c = a.tcp_mut(client);
        if c.may_send() && sent < total {
            sent += c.send_slice(&data[sent..]).unwrap();
        }
        a.poll();
        b.poll();
        let s = b.tcp_mut(server);
        while s.can_recv() {
            let n = s.recv_slice(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        if !corrupted_sent && got.len() > total / 2 {
            // A frame from "a wire" (no checksum flags) for the server's port, one
            // byte of its payload flipped: dropped in the link, counted.
            let mut frame = [0u8; VNET_HDR_LEN + 14 + 20 + 20 + 100];
            let f = &mut frame[VNET_HDR_LEN..];
            f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
            f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            f[14] = 0x45;
            f[16..18].copy_from_slice(&140u16.to_be_bytes());
            f[22] = 64;
            f[23] = 6;
            f[26..30].copy_from_slice(&[10, 0, 0, 1]);
            f[30..34].copy_from_slice(&[10, 0, 0, 2]);
            let ipsum = !vnet::checksum_sum(&f[14..34]);
            f[24..26].copy_from_slice(&ipsum.to_be_bytes());
            f[34..36].copy_from_slice(&49152u16.to_be_bytes());
            f[36..38].copy_from_slice(&5000u16.to_be_bytes());
            f[46] = 0x50;
            f[47] = 0x18;
            let hdr = vnet::prepare_tx(f, None);
            vnet::complete_checksum(&hdr, f).unwrap();
            assert_eq!(vnet::verify_frame(f), Ok(vnet::RxCheck::Verified));
            f[100] ^= 0x40;
            // SAFETY: `frame` is a live, initialised buffer of the given length;
            // send(2) only reads it. `inject` is an open socket we own.
            let n =
                unsafe { libc::send(inject.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            assert_eq!(n as usize, frame.len());
            corrupted_sent = true;
        }
    }
    assert!(got == data, "received data differs");
    let (sa, sb) = (a.link().stats(), b.link().stats());
    // Super-frames both ways: the client's data left in frames larger than the MTU.
    assert!(sa.tx_gso_frames > 0, "{sa:?}");
    assert!(sb.rx_gso_frames > 0, "{sb:?}");
    // Batches: fewer system calls than frames.
    assert!(sb.rx_syscalls < sb.rx_frames, "{sb:?}");
    // Every frame from the other stack was trusted on its flag; the injected one
    // was verified, found bad, and never reached smoltcp.
    assert_eq!(sb.rx_csum_bad, 1, "{sb:?}");
    assert_eq!(sb.rx_csum_verified, 0, "{sb:?}");
    assert_eq!(sa.rx_csum_bad, 0);
    assert_eq!(sa.tx_dropped + sb.tx_dropped, 0);
}

#[test]
fn open_nonexistent_interface_is_error() {
    // The interface lookup comes before any socket: no privileges needed.
    let err = PacketLink::open("lk-no-such-if0").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    let err = VnetPacketSocket::open("lk-no-such-if0", 1 << 20).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
}

#[test]
fn interface_mtu_of_loopback_and_bad_names() {
    assert!(interface_mtu("lo").unwrap() >= 1500);
    assert_eq!(
        interface_mtu("name-longer-than-15").unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        interface_mtu("lk-nosuch1").unwrap_err().raw_os_error(),
        Some(libc::ENODEV)
    );
}

#[test]
#[ignore = "needs root (AF_PACKET): run by scripts/test.sh"]
fn loopback_opens_with_virtio_net_headers() {
    let mut link = PacketLink::open("lo").expect("AF_PACKET on lo");
    assert_eq!(link.name(), "lo");
    assert!(link.rcvbuf_bytes() > 0);
    let off = link.offloads();
    assert!(off.vnet_hdr && off.gso && off.batched, "{off:?}");
    let caps = link.capabilities();
    // TCP checksums are the link's business; IPv4 header checksums are computed.
    assert!(!caps.checksum.tcp.rx() && !caps.checksum.tcp.tx());
    assert!(caps.checksum.ipv4.tx() && !caps.checksum.ipv4.rx());
    assert!(caps.segmentation.tcpv4.is_some());
    assert_eq!(caps.max_transmission_unit, link.mtu() + 14);
    // Must return (timeout or traffic), never hang or spin forever.
    link.wait(Some(Duration::from_millis(10))).unwrap();
    while link.receive(Instant::from_millis(0)).is_some() {}
}

#[test]
#[ignore = "needs root (AF_PACKET): run by scripts/test.sh"]
fn refused_virtio_net_headers_fall_back_to_the_plain_path() {
    let iface = find_interface("lo").unwrap();
    let mtu = interface_mtu("lo").unwrap() + 14;
    let refused = io::Error::new(io::ErrorKind::Unsupported, "PACKET_VNET_HDR refused");
    let link = PacketLink::choose(
        "lo",
        &iface,
        mtu,
        PacketOptions::default(),
        Some(Err(refused)),
    )
    .expect("plain path");
    assert_eq!(link.offloads(), Offloads::default());
    let caps = link.capabilities();
    assert!(caps.checksum.tcp.rx() && caps.checksum.tcp.tx());
    assert!(caps.checksum.ipv4.rx());
    assert!(caps.segmentation.tcpv4.is_none());
    // Asked not to try: the same plain path.
    let plain = PacketLink::open_with(
        "lo",
        PacketOptions {
            vnet_hdr: false,
            ..PacketOptions::default()
        },
    )
    .unwrap();
    assert_eq!(plain.offloads(), Offloads::default());
    // A permission error is not a refusal of the header: it is reported as such.
    // (So is any error other than the header's refusal.)
    let denied = io::Error::from_raw_os_error(libc::EPERM);
    let err = PacketLink::choose(
        "lo",
        &iface,
        mtu,
        PacketOptions::default(),
        Some(Err(denied)),
    )
    .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
}
