//! A smoltcp interface, its sockets and its link, polled together.
//!
//! [`Stack`] bundles the three pieces every smoltcp program juggles: the
//! [`Interface`], the [`SocketSet`] and the device (a [`Link`]). Drive it with
//! [`Stack::poll`] whenever there may be work, and sleep with [`Stack::poll_wait`] when
//! there is none: the sleep happens inside the link ([`Link::wait`]), for as long as
//! smoltcp's timers allow, so an idle stack costs no CPU.
//!
//! ```no_run
//! use netdma::link::memory_pair;
//! use netdma::stack::{Stack, StackConfig};
//! use smoltcp::wire::{EthernetAddress, IpCidr, Ipv4Address};
//!
//! let (a, _b) = memory_pair(1500);
//! let mut stack = Stack::new(
//!     a,
//!     StackConfig {
//!         mac: EthernetAddress([0x02, 0, 0, 0, 0, 1]),
//!         addr: IpCidr::new(Ipv4Address::new(10, 0, 0, 1).into(), 24),
//!         gateway: None,
//!         random_seed: 1,
//!     },
//! );
//! let handle = stack.add_tcp_socket(64 * 1024, 64 * 1024);
//! stack
//!     .sockets_mut()
//!     .get_mut::<smoltcp::socket::tcp::Socket>(handle)
//!     .listen(5000)
//!     .unwrap();
//! loop {
//!     stack.poll();
//!     // ... use the socket ...
//!     stack.poll_wait(None).unwrap();
//! }
//! ```

use std::io;
use std::time::Duration;

use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};

use crate::link::Link;

/// How to set up a [`Stack`]'s interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackConfig {
    /// The interface's Ethernet address; must be unicast.
    pub mac: EthernetAddress,
    /// The interface's address and prefix, e.g. `10.0.0.1/24`; must be unicast.
    pub addr: IpCidr,
    /// Default IPv4 gateway, if any (on-link peers need none).
    pub gateway: Option<Ipv4Address>,
    /// Seed for smoltcp's randomness (initial sequence numbers, ephemeral ports).
    /// Use a different value per run/peer in real deployments.
    pub random_seed: u64,
}

/// Why a [`StackConfig`] was rejected by [`Stack::try_new`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackConfigError {
    /// The MAC address is broadcast or multicast.
    #[error("MAC address {0} is not unicast")]
    MacNotUnicast(EthernetAddress),
    /// The interface address is not a unicast address.
    #[error("interface address {0} is not unicast")]
    AddrNotUnicast(IpCidr),
    /// The gateway is not a unicast address.
    #[error("gateway {0} is not unicast")]
    GatewayNotUnicast(Ipv4Address),
}

/// A smoltcp [`Interface`] with its [`SocketSet`] and its [`Link`].
pub struct Stack<L: Link> {
    iface: Interface,
    sockets: SocketSet<'static>,
    link: L,
}

impl<L: Link + std::fmt::Debug> std::fmt::Debug for Stack<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("hardware_addr", &self.iface.hardware_addr())
            .field("ip_addrs", &self.iface.ip_addrs())
            .field("sockets", &self.sockets.iter().count())
            .field("link", &self.link)
            .finish()
    }
}

impl<L: Link> Stack<L> {
    /// Builds the interface on `link` from `config`.
    ///
    /// # Panics
    ///
    /// If the configuration is invalid (see [`Stack::try_new`] for the non-panicking form).
    pub fn new(link: L, config: StackConfig) -> Self {
        match Self::try_new(link, config) {
            Ok(stack) => stack,
            Err(e) => panic!("invalid stack configuration: {e}"),
        }
    }

    /// Builds the interface on `link` from `config`, rejecting addresses smoltcp cannot use.
    pub fn try_new(mut link: L, config: StackConfig) -> Result<Self, StackConfigError> {
        if !config.mac.is_unicast() {
            return Err(StackConfigError::MacNotUnicast(config.mac));
        }
        if !config.addr.address().is_unicast() {
            return Err(StackConfigError::AddrNotUnicast(config.addr));
        }
        if let Some(gw) = config.gateway {
            if !IpAddress::Ipv4(gw).is_unicast() {
                return Err(StackConfigError::GatewayNotUnicast(gw));
            }
        }

        let mut iface_config = Config::new(HardwareAddress::Ethernet(config.mac));
        iface_config.random_seed = config.random_seed;
        let mut iface = Interface::new(iface_config, &mut link, Instant::now());
        iface.update_ip_addrs(|addrs| {
            // A fresh interface has no addresses and room for at least one.
            let _ = addrs.push(config.addr);
        });
        if let Some(gw) = config.gateway {
            // A fresh route table is empty, so this cannot run out of room.
            let _ = iface.routes_mut().add_default_ipv4_route(gw);
        }
        Ok(Stack {
            iface,
            sockets: SocketSet::new(Vec::new()),
            link,
        })
    }

    /// Polls the interface at the current time: receives every frame the link has
    /// ready (up to the link's per-poll budget), processes timers, has smoltcp transmit
    /// what the sockets have queued, and flushes those frames as one batch
    /// ([`Link::flush`]).
    ///
    /// Returns `true` if a socket's state may have changed (data arrived, a connection
    /// was established or closed, buffer space was freed...), `false` if nothing did.
    pub fn poll(&mut self) -> bool {
        let result = self
            .iface
            .poll(Instant::now(), &mut self.link, &mut self.sockets);
        self.link.flush();
        result == PollResult::SocketStateChanged
    }

    /// [`poll`](Self::poll), processing received frames one at a time and calling
    /// `before_frame` with the sockets before each, so the caller can adjust them between
    /// frames (a server adds a listening socket when a SYN has taken the last one, so a
    /// burst of connections is not refused).
    pub fn poll_each(&mut self, mut before_frame: impl FnMut(&mut SocketSet<'static>)) -> bool {
        use smoltcp::iface::PollIngressSingleResult;
        let now = Instant::now();
        let mut changed = false;
        self.iface.poll_maintenance(now);
        loop {
            before_frame(&mut self.sockets);
            match self
                .iface
                .poll_ingress_single(now, &mut self.link, &mut self.sockets)
            {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => {}
                PollIngressSingleResult::SocketStateChanged => changed = true,
            }
        }
        while self
            .iface
            .poll_egress(now, &mut self.link, &mut self.sockets)
            == PollResult::SocketStateChanged
        {
            changed = true;
        }
        self.link.flush();
        changed
    }

    /// How long smoltcp can sleep before its next timer (`None`: no timer pending,
    /// `Some(0)`: poll now).
    pub fn poll_delay(&mut self) -> Option<Duration> {
        self.iface
            .poll_delay(Instant::now(), &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    /// Sleeps on the link until a frame may have arrived, smoltcp's next timer is due,
    /// or `max` passes, whichever comes first (`max == None`: no cap).
    ///
    /// Returns at once if smoltcp has work due now. Call [`poll`](Self::poll) after
    /// it. Errors are the link's ([`Link::wait`]).
    pub fn poll_wait(&mut self, max: Option<Duration>) -> io::Result<()> {
        let timeout = match (self.poll_delay(), max) {
            (Some(d), Some(m)) => Some(d.min(m)),
            (Some(d), None) => Some(d),
            (None, m) => m,
        };
        if timeout == Some(Duration::ZERO) {
            return Ok(());
        }
        self.link.wait(timeout)
    }

    /// Adds a TCP socket with `rx_bytes` of receive and `tx_bytes` of transmit buffer.
    ///
    /// The receive buffer size also sets the advertised window (smoltcp picks the
    /// window scale from it).
    pub fn add_tcp_socket(&mut self, rx_bytes: usize, tx_bytes: usize) -> SocketHandle {
        let rx = tcp::SocketBuffer::new(vec![0; rx_bytes]);
        let tx = tcp::SocketBuffer::new(vec![0; tx_bytes]);
        self.sockets.add(tcp::Socket::new(rx, tx))
    }

    /// The sockets.
    pub fn sockets(&self) -> &SocketSet<'static> {
        &self.sockets
    }

    /// The sockets, mutably (e.g. `stack.sockets_mut().get_mut::<tcp::Socket>(h)`).
    pub fn sockets_mut(&mut self) -> &mut SocketSet<'static> {
        &mut self.sockets
    }

    /// The interface.
    pub fn iface(&self) -> &Interface {
        &self.iface
    }

    /// The interface, mutably (addresses, routes, interface context for `connect`).
    pub fn iface_mut(&mut self) -> &mut Interface {
        &mut self.iface
    }

    /// The link.
    pub fn link(&self) -> &L {
        &self.link
    }

    /// The link, mutably.
    pub fn link_mut(&mut self) -> &mut L {
        &mut self.link
    }

    /// The TCP socket behind `handle`, mutably.
    ///
    /// # Panics
    ///
    /// If `handle` is not in this stack's socket set or is not a TCP socket.
    pub fn tcp_mut(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    /// Starts connecting the TCP socket `handle` from `local_port` to `remote`.
    ///
    /// A convenience over [`tcp::Socket::connect`], which needs the interface context
    /// and the socket at once.
    pub fn tcp_connect(
        &mut self,
        handle: SocketHandle,
        remote: (Ipv4Address, u16),
        local_port: u16,
    ) -> Result<(), tcp::ConnectError> {
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket>(handle)
            .connect(cx, remote, local_port)
    }

    /// Takes the stack apart.
    pub fn into_parts(self) -> (Interface, SocketSet<'static>, L) {
        (self.iface, self.sockets, self.link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{memory_pair, MemoryLink};
    use smoltcp::socket::tcp::State;

    const A_IP: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
    const B_IP: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);
    const PORT: u16 = 5000;

    fn stack(link: MemoryLink, last: u8, ip: Ipv4Address, seed: u64) -> Stack<MemoryLink> {
        Stack::new(
            link,
            StackConfig {
                mac: EthernetAddress([0x02, 0, 0, 0, 0, last]),
                addr: IpCidr::new(ip.into(), 24),
                gateway: None,
                random_seed: seed,
            },
        )
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn fill(&mut self, buf: &mut [u8]) {
            for chunk in buf.chunks_mut(8) {
                let v = self.next().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
        }
    }

    /// Sends `total` bytes of seeded data from a client on stack A to a server on stack B
    /// and checks every byte.
    fn transfer(mtu: usize, total: usize) {
        let (la, lb) = memory_pair(mtu);
        let mut a = stack(la, 1, A_IP, 0x1234);
        let mut b = stack(lb, 2, B_IP, 0x5678);

        let server = b.add_tcp_socket(1 << 20, 64 * 1024);
        b.tcp_mut(server).listen(PORT).unwrap();
        let client = a.add_tcp_socket(64 * 1024, 1 << 20);
        a.tcp_connect(client, (B_IP, PORT), 49152).unwrap();

        let mut data = vec![0u8; total];
        XorShift(0x9E37_79B9_7F4A_7C15).fill(&mut data);

        let mut sent = 0;
        let mut received = Vec::with_capacity(total);
        let mut buf = vec![0u8; 256 * 1024];
        let mut closed = false;
        let mut idle_rounds = 0u32;
        while received.len() < total {
            let progressed_a = a.poll();
            let progressed_b = b.poll();

            let c = a.tcp_mut(client);
            if c.may_send() && sent < total {
                sent += c.send_slice(&data[sent..]).unwrap();
            }
            if sent == total && !closed {
                c.close();
                closed = true;
            }

            let s = b.tcp_mut(server);
            let mut got = false;
            while s.can_recv() {
                let n = s.recv_slice(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                received.extend_from_slice(&buf[..n]);
                got = true;
            }

            if progressed_a || progressed_b || got {
                idle_rounds = 0;
            } else {
                idle_rounds += 1;
                assert!(
                    idle_rounds < 200_000,
                    "transfer stalled at {} of {total} bytes (client {:?}, server {:?})",
                    received.len(),
                    a.tcp_mut(client).state(),
                    b.tcp_mut(server).state()
                );
                // Nothing to do right now: sleep until a timer (e.g. delayed ACK) is due.
                if a.link().rx_pending() == 0 && b.link().rx_pending() == 0 {
                    let _ = b.poll_wait(Some(Duration::from_millis(1)));
                }
            }
        }
        assert_eq!(received.len(), total);
        assert!(received == data, "received data differs from sent data");

        // Let the FIN through: the server sees the close.
        for _ in 0..10_000 {
            a.poll();
            b.poll();
            if b.tcp_mut(server).state() == State::CloseWait {
                break;
            }
        }
        assert_eq!(b.tcp_mut(server).state(), State::CloseWait);
        assert_eq!(a.link().stats().tx_dropped, 0);
        assert_eq!(b.link().stats().tx_dropped, 0);
        assert!(b.link().stats().rx_bytes >= total as u64);
    }

    #[test]
    fn tcp_4mib_over_memory_link_mtu_1500() {
        transfer(1500, 4 << 20);
    }

    #[test]
    fn tcp_4mib_over_memory_link_mtu_9000() {
        transfer(9000, 4 << 20);
    }

    #[test]
    fn tcp_4mib_over_memory_link_mtu_65535() {
        transfer(65535, 4 << 20);
    }

    #[test]
    fn poll_wait_on_idle_stack_returns_without_frames() {
        let (la, _lb) = memory_pair(1500);
        let mut a = stack(la, 1, A_IP, 1);
        // Nothing to process and nothing to send: the poll changes nothing.
        assert!(!a.poll(), "an idle stack reported work");
        assert_eq!(a.link().stats().tx_frames, 0);
        a.poll_wait(Some(Duration::from_millis(20))).unwrap();
        assert_eq!(a.link().rx_pending(), 0);
        assert_eq!(a.link().stats().rx_frames, 0);
    }

    #[test]
    fn bad_config_is_rejected() {
        let (la, _lb) = memory_pair(1500);
        let cfg = StackConfig {
            mac: EthernetAddress::BROADCAST,
            addr: IpCidr::new(A_IP.into(), 24),
            gateway: None,
            random_seed: 0,
        };
        assert!(matches!(
            Stack::try_new(la, cfg),
            Err(StackConfigError::MacNotUnicast(_))
        ));
        let (la, _lb) = memory_pair(1500);
        let cfg = StackConfig {
            mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            addr: IpCidr::new(A_IP.into(), 24),
            gateway: Some(Ipv4Address::BROADCAST),
            random_seed: 0,
        };
        assert!(matches!(
            Stack::try_new(la, cfg),
            Err(StackConfigError::GatewayNotUnicast(_))
        ));
    }

    #[test]
    fn gateway_is_installed() {
        let (la, _lb) = memory_pair(1500);
        let mut a = Stack::new(
            la,
            StackConfig {
                mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
                addr: IpCidr::new(A_IP.into(), 24),
                gateway: Some(Ipv4Address::new(10, 0, 0, 254)),
                random_seed: 0,
            },
        );
        let mut found = false;
        a.iface_mut().routes_mut().update(|routes| {
            found = !routes.is_empty();
        });
        assert!(found);
        assert_eq!(a.iface().ip_addrs(), &[IpCidr::new(A_IP.into(), 24)]);
    }

    /// Runs `ip` with `args`, returning whether it succeeded.
    fn ip(args: &[&str]) -> bool {
        std::process::Command::new("ip")
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Receives `total` seeded bytes on `server` of `stack`, polling with `poll_wait`,
    /// while `pump` runs between polls (e.g. another stack or nothing).
    fn receive_all<L: Link>(
        stack: &mut Stack<L>,
        server: SocketHandle,
        total: usize,
        mut pump: impl FnMut(),
    ) -> Vec<u8> {
        let mut received = Vec::with_capacity(total);
        let mut buf = vec![0u8; 256 * 1024];
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while received.len() < total {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out at {}",
                received.len()
            );
            stack.poll();
            pump();
            let s = stack.tcp_mut(server);
            while s.can_recv() {
                let n = s.recv_slice(&mut buf).unwrap();
                received.extend_from_slice(&buf[..n]);
            }
            stack.poll_wait(Some(Duration::from_millis(1))).unwrap();
        }
        received
    }

    /// Kernel TCP client -> smoltcp server over a TAP (root only; creates `lktap-t`).
    #[test]
    #[ignore = "needs root and the ip tool; changes network configuration"]
    fn tcp_from_kernel_over_tap() {
        use crate::link::TapLink;
        use std::io::Write;
        let tap = TapLink::open("lktap-t").expect("open tap");
        assert!(ip(&["addr", "add", "10.77.0.1/24", "dev", "lktap-t"]));
        assert!(ip(&["link", "set", "lktap-t", "up"]));
        let mut st = Stack::new(
            tap,
            StackConfig {
                mac: EthernetAddress([2, 0, 0, 0, 0x77, 2]),
                addr: IpCidr::new(Ipv4Address::new(10, 77, 0, 2).into(), 24),
                gateway: None,
                random_seed: 7,
            },
        );
        let server = st.add_tcp_socket(1 << 20, 64 * 1024);
        st.tcp_mut(server).listen(PORT).unwrap();
        let total = 4 << 20;
        let mut data = vec![0u8; total];
        XorShift(42).fill(&mut data);
        let sent = data.clone();
        let client = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(("10.77.0.2", PORT)).unwrap();
            c.write_all(&sent).unwrap();
        });
        let received = receive_all(&mut st, server, total, || {});
        client.join().unwrap();
        assert!(received == data);
        // The kernel's TCP handed over TSO super-frames with partial checksums.
        let s = st.link().stats();
        assert!(s.rx_gso_frames > 0, "{s:?}");
        assert!(s.rx_csum_trusted > 0, "{s:?}");
        assert_eq!(s.rx_csum_bad, 0);
    }

    /// smoltcp -> smoltcp across a veth pair, both ends on `PacketLink` (root only).
    #[test]
    #[ignore = "needs root and the ip tool; changes network configuration"]
    fn tcp_over_veth_packet_links() {
        use crate::link::PacketLink;
        let _ = ip(&["link", "del", "lkveth0"]);
        assert!(ip(&[
            "link", "add", "lkveth0", "type", "veth", "peer", "name", "lkveth1"
        ]));
        assert!(ip(&["link", "set", "lkveth0", "up"]));
        assert!(ip(&["link", "set", "lkveth1", "up"]));
        let la = PacketLink::open("lkveth0").expect("open lkveth0");
        let lb = PacketLink::open("lkveth1").expect("open lkveth1");
        println!("rcvbuf granted: {}", la.rcvbuf_bytes());
        let a_ip = Ipv4Address::new(10, 78, 0, 1);
        let b_ip = Ipv4Address::new(10, 78, 0, 2);
        let mk = |l: PacketLink, last: u8, ip: Ipv4Address| {
            Stack::new(
                l,
                StackConfig {
                    mac: EthernetAddress([2, 0, 0, 0, 0x78, last]),
                    addr: IpCidr::new(ip.into(), 24),
                    gateway: None,
                    random_seed: last as u64,
                },
            )
        };
        let mut a = mk(la, 1, a_ip);
        let mut b = mk(lb, 2, b_ip);
        let server = b.add_tcp_socket(1 << 20, 64 * 1024);
        b.tcp_mut(server).listen(PORT).unwrap();
        let client = a.add_tcp_socket(64 * 1024, 1 << 20);
        a.tcp_connect(client, (b_ip, PORT), 49153).unwrap();
        let total = 4 << 20;
        let mut data = vec![0u8; total];
        XorShift(43).fill(&mut data);
        let mut sent = 0;
        let received = receive_all(&mut b, server, total, || {
            a.poll();
            let c = a.tcp_mut(client);
            if c.may_send() && sent < total {
                sent += c.send_slice(&data[sent..]).unwrap();
            }
            a.poll();
        });
        let _ = ip(&["link", "del", "lkveth0"]);
        assert!(received == data);
        let (sa, sb) = (a.link().stats(), b.link().stats());
        // Both ends took virtio-net headers: the sender's TCP went out in super-frames
        // the kernel passed through whole, and every frame was trusted on its flags.
        assert!(sa.tx_gso_frames > 0, "{sa:?}");
        assert!(sb.rx_gso_frames > 0, "{sb:?}");
        assert_eq!(sa.tx_dropped + sb.tx_dropped, 0);
        assert_eq!(sa.rx_csum_bad + sb.rx_csum_bad, 0);
    }
}
