//! rtnetlink: what the kernel's routing and neighbour tables say, and what changes in them.
//!
//! The XDP data path rewrites Ethernet headers itself and redirects frames straight out of an
//! interface, bypassing the kernel's IP stack. It therefore needs the answers the stack would
//! normally compute: which interface a destination leaves through, which gateway (if any) it
//! goes via, and the MAC addresses on both ends of that hop. The rooms:
//!
//! * `socket.rs`: the blocking `NETLINK_ROUTE` client ([`Netlink`]): one exchange at a time,
//!   sequence numbers, dumps, a receive timeout so a lost reply cannot hang a caller;
//! * `route.rs`: the kernel's routing decision (`ip route get`) and the main table;
//! * `link.rs`: what an interface is (a veth, its peer, the peer's namespace);
//! * `neigh.rs`: the ARP / NDP cache, interfaces' MACs, asking the kernel to resolve;
//! * `resolver.rs`: the next hop of an address, and the agent's [`NetlinkResolver`];
//! * `watch.rs`: the multicast subscription that turns kernel changes into events.
//!
//! Every exchange blocks, so none runs on a tokio worker: the resolver and the watcher run on
//! threads of their own.

mod address;
mod announce;
mod link;
mod neigh;
mod probe_path;
mod resolver;
mod route;
mod socket;
mod watch;

#[cfg(test)]
mod tests;

use std::{fmt, io, net::IpAddr};

use netlink_packet_route::AddressFamily;

use self::socket::DUMP_ATTEMPTS;
pub use self::{
    announce::PROTO as ANNOUNCE_PROTO,
    link::LinkFacts,
    neigh::Neighbour,
    resolver::NetlinkResolver,
    route::{Route, RouteInfo},
    socket::Netlink,
    watch::{Watcher, decode_changes},
};

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
    /// `RTM_GETADDR` dump.
    AddressDump,
    /// `RTM_GETNSID` for an open namespace file.
    NsidGet,
    /// `RTM_NEWADDR` (create or replace).
    AddressAdd {
        /// Interface the address goes on.
        ifindex: u32,
        /// The address.
        ip: IpAddr,
    },
    /// A step of the tunnel probes' path (`probe_path.rs`): link add, link set up, rule add,
    /// route replace.
    ProbePath(&'static str),
    /// A VIP's host route put in the announce table (`announce.rs`).
    Announce(IpAddr),
    /// A VIP's host route removed from the announce table.
    Withdraw(IpAddr),
    /// The announce table's routes, dumped.
    AnnouncedDump,
    /// `RTM_DELADDR`.
    AddressDelete {
        /// Interface the address is on.
        ifindex: u32,
        /// The address.
        ip: IpAddr,
    },
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RouteGet(dst) => write!(f, "route get {dst}"),
            Self::RouteDump => f.write_str("route dump"),
            Self::NeighbourDump => f.write_str("neighbour dump"),
            Self::AddressDump => f.write_str("address dump"),
            Self::NeighbourGet { ifindex, ip } => {
                write!(f, "neighbour get {ip} on ifindex {ifindex}")
            }
            Self::NeighbourResolve { ifindex, ip } => {
                write!(f, "neighbour resolve {ip} on ifindex {ifindex}")
            }
            Self::LinkGet(ifindex) => write!(f, "link get ifindex {ifindex}"),
            Self::NsidGet => f.write_str("nsid get"),
            Self::ProbePath(step) => write!(f, "probe path: {step}"),
            Self::Announce(ip) => write!(f, "announce {ip} (route replace)"),
            Self::Withdraw(ip) => write!(f, "withdraw {ip} (route del)"),
            Self::AnnouncedDump => f.write_str("announced routes dump"),
            Self::AddressAdd { ifindex, ip } => write!(f, "address add {ip} on ifindex {ifindex}"),
            Self::AddressDelete { ifindex, ip } => {
                write!(f, "address delete {ip} on ifindex {ifindex}")
            }
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
    #[must_use]
    pub fn kernel_errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}
