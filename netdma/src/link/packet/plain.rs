//! The plain path of the packet link (`pnet_datalink`): one frame per system call, no
//! virtio-net header, every checksum computed and verified by smoltcp. Taken when the
//! kernel refuses virtio-net headers or they are not asked for.

use std::io;
use std::os::unix::io::RawFd;
use std::time::Duration;

use pnet_datalink::{Channel, DataLinkReceiver, DataLinkSender, NetworkInterface};

use super::super::LinkStats;
use super::sys::{close_fd, configure_socket, open_packet_socket};
use super::{RxToken, TxToken, MAX_FRAME};

/// How long a send may wait for room in the socket's send buffer before the frame is
/// dropped (counted in `tx_dropped`), on the plain path.
const WRITE_TIMEOUT: Duration = Duration::from_millis(10);

/// The pnet channel of a [`PacketLink`](super::PacketLink) on the plain path.
pub(super) struct Plain {
    pub(super) fd: RawFd,
    tx: Box<dyn DataLinkSender>,
    rx: Box<dyn DataLinkReceiver>,
    tx_buf: Vec<u8>,
}

impl Plain {
    /// The pnet path: returns it and the receive buffer the kernel granted.
    pub(super) fn open(
        iface: &NetworkInterface,
        frame_mtu: usize,
        rcvbuf: usize,
    ) -> io::Result<(Self, usize)> {
        let fd = open_packet_socket(libc::ETH_P_ALL as u16)?;
        let granted = match configure_socket(fd, rcvbuf) {
            Ok(granted) => granted,
            Err(e) => {
                close_fd(fd);
                return Err(e);
            }
        };
        let config = pnet_datalink::Config {
            write_buffer_size: frame_mtu,
            read_buffer_size: frame_mtu.max(MAX_FRAME),
            // A zero read timeout makes `next()` non-blocking (poll(2) with 0 ms); we
            // block in `wait` instead.
            read_timeout: Some(Duration::ZERO),
            write_timeout: Some(WRITE_TIMEOUT),
            promiscuous: true,
            // pnet binds this socket to the interface and takes ownership of it: it
            // closes it on error and when the channel is dropped.
            socket_fd: Some(fd),
            ..Default::default()
        };
        let (tx, rx) = match pnet_datalink::channel(iface, config)? {
            Channel::Ethernet(tx, rx) => (tx, rx),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "pnet_datalink returned a non-Ethernet channel",
                ))
            }
        };
        Ok((
            Plain {
                fd,
                tx,
                rx,
                tx_buf: Vec::with_capacity(frame_mtu),
            },
            granted,
        ))
    }

    /// The next received frame as smoltcp tokens (one non-blocking read); `None` if no
    /// frame is ready. Errors other than "nothing ready" are counted in `rx_errors`.
    pub(super) fn receive_token<'a>(
        &'a mut self,
        name: &str,
        stats: &'a mut LinkStats,
        rx_errors: &mut u64,
    ) -> Option<(RxToken<'a>, TxToken<'a>)> {
        let frame = match self.rx.next() {
            Ok(frame) => frame,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                ) {
                    *rx_errors += 1;
                    tracing::debug!(iface = %name, %e, "packet link: receive failed");
                }
                return None;
            }
        };
        stats.count_rx(frame.len());
        let rx = RxToken { frame };
        let tx = TxToken::Plain(PlainTx {
            tx: &mut *self.tx,
            buf: &mut self.tx_buf,
            stats,
        });
        Some((rx, tx))
    }

    /// A transmit token that sends its frame at once.
    pub(super) fn transmit_token<'a>(&'a mut self, stats: &'a mut LinkStats) -> TxToken<'a> {
        TxToken::Plain(PlainTx {
            tx: &mut *self.tx,
            buf: &mut self.tx_buf,
            stats,
        })
    }
}

/// Transmit token of the plain path.
#[doc(hidden)]
pub struct PlainTx<'a> {
    tx: &'a mut dyn DataLinkSender,
    buf: &'a mut Vec<u8>,
    stats: &'a mut LinkStats,
}

impl PlainTx<'_> {
    /// Builds the frame in the link's buffer and sends it (one system call); a frame
    /// the kernel refuses is counted in `tx_dropped`.
    pub(super) fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        self.buf.resize(len, 0);
        let result = f(&mut self.buf[..len]);
        match self.tx.send_to(&self.buf[..len], None) {
            Some(Ok(())) => self.stats.count_tx(len),
            Some(Err(e)) => {
                self.stats.tx_dropped += 1;
                tracing::debug!(%e, "packet link: send failed, frame dropped");
            }
            None => self.stats.tx_dropped += 1,
        }
        result
    }
}
