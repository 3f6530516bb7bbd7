//! Routes: the kernel's decision for one destination, and the main table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::NLM_F_REQUEST;
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
        RouteType, RouteVia,
    },
};

use super::{Netlink, NetlinkError, Request, family_of};

/// The kernel's routing decision for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteInfo {
    /// Output interface.
    pub oif: u32,
    /// Gateway; `None` when the destination is directly connected.
    pub gateway: Option<IpAddr>,
    /// Preferred source address, if the kernel picked one.
    pub prefsrc: Option<IpAddr>,
    /// The route's own MTU (`RTAX_MTU`: `ip route ... mtu N`, or a learned path MTU), if it
    /// has one; otherwise the output link's MTU applies.
    pub mtu: Option<u32>,
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

impl Netlink {
    /// Like `ip route get DST`: the kernel's choice of output interface and
    /// gateway (`None` = directly connected).
    ///
    /// Returns `Ok(None)` when the kernel has no usable unicast route: no
    /// route (`ENETUNREACH`), `unreachable` (`EHOSTUNREACH`), `prohibit`
    /// (`EACCES`) and `blackhole` (`EINVAL`) routes, and destinations that are
    /// local, broadcast or multicast (they have no next hop to forward to).
    ///
    /// # Errors
    /// An exchange with the kernel fails ([`NetlinkError`]).
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
        let mut mtu = None;
        for attribute in &route.attributes {
            match attribute {
                RouteAttribute::Oif(index) => oif = Some(*index),
                RouteAttribute::Gateway(address) => gateway = route_address(address),
                RouteAttribute::Via(via) => gateway = via_address(via),
                RouteAttribute::PrefSource(address) => prefsrc = route_address(address),
                RouteAttribute::Metrics(metrics) => {
                    mtu = metrics.iter().find_map(|m| match m {
                        RouteMetric::Mtu(v) if *v != 0 => Some(*v),
                        _ => None,
                    });
                }
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
            mtu,
        }))
    }

    /// All unicast routes of the main table (`RT_TABLE_MAIN`), IPv4 then
    /// IPv6.
    ///
    /// Routes without a next hop (`blackhole`, `unreachable`, `prohibit`,
    /// `throw`) are left out, and a multipath route yields one [`Route`] per
    /// next hop. Dump entries the decoder cannot parse are skipped rather than
    /// failing the whole dump.
    ///
    /// # Errors
    /// An exchange with the kernel fails ([`NetlinkError`]).
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
                &RouteNetlinkMessage::GetRoute(message),
                |message, out| {
                    if let RouteNetlinkMessage::NewRoute(route) = message {
                        push_main_routes(&route, out);
                    }
                },
            )?);
        }
        Ok(routes)
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

pub(super) fn route_address(address: &RouteAddress) -> Option<IpAddr> {
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

fn host_prefix_len(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}
