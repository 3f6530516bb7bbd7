//! Next-hop resolution through rtnetlink.
//!
//! The XDP data path rewrites Ethernet headers itself and redirects frames
//! straight out of an interface, bypassing the kernel's IP stack. It therefore
//! needs the answers the stack would normally compute: which interface a
//! destination leaves through, which gateway (if any) it goes via, and the MAC
//! addresses on both ends of that hop. This module asks the kernel for them
//! with short, synchronous request/response exchanges over a `NETLINK_ROUTE`
//! socket:
//!
//! * [`Netlink::route_get`]: the kernel's routing decision (`ip route get`),
//! * [`Netlink::routes`]: the main routing table,
//! * [`Netlink::neighbours`] / [`Netlink::neighbour`]: the ARP / NDP cache,
//! * [`Netlink::link_mac`]: an interface's MAC address,
//! * [`Netlink::resolve_neighbour`]: ask the kernel to (re)resolve a neighbour,
//! * [`Netlink::next_hop`]: all of the above combined, which is what the agent
//!   calls.
//!
//! The socket has a receive timeout so a lost reply cannot hang the agent, and
//! every request carries its own sequence number so late replies to an
//! earlier, abandoned request are ignored.

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    time::Duration,
};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_MULTIPART, NLM_F_REPLACE,
    NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteType, RouteVia,
    },
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

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
const DUMP_ATTEMPTS: usize = 3;

/// The request an error belongs to, for error messages and for callers that
/// want to match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `RTM_GETROUTE` for one destination.
    RouteGet(IpAddr),
    /// `RTM_GETROUTE` dump.
    RouteDump,
    /// `RTM_GETNEIGH` dump.
    NeighbourDump,
    /// `RTM_GETNEIGH` for one entry.
    NeighbourGet {
        /// Interface the entry lives on.
        ifindex: u32,
        /// Neighbour address.
        ip: IpAddr,
    },
    /// `RTM_NEWNEIGH` with `NTF_USE`.
    NeighbourResolve {
        /// Interface to resolve on.
        ifindex: u32,
        /// Neighbour address.
        ip: IpAddr,
    },
    /// `RTM_GETLINK` for one interface.
    LinkGet(u32),
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RouteGet(dst) => write!(f, "route get {dst}"),
            Self::RouteDump => f.write_str("route dump"),
            Self::NeighbourDump => f.write_str("neighbour dump"),
            Self::NeighbourGet { ifindex, ip } => {
                write!(f, "neighbour get {ip} on ifindex {ifindex}")
            }
            Self::NeighbourResolve { ifindex, ip } => {
                write!(f, "neighbour resolve {ip} on ifindex {ifindex}")
            }
            Self::LinkGet(ifindex) => write!(f, "link get ifindex {ifindex}"),
        }
    }
}

/// Errors of the rtnetlink exchanges.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Creating, binding or configuring the socket failed.
    #[error("cannot open rtnetlink socket")]
    Open(#[source] io::Error),
    /// Sending the request failed.
    #[error("netlink {request}: send failed")]
    Send {
        /// The failed request.
        request: Request,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// Receiving the reply failed (including the receive timeout).
    #[error("netlink {request}: receive failed")]
    Recv {
        /// The failed request.
        request: Request,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The kernel answered with `NLMSG_ERROR` (or a failed `NLMSG_DONE`).
    #[error("netlink {request}: kernel returned an error")]
    Kernel {
        /// The failed request.
        request: Request,
        /// The errno the kernel reported.
        #[source]
        source: io::Error,
    },
    /// A reply could not be decoded.
    #[error("netlink {request}: cannot decode reply")]
    Decode {
        /// The failed request.
        request: Request,
        /// The decoder's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A reply decoded fine but does not make sense for the request.
    #[error("netlink {request}: unexpected reply: {reason}")]
    Unexpected {
        /// The failed request.
        request: Request,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// Every attempt of a dump was interrupted by concurrent table changes.
    #[error("netlink {request}: dump interrupted by concurrent changes {DUMP_ATTEMPTS} times")]
    DumpInterrupted {
        /// The failed request.
        request: Request,
    },
    /// The route's output interface has no Ethernet address, so no frame can
    /// be built for it.
    #[error("interface {ifindex} has no 6-byte link-layer address")]
    NoLinkAddress {
        /// The interface.
        ifindex: u32,
    },
}

impl NetlinkError {
    /// The errno the kernel answered with, if this is a [`NetlinkError::Kernel`].
    pub fn kernel_errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The kernel's routing decision for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteInfo {
    /// Output interface.
    pub oif: u32,
    /// Gateway; `None` when the destination is directly connected.
    pub gateway: Option<IpAddr>,
    /// Preferred source address, if the kernel picked one.
    pub prefsrc: Option<IpAddr>,
}

/// One route (one next hop of it, for multipath routes) of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix address (`0.0.0.0` / `::` for default routes).
    pub dst: IpAddr,
    /// Destination prefix length.
    pub prefix_len: u8,
    /// Output interface, if the route names one.
    pub oif: Option<u32>,
    /// Gateway; `None` for directly connected prefixes.
    pub gateway: Option<IpAddr>,
}

/// One entry of the ARP / NDP cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    /// Interface the entry lives on.
    pub ifindex: u32,
    /// Neighbour address.
    pub ip: IpAddr,
    /// Link-layer address, if the entry has a 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// `NUD_*` state bits.
    pub state: u16,
}

impl Neighbour {
    /// Whether the entry's MAC may be used to send frames: it is in a state in
    /// which the kernel itself would transmit to it, and it has a MAC.
    pub fn is_valid(&self) -> bool {
        const USABLE: u16 = libc::NUD_REACHABLE
            | libc::NUD_STALE
            | libc::NUD_DELAY
            | libc::NUD_PROBE
            | libc::NUD_PERMANENT
            | libc::NUD_NOARP;
        self.state & USABLE != 0 && self.mac.is_some()
    }
}

/// A resolved next hop: `(output ifindex, source MAC = the interface's MAC,
/// destination MAC = the neighbour's MAC)`.
pub type NextHop = (u32, [u8; 6], [u8; 6]);

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
            .finish()
    }
}

impl Netlink {
    /// Opens a `NETLINK_ROUTE` socket in the calling thread's network
    /// namespace and connects it to the kernel.
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

    /// Like `ip route get DST`: the kernel's choice of output interface and
    /// gateway (`None` = directly connected).
    ///
    /// Returns `Ok(None)` when the kernel has no usable unicast route: no
    /// route (`ENETUNREACH`), `unreachable` (`EHOSTUNREACH`), `prohibit`
    /// (`EACCES`) and `blackhole` (`EINVAL`) routes, and destinations that are
    /// local, broadcast or multicast (they have no next hop to forward to).
    pub fn route_get(&mut self, dst: IpAddr) -> Result<Option<RouteInfo>, NetlinkError> {
        let request = Request::RouteGet(dst);
        let mut message = RouteMessage::default();
        message.header.address_family = family_of(dst);
        message.header.destination_prefix_length = host_prefix_len(dst);
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));

        let mut reply = None;
        let result = self.exchange(
            request,
            RouteNetlinkMessage::GetRoute(message),
            NLM_F_REQUEST,
            |message| {
                if let RouteNetlinkMessage::NewRoute(route) = message {
                    reply.get_or_insert(route);
                }
            },
        );
        match result {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kernel_errno(),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EACCES | libc::EINVAL)
                ) =>
            {
                // EINVAL is how the kernel reports a blackhole route for both
                // families; a malformed request would be caught by the tests.
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        let route = reply.ok_or(NetlinkError::Unexpected {
            request,
            reason: "no RTM_NEWROUTE in reply",
        })?;
        if route.header.kind != RouteType::Unicast {
            return Ok(None);
        }

        let mut oif = None;
        let mut gateway = None;
        let mut prefsrc = None;
        for attribute in &route.attributes {
            match attribute {
                RouteAttribute::Oif(index) => oif = Some(*index),
                RouteAttribute::Gateway(address) => gateway = route_address(address),
                RouteAttribute::Via(via) => gateway = via_address(via),
                RouteAttribute::PrefSource(address) => prefsrc = route_address(address),
                _ => {}
            }
        }
        let oif = oif.ok_or(NetlinkError::Unexpected {
            request,
            reason: "unicast route without RTA_OIF",
        })?;
        Ok(Some(RouteInfo {
            oif,
            gateway,
            prefsrc,
        }))
    }

    /// All unicast routes of the main table (`RT_TABLE_MAIN`), IPv4 then
    /// IPv6.
    ///
    /// Routes without a next hop (`blackhole`, `unreachable`, `prohibit`,
    /// `throw`) are left out, and a multipath route yields one [`Route`] per
    /// next hop. Dump entries the decoder cannot parse are skipped rather than
    /// failing the whole dump.
    pub fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        let mut routes = Vec::new();
        // One dump per family: an AF_UNSPEC dump would also return multicast
        // routing (ipmr) and MPLS entries.
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut message = RouteMessage::default();
            message.header.address_family = family;
            message.header.table = RouteHeader::RT_TABLE_MAIN;
            routes.extend(self.dump(
                Request::RouteDump,
                RouteNetlinkMessage::GetRoute(message),
                |message, out| {
                    if let RouteNetlinkMessage::NewRoute(route) = message {
                        push_main_routes(&route, out);
                    }
                },
            )?);
        }
        Ok(routes)
    }

    /// The neighbour (ARP and NDP) tables, IPv4 then IPv6. Proxy entries are
    /// not included.
    pub fn neighbours(&mut self) -> Result<Vec<Neighbour>, NetlinkError> {
        let mut neighbours = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut message = NeighbourMessage::default();
            message.header.family = family;
            neighbours.extend(self.dump(
                Request::NeighbourDump,
                RouteNetlinkMessage::GetNeighbour(message),
                |message, out| {
                    if let RouteNetlinkMessage::NewNeighbour(neighbour) = message
                        && let Some(neighbour) = neighbour_from_message(&neighbour)
                    {
                        out.push(neighbour);
                    }
                },
            )?);
        }
        Ok(neighbours)
    }

    /// One neighbour entry, `None` if the kernel has none for `ip` on
    /// `ifindex`. Much cheaper than [`Netlink::neighbours`] on hosts with
    /// large tables (uses the kernel's single-entry `RTM_GETNEIGH`, Linux ≥
    /// 5.0).
    pub fn neighbour(
        &mut self,
        ifindex: u32,
        ip: IpAddr,
    ) -> Result<Option<Neighbour>, NetlinkError> {
        let request = Request::NeighbourGet { ifindex, ip };
        // The kernel rejects get requests with any state, flags, type or
        // attribute other than NDA_DST set.
        let mut message = NeighbourMessage::default();
        message.header.family = family_of(ip);
        message.header.ifindex = ifindex;
        message
            .attributes
            .push(NeighbourAttribute::Destination(neighbour_address(ip)));

        let mut reply = None;
        let result = self.exchange(
            request,
            RouteNetlinkMessage::GetNeighbour(message),
            NLM_F_REQUEST,
            |message| {
                if let RouteNetlinkMessage::NewNeighbour(neighbour) = message {
                    reply.get_or_insert(neighbour);
                }
            },
        );
        match result {
            Ok(_) => {}
            Err(e) if e.kernel_errno() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        }
        Ok(reply.as_ref().and_then(neighbour_from_message))
    }

    /// MAC address of a link by ifindex (`IFLA_ADDRESS`), `None` if the link
    /// has no 6-byte address (e.g. tun or WireGuard devices).
    pub fn link_mac(&mut self, ifindex: u32) -> Result<Option<[u8; 6]>, NetlinkError> {
        let request = Request::LinkGet(ifindex);
        let mut message = LinkMessage::default();
        message.header.index = ifindex;

        let mut reply = None;
        self.exchange(
            request,
            RouteNetlinkMessage::GetLink(message),
            NLM_F_REQUEST,
            |message| {
                if let RouteNetlinkMessage::NewLink(link) = message {
                    reply.get_or_insert(link);
                }
            },
        )?;
        let link = reply.ok_or(NetlinkError::Unexpected {
            request,
            reason: "no RTM_NEWLINK in reply",
        })?;
        Ok(link
            .attributes
            .iter()
            .find_map(|attribute| match attribute {
                LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                _ => None,
            }))
    }

    /// Asks the kernel to resolve a neighbour: it sends an ARP request /
    /// neighbour solicitation now and the entry later turns `REACHABLE` (or
    /// `FAILED` if nobody answers).
    ///
    /// This is `ip neigh replace IP dev DEV nud none use`: `RTM_NEWNEIGH` with
    /// `NTF_USE`. The kernel's `neigh_add()` creates the entry if needed
    /// (hence `NLM_F_CREATE`) and then, because of `NTF_USE`, only calls
    /// `neigh_event_send()` – the requested state is never applied, so this
    /// cannot create a permanent entry or overwrite a learned MAC. On an entry
    /// that is already `REACHABLE`, `DELAY`, `PROBE` or `INCOMPLETE` it does
    /// nothing; a `STALE` entry goes to `DELAY` (re-confirmation) and a
    /// `FAILED` one is probed again.
    pub fn resolve_neighbour(&mut self, ifindex: u32, ip: IpAddr) -> Result<(), NetlinkError> {
        let mut message = NeighbourMessage::default();
        message.header.family = family_of(ip);
        message.header.ifindex = ifindex;
        message.header.state = NeighbourState::None;
        message.header.flags = NeighbourFlags::Use;
        message
            .attributes
            .push(NeighbourAttribute::Destination(neighbour_address(ip)));
        self.exchange(
            Request::NeighbourResolve { ifindex, ip },
            RouteNetlinkMessage::NewNeighbour(message),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            |_| {},
        )?;
        Ok(())
    }

    /// The next hop for `dst`: `(output ifindex, its MAC, the next hop's
    /// MAC)`.
    ///
    /// Looks up the route, then the neighbour entry of the gateway (or of
    /// `dst` itself when directly connected) on the route's interface. If the
    /// entry is missing or unusable, asks the kernel to resolve it and returns
    /// `Ok(None)`; the caller retries later. `Ok(None)` also means there is no
    /// usable route (see [`Netlink::route_get`]).
    ///
    /// A usable but `STALE` entry is returned and also handed to
    /// [`Netlink::resolve_neighbour`]: traffic forwarded by XDP never passes
    /// the kernel's neighbour code, so without this nudge the entry would stay
    /// `STALE` (its MAC never re-confirmed) until garbage collection drops it.
    pub fn next_hop(&mut self, dst: IpAddr) -> Result<Option<NextHop>, NetlinkError> {
        let Some(route) = self.route_get(dst)? else {
            return Ok(None);
        };
        let hop = route.gateway.unwrap_or(dst);
        let neighbour = self.neighbour(route.oif, hop)?;
        let Some((dmac, state)) = neighbour
            .filter(Neighbour::is_valid)
            .and_then(|n| n.mac.map(|mac| (mac, n.state)))
        else {
            self.resolve_neighbour(route.oif, hop)?;
            return Ok(None);
        };
        if state & libc::NUD_STALE != 0 {
            self.resolve_neighbour(route.oif, hop)?;
        }
        let smac = self
            .link_mac(route.oif)?
            .ok_or(NetlinkError::NoLinkAddress { ifindex: route.oif })?;
        Ok(Some((route.oif, smac, dmac)))
    }

    /// Runs a dump, repeating it if the kernel flags it as interrupted by a
    /// concurrent change (`NLM_F_DUMP_INTR`), which would make it inconsistent.
    fn dump<T>(
        &mut self,
        request: Request,
        message: RouteNetlinkMessage,
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
    fn exchange(
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
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
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
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
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

fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
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

/// Appends the routes of `message` if it is a unicast main-table route.
fn push_main_routes(message: &RouteMessage, out: &mut Vec<Route>) {
    let header = &message.header;
    // Cached/exception routes are not table entries.
    if header.kind != RouteType::Unicast || header.flags.contains(RouteFlags::Cloned) {
        return;
    }
    let any: IpAddr = match header.address_family {
        AddressFamily::Inet => Ipv4Addr::UNSPECIFIED.into(),
        AddressFamily::Inet6 => Ipv6Addr::UNSPECIFIED.into(),
        _ => return,
    };
    // rtm_table is 8 bits; tables above 255 are only in RTA_TABLE.
    let mut table = u32::from(header.table);
    let mut dst = any;
    let mut oif = None;
    let mut gateway = None;
    let mut next_hops = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Table(id) => table = *id,
            RouteAttribute::Destination(address) => dst = route_address(address).unwrap_or(any),
            RouteAttribute::Oif(index) => oif = Some(*index),
            RouteAttribute::Gateway(address) => gateway = route_address(address),
            RouteAttribute::Via(via) => gateway = via_address(via),
            RouteAttribute::MultiPath(hops) => next_hops = Some(hops),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return;
    }
    let prefix_len = header.destination_prefix_length;
    match next_hops {
        Some(hops) if !hops.is_empty() => {
            for hop in hops {
                let gateway = hop.attributes.iter().find_map(|attribute| match attribute {
                    RouteAttribute::Gateway(address) => route_address(address),
                    RouteAttribute::Via(via) => via_address(via),
                    _ => None,
                });
                out.push(Route {
                    dst,
                    prefix_len,
                    oif: Some(hop.interface_index).filter(|&index| index != 0),
                    gateway,
                });
            }
        }
        _ => out.push(Route {
            dst,
            prefix_len,
            oif,
            gateway,
        }),
    }
}

fn neighbour_from_message(message: &NeighbourMessage) -> Option<Neighbour> {
    if message.header.flags.contains(NeighbourFlags::Proxy) {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some((*v4).into()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                ip = Some((*v6).into());
            }
            NeighbourAttribute::LinkLocalAddress(bytes) => {
                mac = <[u8; 6]>::try_from(bytes.as_slice()).ok();
            }
            _ => {}
        }
    }
    Some(Neighbour {
        ifindex: message.header.ifindex,
        ip: ip?,
        mac,
        state: message.header.state.into(),
    })
}

fn route_address(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some((*v4).into()),
        RouteAddress::Inet6(v6) => Some((*v6).into()),
        _ => None,
    }
}

/// `RTA_VIA` is how the kernel reports a gateway of the other family (an IPv4
/// route via an IPv6 next hop).
fn via_address(via: &RouteVia) -> Option<IpAddr> {
    match via {
        RouteVia::Inet(v4) => Some((*v4).into()),
        RouteVia::Inet6(v6) => Some((*v6).into()),
        _ => None,
    }
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn host_prefix_len(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

#[cfg(test)]
mod tests {
    //! These tests need root: each builds its own pair of network namespaces
    //! (`ip netns add`), connected by a veth pair, and runs the client from a
    //! thread that `setns()`ed into one of them, so the host's network is
    //! never touched. Run with `cargo test -- --test-threads=1`.

    use std::{
        fs::File,
        process::{Command, Stdio},
        sync::atomic::{AtomicU32, Ordering},
        thread,
    };

    use super::*;

    static NEXT_ID: AtomicU32 = AtomicU32::new(0);

    const A_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const B_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    const B_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

    /// Deletes the namespaces it holds on drop, also when a test panics.
    struct NetnsGuard(Vec<String>);

    impl Drop for NetnsGuard {
        fn drop(&mut self) {
            for name in &self.0 {
                let _ = Command::new("ip")
                    .args(["netns", "del", name])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }

    /// Runs `ip ARGS`, panicking with its stderr on failure; returns stdout.
    fn ip(args: &[&str]) -> String {
        let output = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            output.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 output")
    }

    /// `ns` holds veth `a` (192.0.2.1/24, 2001:db8::1/64) with routes
    /// 198.51.100.0/24 via 192.0.2.2, 2001:db8:1::/64 via 2001:db8::2 and
    /// blackhole 203.0.113.0/25; `peer` holds veth `b` (192.0.2.2/24,
    /// 2001:db8::2/64).
    struct Topology {
        guard: NetnsGuard,
        ifindex_a: u32,
        mac_a: [u8; 6],
        mac_b: [u8; 6],
    }

    impl Topology {
        fn new() -> Self {
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            let base = format!("lbnl-test-{}-{id}", std::process::id());
            let ns = format!("{base}a");
            let peer = format!("{base}b");
            let mut guard = NetnsGuard(Vec::new());
            for name in [&ns, &peer] {
                ip(&["netns", "add", name]);
                guard.0.push(name.clone());
                // No duplicate address detection: link-local addresses are
                // usable as soon as the link is, which keeps the tests fast.
                let output = Command::new("ip")
                    .args(["netns", "exec", name, "sysctl", "-qw"])
                    .args([
                        "net.ipv6.conf.all.accept_dad=0",
                        "net.ipv6.conf.default.accept_dad=0",
                    ])
                    .output()
                    .expect("run sysctl");
                assert!(output.status.success(), "sysctl: {output:?}");
            }
            let batch = format!(
                "link add name a type veth peer name b netns {peer}
                 link set lo up
                 addr add 192.0.2.1/24 dev a
                 addr add 2001:db8::1/64 dev a nodad
                 link set dev a up"
            );
            run_batch(&ns, &batch);
            run_batch(
                &peer,
                "link set lo up
                 addr add 192.0.2.2/24 dev b
                 addr add 2001:db8::2/64 dev b nodad
                 link set dev b up",
            );
            run_batch(
                &ns,
                "route add 198.51.100.0/24 via 192.0.2.2
                 route add blackhole 203.0.113.0/25
                 route add 2001:db8:1::/64 via 2001:db8::2",
            );
            wait_ipv6_ready(&ns, "a");
            wait_ipv6_ready(&peer, "b");
            let (ifindex_a, mac_a) = link_info(&ns, "a");
            let (_, mac_b) = link_info(&peer, "b");
            Self {
                guard,
                ifindex_a,
                mac_a,
                mac_b,
            }
        }

        fn ns(&self) -> &str {
            &self.guard.0[0]
        }

        /// Runs `f` on a thread that has entered the first namespace, and
        /// re-raises its panic so the test fails with the original message.
        fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
            let path = format!("/run/netns/{}", self.ns());
            let handle = thread::spawn(move || {
                let file = File::open(&path).expect("open netns file");
                // SAFETY: a valid netns fd; CLONE_NEWNET only switches the
                // network namespace of this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
                f()
            });
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        }
    }

    /// Waits (bounded, 5 s) until `dev` has a usable (non-tentative)
    /// link-local address. The kernel adds it only when the link-up event
    /// reaches addrconf via linkwatch (up to ~1 s after `link set up`), and
    /// without it `ndisc_send_ns()` silently sends nothing, so an IPv6
    /// resolution started earlier would only progress at the next retransmit
    /// (1 s later).
    fn wait_ipv6_ready(ns: &str, dev: &str) {
        for _ in 0..100 {
            let addrs = ip(&[
                "-n",
                ns,
                "-6",
                "addr",
                "show",
                "dev",
                dev,
                "scope",
                "link",
                "-tentative",
            ]);
            if !addrs.trim().is_empty() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("IPv6 link-local on {dev} in {ns} not ready after 5 s");
    }

    /// `ip -n NS -batch -` with one command per line.
    fn run_batch(ns: &str, commands: &str) {
        let script: String = commands
            .lines()
            .map(|line| format!("{}\n", line.trim()))
            .collect();
        run_batch_script(ns, &script);
    }

    fn run_batch_script(ns: &str, script: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["-n", ns, "-batch", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip -batch");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write batch");
        let output = child.wait_with_output().expect("wait ip -batch");
        assert!(
            output.status.success(),
            "ip -n {ns} -batch: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// (ifindex, MAC) from `ip -j link show`, parsed just enough.
    fn link_info(ns: &str, dev: &str) -> (u32, [u8; 6]) {
        let json = ip(&["-n", ns, "-j", "link", "show", "dev", dev]);
        let field = |name: &str| {
            let key = format!("\"{name}\":");
            let start = json.find(&key).expect("field present") + key.len();
            json[start..]
                .split([',', '}'])
                .next()
                .expect("value")
                .trim_matches('"')
                .to_owned()
        };
        let ifindex = field("ifindex").parse().expect("ifindex");
        let mut mac = [0u8; 6];
        let text = field("address");
        let octets: Vec<&str> = text.split(':').collect();
        assert_eq!(octets.len(), 6, "address {text}");
        for (byte, octet) in mac.iter_mut().zip(octets) {
            *byte = u8::from_str_radix(octet, 16).expect("hex octet");
        }
        (ifindex, mac)
    }

    /// Polls `next_hop` (bounded: 50 × 20 ms) until it returns a hop.
    fn poll_next_hop(nl: &mut Netlink, dst: IpAddr) -> Option<NextHop> {
        for _ in 0..50 {
            if let Some(hop) = nl.next_hop(dst).expect("next_hop") {
                return Some(hop);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    #[test]
    fn neighbour_validity() {
        let mut n = Neighbour {
            ifindex: 1,
            ip: A_V4.into(),
            mac: Some([2, 0, 0, 0, 0, 1]),
            state: libc::NUD_STALE,
        };
        assert!(n.is_valid());
        n.state = libc::NUD_FAILED;
        assert!(!n.is_valid());
        n.state = libc::NUD_INCOMPLETE;
        assert!(!n.is_valid());
        n.state = libc::NUD_REACHABLE;
        n.mac = None;
        assert!(!n.is_valid());
    }

    #[test]
    fn route_get() {
        let topo = Topology::new();
        let ifindex_a = topo.ifindex_a;
        topo.run(move || {
            let mut nl = Netlink::open().expect("open");

            let connected = nl
                .route_get(B_V4.into())
                .expect("route_get")
                .expect("route");
            assert_eq!(connected.oif, ifindex_a);
            assert_eq!(connected.gateway, None);
            assert_eq!(connected.prefsrc, Some(A_V4.into()));

            let via = nl
                .route_get(Ipv4Addr::new(198, 51, 100, 7).into())
                .expect("route_get")
                .expect("route");
            assert_eq!(via.oif, ifindex_a);
            assert_eq!(via.gateway, Some(B_V4.into()));

            let via6 = nl
                .route_get("2001:db8:1::7".parse().expect("addr"))
                .expect("route_get")
                .expect("route");
            assert_eq!(via6.oif, ifindex_a);
            assert_eq!(via6.gateway, Some(B_V6.into()));

            // No default route: unreachable. Blackhole: no next hop either.
            for dst in ["203.0.113.200", "203.0.113.1", "2001:db8:2::1"] {
                let dst: IpAddr = dst.parse().expect("addr");
                assert_eq!(nl.route_get(dst).expect("route_get"), None, "{dst}");
            }
            // Own address: a local route, not a next hop.
            assert_eq!(nl.route_get(A_V4.into()).expect("route_get"), None);
        });
    }

    #[test]
    fn routes_dump() {
        let topo = Topology::new();
        // Enough routes to need many datagrams, so the multipart path and
        // NLMSG_DONE handling are exercised.
        let script: String = (0..1000)
            .map(|i| format!("route add 2001:db8:2:{i:x}::/64 via 2001:db8::2\n"))
            .collect();
        run_batch_script(topo.ns(), &script);
        let ifindex_a = topo.ifindex_a;
        topo.run(move || {
            let mut nl = Netlink::open().expect("open");
            let routes = nl.routes().expect("routes");
            let expect = [
                Route {
                    dst: Ipv4Addr::new(198, 51, 100, 0).into(),
                    prefix_len: 24,
                    oif: Some(ifindex_a),
                    gateway: Some(B_V4.into()),
                },
                Route {
                    dst: Ipv4Addr::new(192, 0, 2, 0).into(),
                    prefix_len: 24,
                    oif: Some(ifindex_a),
                    gateway: None,
                },
                Route {
                    dst: "2001:db8:1::".parse().expect("addr"),
                    prefix_len: 64,
                    oif: Some(ifindex_a),
                    gateway: Some(B_V6.into()),
                },
                Route {
                    dst: "2001:db8:2:3e7::".parse().expect("addr"),
                    prefix_len: 64,
                    oif: Some(ifindex_a),
                    gateway: Some(B_V6.into()),
                },
            ];
            for route in expect {
                assert!(routes.contains(&route), "{route:?} missing from {routes:?}");
            }
            let many = routes
                .iter()
                .filter(
                    |r| matches!(r.dst, IpAddr::V6(v6) if v6.segments()[..3] == [0x2001, 0xdb8, 2]),
                )
                .count();
            assert_eq!(many, 1000);
            // Blackhole (no next hop) and local-table routes are not listed.
            assert!(
                !routes
                    .iter()
                    .any(|r| r.dst == IpAddr::from(Ipv4Addr::new(203, 0, 113, 0)))
            );
            assert!(!routes.iter().any(|r| r.dst == IpAddr::from(A_V4)));
        });
    }

    #[test]
    fn link_mac() {
        let topo = Topology::new();
        let (ifindex_a, mac_a) = (topo.ifindex_a, topo.mac_a);
        topo.run(move || {
            let mut nl = Netlink::open().expect("open");
            assert_eq!(nl.link_mac(ifindex_a).expect("link_mac"), Some(mac_a));
            // Loopback has an all-zero 6-byte address.
            assert_eq!(nl.link_mac(1).expect("link_mac"), Some([0; 6]));
            let err = nl.link_mac(999_999).expect_err("no such link");
            assert_eq!(err.kernel_errno(), Some(libc::ENODEV), "{err:?}");
            assert!(matches!(
                err,
                NetlinkError::Kernel {
                    request: Request::LinkGet(999_999),
                    ..
                }
            ));
        });
    }

    #[test]
    fn next_hop_resolves() {
        let topo = Topology::new();
        let (ifindex_a, mac_a, mac_b) = (topo.ifindex_a, topo.mac_a, topo.mac_b);
        let ns = topo.ns().to_owned();
        topo.run(move || {
            let mut nl = Netlink::open().expect("open");
            let expected = Some((ifindex_a, mac_a, mac_b));

            // Nothing has talked to 192.0.2.2 yet: the first call triggers
            // resolution (or, if something did, already succeeds).
            let first = nl.next_hop(B_V4.into()).expect("next_hop");
            assert!(first.is_none() || first == expected, "{first:?}");
            assert_eq!(poll_next_hop(&mut nl, B_V4.into()), expected);

            // Via the gateway: same hop.
            assert_eq!(
                poll_next_hop(&mut nl, Ipv4Addr::new(198, 51, 100, 7).into()),
                expected
            );
            // IPv6, through neighbour discovery.
            assert_eq!(
                poll_next_hop(&mut nl, "2001:db8:1::7".parse().expect("addr")),
                expected
            );

            // A STALE entry is still a usable hop, and next_hop nudges the
            // kernel to re-confirm it (STALE -> DELAY -> PROBE/REACHABLE).
            let mac_b_text = mac_b.map(|b| format!("{b:02x}")).join(":");
            ip(&[
                "-n",
                &ns,
                "neigh",
                "change",
                "192.0.2.2",
                "dev",
                "a",
                "lladdr",
                &mac_b_text,
                "nud",
                "stale",
            ]);
            let stale = nl.neighbour(ifindex_a, B_V4.into()).expect("neighbour");
            assert_eq!(stale.map(|n| n.state), Some(libc::NUD_STALE));
            assert_eq!(nl.next_hop(B_V4.into()).expect("next_hop"), expected);
            let nudged = nl.neighbour(ifindex_a, B_V4.into()).expect("neighbour");
            assert!(
                nudged.is_some_and(|n| n.state & (libc::NUD_DELAY | libc::NUD_REACHABLE) != 0),
                "{nudged:?}"
            );

            let neighbours = nl.neighbours().expect("neighbours");
            for ip in [IpAddr::from(B_V4), IpAddr::from(B_V6)] {
                let entry = neighbours
                    .iter()
                    .find(|n| n.ip == ip && n.ifindex == ifindex_a)
                    .unwrap_or_else(|| panic!("{ip} missing from {neighbours:?}"));
                assert_eq!(entry.mac, Some(mac_b));
                assert!(entry.is_valid(), "{entry:?}");
                // Learned, not administratively set.
                assert_eq!(entry.state & libc::NUD_PERMANENT, 0, "{entry:?}");
            }

            // Unreachable destination: no hop.
            let none = nl
                .next_hop(Ipv4Addr::new(203, 0, 113, 200).into())
                .expect("next_hop");
            assert_eq!(none, None);
        });
    }

    #[test]
    fn resolving_a_silent_host_creates_no_permanent_entry() {
        let topo = Topology::new();
        let ifindex_a = topo.ifindex_a;
        topo.run(move || {
            let mut nl = Netlink::open().expect("open");
            let silent: IpAddr = Ipv4Addr::new(192, 0, 2, 99).into();
            assert_eq!(nl.neighbour(ifindex_a, silent).expect("neighbour"), None);
            assert_eq!(nl.next_hop(silent).expect("next_hop"), None);

            let entry = nl
                .neighbour(ifindex_a, silent)
                .expect("neighbour")
                .expect("entry created by NTF_USE");
            assert_ne!(
                entry.state & (libc::NUD_INCOMPLETE | libc::NUD_FAILED),
                0,
                "{entry:?}"
            );
            assert_eq!(entry.state & libc::NUD_PERMANENT, 0, "{entry:?}");
            assert!(!entry.is_valid());

            // Resolving again while INCOMPLETE is harmless and still no hop.
            nl.resolve_neighbour(ifindex_a, silent).expect("resolve");
            assert_eq!(nl.next_hop(silent).expect("next_hop"), None);
        });
    }
}
