//! Two smoltcp stacks joined by an in-memory link, with connected TCP socket pairs: the
//! test bed for tests, benchmarks and the embedded echo server (no privileges needed).

use crate::link::{memory_pair, MemoryLink};
use crate::stack::{Stack, StackConfig};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, IpCidr, Ipv4Address};

/// The server side's address.
pub const SERVER_ADDR: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
/// The client side's address.
pub const CLIENT_ADDR: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);

/// Polls beyond which [`StackPair::connect`] gives up.
const CONNECT_POLLS: usize = 10_000;

/// Two stacks over one in-memory link.
pub struct StackPair {
    /// The server stack (10.0.0.1).
    pub server: Stack<MemoryLink>,
    /// The client stack (10.0.0.2).
    pub client: Stack<MemoryLink>,
    next_port: u16,
}

/// Why [`StackPair::connect`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// smoltcp refused the listen or connect call.
    #[error("socket setup failed: {0}")]
    Setup(String),
    /// The handshake did not finish.
    #[error("the TCP handshake did not complete")]
    Handshake,
}

impl StackPair {
    /// Two stacks over a link with this IP MTU (1500, 9000, 65535, ...).
    pub fn new(mtu: usize) -> StackPair {
        let (a, b) = memory_pair(mtu);
        let config = |last: u8, addr: Ipv4Address| StackConfig {
            mac: EthernetAddress([0x02, 0, 0, 0, 0, last]),
            addr: IpCidr::new(addr.into(), 24),
            gateway: None,
            random_seed: u64::from(last),
        };
        StackPair {
            server: Stack::new(a, config(1, SERVER_ADDR)),
            client: Stack::new(b, config(2, CLIENT_ADDR)),
            next_port: 5000,
        }
    }

    /// Opens a connection: a listening server socket and a client socket connected to it,
    /// each with `rx_bytes`/`tx_bytes` of buffer. Returns `(server, client)` handles.
    pub fn connect(
        &mut self,
        rx_bytes: usize,
        tx_bytes: usize,
    ) -> Result<(SocketHandle, SocketHandle), ConnectError> {
        let port = self.next_port;
        self.next_port = self.next_port.wrapping_add(1).max(5000);
        let server = self.server.add_tcp_socket(rx_bytes, tx_bytes);
        let client = self.client.add_tcp_socket(rx_bytes, tx_bytes);
        self.server
            .tcp_mut(server)
            .listen(port)
            .map_err(|e| ConnectError::Setup(e.to_string()))?;
        self.client
            .tcp_connect(client, (SERVER_ADDR, port), 40000 + port % 20000)
            .map_err(|e| ConnectError::Setup(e.to_string()))?;
        for _ in 0..CONNECT_POLLS {
            self.poll();
            if self.server.tcp_mut(server).state() == tcp::State::Established
                && self.client.tcp_mut(client).state() == tcp::State::Established
            {
                return Ok((server, client));
            }
        }
        Err(ConnectError::Handshake)
    }

    /// Polls both stacks once.
    pub fn poll(&mut self) {
        self.client.poll();
        self.server.poll();
    }
}
