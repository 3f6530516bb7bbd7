//! The kernel's change notifications: a socket subscribed to the rtnetlink multicast groups of
//! links, neighbours, addresses and routes (IPv4 and IPv6), whose messages become
//! [`NetChange`]s. A lost batch (the socket's buffer overran) becomes [`NetChange::Overrun`], so
//! the reconciler re-resolves everything rather than missing a change.

use std::{io, net::IpAddr, time::Duration};

use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::AddressMessage,
    link::LinkMessage,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
    route::{RouteAttribute, RouteMessage},
};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

use super::{NetlinkError, socket::set_recv_timeout};
use crate::reconcile::NetChange;

/// `RTNLGRP_*` (linux/rtnetlink.h): the groups the watcher joins.
const GROUPS: [u32; 6] = [
    1,  // RTNLGRP_LINK
    3,  // RTNLGRP_NEIGH
    5,  // RTNLGRP_IPV4_IFADDR
    7,  // RTNLGRP_IPV4_ROUTE
    9,  // RTNLGRP_IPV6_IFADDR
    11, // RTNLGRP_IPV6_ROUTE
];

/// Receive buffer asked for: neighbour churn on a busy host comes in bursts.
const RCVBUF: usize = 4 << 20;

/// A socket subscribed to the change groups.
pub struct Watcher {
    socket: Socket,
    buf: Vec<u8>,
}

impl Watcher {
    /// Opens the socket in the calling thread's network namespace and joins the groups.
    /// `tick` bounds each wait, so a caller can notice that it should stop.
    ///
    /// # Errors
    /// The socket cannot be made or subscribed.
    pub fn open(tick: Duration) -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Open)?;
        socket.bind_auto().map_err(NetlinkError::Open)?;
        for g in GROUPS {
            socket.add_membership(g).map_err(NetlinkError::Open)?;
        }
        // Best effort: the default buffer also works, it only overruns sooner (and an overrun
        // is handled).
        let _ = socket.set_rx_buf_sz(RCVBUF);
        set_recv_timeout(&socket, tick).map_err(NetlinkError::Open)?;
        Ok(Self {
            socket,
            buf: vec![0; 1 << 16],
        })
    }

    /// The changes of the next datagram; empty when the wait timed out.
    ///
    /// # Errors
    /// A receive error other than a timeout or an overrun.
    pub fn changes(&mut self) -> io::Result<Vec<NetChange>> {
        self.buf.resize(1 << 16, 0);
        match self.socket.recv(&mut &mut self.buf[..], 0) {
            Ok(n) => Ok(decode_changes(&self.buf[..n])),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(vec![NetChange::Overrun]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }
}

/// The changes one datagram of notifications announces (messages it cannot decode are
/// skipped: an attribute newer than the crate must not hide the rest).
#[must_use]
pub fn decode_changes(mut bytes: &[u8]) -> Vec<NetChange> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let Ok(frame) = NetlinkBuffer::new_checked(bytes) else {
            break;
        };
        let len = frame.length() as usize;
        let this = &bytes[..len];
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
        let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(this) else {
            continue;
        };
        let NetlinkPayload::InnerMessage(m) = msg.payload else {
            continue;
        };
        let c = match m {
            RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
                neighbour(&n)
            }
            RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => Some(link(&l)),
            RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
                Some(address(&a))
            }
            RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => route(&r),
            _ => None,
        };
        if let Some(c) = c
            && !out.contains(&c)
        {
            out.push(c);
        }
    }
    out
}

fn neighbour(n: &NeighbourMessage) -> Option<NetChange> {
    let ip = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::from(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::from(*v6)),
        _ => None,
    })?;
    Some(NetChange::Neighbour {
        ifindex: n.header.ifindex,
        ip,
    })
}

fn link(l: &LinkMessage) -> NetChange {
    NetChange::Link {
        ifindex: l.header.index,
    }
}

fn address(a: &AddressMessage) -> NetChange {
    NetChange::Address {
        ifindex: a.header.index,
    }
}

fn route(r: &RouteMessage) -> Option<NetChange> {
    let any = match r.header.address_family {
        netlink_packet_route::AddressFamily::Inet => IpAddr::from([0, 0, 0, 0]),
        netlink_packet_route::AddressFamily::Inet6 => IpAddr::from([0u16; 8]),
        _ => return None,
    };
    let dst = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(d) => super::route::route_address(d),
            _ => None,
        })
        .unwrap_or(any);
    Some(NetChange::Route {
        dst,
        len: r.header.destination_prefix_length,
    })
}
