//! The blocking rtnetlink client: one request/response exchange at a time on one socket.

use std::{fmt, io, os::fd::AsRawFd, time::Duration};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_MULTIPART, NLM_F_REQUEST, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::{NetlinkError, Request};

/// How long a single `recv` may block. The kernel answers rtnetlink requests
/// synchronously, so hitting this means something is badly wrong; failing is
/// better than wedging the agent.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// Initial receive buffer. Kernel dump datagrams are at most 32 KiB unless a
/// single entry is bigger; larger datagrams are still received whole because
/// the buffer grows to the size reported by a `MSG_PEEK | MSG_TRUNC` probe.
const RECV_BUF_SIZE: usize = 32 * 1024;

/// A dump that raced with table changes is flagged `NLM_F_DUMP_INTR` and may
/// be inconsistent; it is repeated at most this many times.
pub(super) const DUMP_ATTEMPTS: usize = 3;

/// A blocking rtnetlink client. Not shared between threads: every call is a
/// complete request/response exchange on the one socket.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink")
            .field("fd", &self.socket.as_raw_fd())
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Netlink {
    /// Opens a `NETLINK_ROUTE` socket in the calling thread's network
    /// namespace and connects it to the kernel.
    ///
    /// # Errors
    /// An exchange with the kernel fails ([`NetlinkError`]).
    pub fn open() -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Open)?;
        socket.bind_auto().map_err(NetlinkError::Open)?;
        // Connected to the kernel (port 0): nothing from other processes can
        // arrive on this socket.
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Open)?;
        set_recv_timeout(&socket, RECV_TIMEOUT).map_err(NetlinkError::Open)?;
        Ok(Self {
            socket,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF_SIZE),
        })
    }

    /// Runs a dump, repeating it if the kernel flags it as interrupted by a
    /// concurrent change (`NLM_F_DUMP_INTR`), which would make it inconsistent.
    pub(super) fn dump<T>(
        &mut self,
        request: Request,
        message: &RouteNetlinkMessage,
        mut convert: impl FnMut(RouteNetlinkMessage, &mut Vec<T>),
    ) -> Result<Vec<T>, NetlinkError> {
        for _ in 0..DUMP_ATTEMPTS {
            let mut items = Vec::new();
            let interrupted = self.exchange(
                request,
                message.clone(),
                NLM_F_REQUEST | NLM_F_DUMP,
                |reply| convert(reply, &mut items),
            )?;
            if !interrupted {
                return Ok(items);
            }
        }
        Err(NetlinkError::DumpInterrupted { request })
    }

    /// Sends one request and feeds every reply message carrying its sequence
    /// number to `on_reply`, until the exchange is complete:
    ///
    /// * a dump ends with `NLMSG_DONE`,
    /// * a request with `NLM_F_ACK` ends with the `NLMSG_ERROR` acknowledgement,
    /// * otherwise it ends with the first non-multipart reply,
    /// * a non-zero `NLMSG_ERROR` ends it with [`NetlinkError::Kernel`].
    ///
    /// Returns whether the kernel flagged the reply as an interrupted dump.
    pub(super) fn exchange(
        &mut self,
        request: Request,
        message: RouteNetlinkMessage,
        flags: u16,
        mut on_reply: impl FnMut(RouteNetlinkMessage),
    ) -> Result<bool, NetlinkError> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;

        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        loop {
            match self.socket.send(&bytes, 0) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(NetlinkError::Send { request, source }),
            }
        }

        let wants_ack = flags & NLM_F_ACK != 0;
        let mut interrupted = false;
        loop {
            self.recv_datagram(request)?;
            let mut offset = 0;
            while offset < self.buf.len() {
                let rest = &self.buf[offset..];
                // `new_checked` guarantees 16 <= length <= rest.len(), so the
                // slicing below cannot panic and `offset` always advances.
                let frame = NetlinkBuffer::new_checked(rest).map_err(|e| NetlinkError::Decode {
                    request,
                    source: Box::new(e),
                })?;
                let length = frame.length() as usize;
                let frame_flags = frame.flags();
                let frame_seq = frame.sequence_number();
                let frame = &rest[..length];
                offset += length.next_multiple_of(4);

                if frame_seq != seq {
                    // A late reply to an earlier request that failed midway.
                    continue;
                }
                if frame_flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                let parsed = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(frame) {
                    Ok(parsed) => parsed,
                    // One entry of a dump the decoder does not understand
                    // (e.g. an attribute layout newer than the crate) must not
                    // make the whole table unreadable.
                    Err(_) if frame_flags & NLM_F_MULTIPART != 0 => continue,
                    Err(e) => {
                        return Err(NetlinkError::Decode {
                            request,
                            source: Box::new(e),
                        });
                    }
                };
                match parsed.payload {
                    NetlinkPayload::Done(done) => {
                        if done.code < 0 {
                            return Err(kernel_error(request, done.code));
                        }
                        return Ok(interrupted);
                    }
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None => Ok(interrupted),
                            Some(code) => Err(kernel_error(request, code.get())),
                        };
                    }
                    NetlinkPayload::InnerMessage(inner) => {
                        on_reply(inner);
                        if frame_flags & NLM_F_MULTIPART == 0 && !wants_ack {
                            return Ok(interrupted);
                        }
                    }
                    NetlinkPayload::Overrun(_) => {
                        return Err(NetlinkError::Unexpected {
                            request,
                            reason: "NLMSG_OVERRUN",
                        });
                    }
                    _ => {}
                }
            }
        }
    }

    /// Receives one whole datagram into `self.buf`, growing it if needed.
    fn recv_datagram(&mut self, request: Request) -> Result<(), NetlinkError> {
        let recv_error = |source| NetlinkError::Recv { request, source };
        loop {
            self.buf.clear();
            self.buf.reserve(RECV_BUF_SIZE);
            // MSG_TRUNC makes the peek report the datagram's real size even if
            // it does not fit, so the real read below is never truncated.
            let size = match self
                .socket
                .recv(&mut self.buf, libc::MSG_PEEK | libc::MSG_TRUNC)
            {
                Ok(size) => size,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(recv_error(e)),
            };
            self.buf.clear();
            self.buf.reserve(size);
            match self.socket.recv(&mut self.buf, 0) {
                Ok(received) if received <= self.buf.len() => return Ok(()),
                Ok(_) => {
                    return Err(NetlinkError::Unexpected {
                        request,
                        reason: "datagram truncated",
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(recv_error(e)),
            }
        }
    }
}

/// `NLMSG_ERROR` / `NLMSG_DONE` carry a negated errno.
fn kernel_error(request: Request, code: i32) -> NetlinkError {
    NetlinkError::Kernel {
        request,
        // saturating: a hostile i32::MIN must not overflow.
        source: io::Error::from_raw_os_error(code.saturating_neg()),
    }
}

pub(super) fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        // subsec_micros() < 1_000_000 fits every suseconds_t (i32 or i64).
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    // SAFETY: the fd is a live socket owned by `socket`, and `tv` is a valid
    // `timeval` whose exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
