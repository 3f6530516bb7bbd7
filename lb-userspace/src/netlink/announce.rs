//! VIP announcements (`crate::announce`): one host route per announced VIP address in the
//! agent's own routing table, for a routing daemon to export over BGP, as `ip` would:
//!
//! ```text
//! ip route replace blackhole 203.0.113.10/32 table 19521 proto 76
//! ip route del blackhole 203.0.113.10/32 table 19521 proto 76
//! ```
//!
//! `blackhole`: the routes only say what to announce. No rule points at the table, so they
//! never carry a packet here (the XDP program takes the VIP's packets before routing does),
//! and a daemon exports them with itself as the next hop. The protocol number marks them as
//! the agent's, so that a restarted agent finds its predecessor's routes and nothing else.

use std::{collections::BTreeSet, net::IpAddr};

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
};

use super::{Netlink, NetlinkError, Request, family_of, route::route_address};

/// The routes' protocol number (`proto 76` in `ip route`): "L", unassigned in iproute2's
/// `rt_protos`.
pub const PROTO: u8 = 76;

fn message(table: u32, ip: IpAddr) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header = RouteHeader {
        address_family: family_of(ip),
        destination_prefix_length: if ip.is_ipv4() { 32 } else { 128 },
        // Past the header's 8 bits: the table goes in the attribute.
        table: RouteHeader::RT_TABLE_UNSPEC,
        protocol: RouteProtocol::Other(PROTO),
        scope: RouteScope::Universe,
        kind: RouteType::BlackHole,
        ..m.header
    };
    m.attributes.extend([
        RouteAttribute::Destination(RouteAddress::from(ip)),
        RouteAttribute::Table(table),
    ]);
    m
}

impl Netlink {
    /// Puts `ip`'s host route in `table` (replacing one that is there).
    ///
    /// # Errors
    /// The kernel refuses it (not permitted).
    pub fn announce(&mut self, table: u32, ip: IpAddr) -> Result<(), NetlinkError> {
        self.exchange(
            Request::Announce(ip),
            RouteNetlinkMessage::NewRoute(message(table, ip)),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            |_| {},
        )?;
        Ok(())
    }

    /// Removes `ip`'s host route from `table`; one already gone is no error.
    ///
    /// # Errors
    /// The kernel refuses it for another reason (not permitted).
    pub fn withdraw(&mut self, table: u32, ip: IpAddr) -> Result<(), NetlinkError> {
        match self.exchange(
            Request::Withdraw(ip),
            RouteNetlinkMessage::DelRoute(message(table, ip)),
            NLM_F_REQUEST | NLM_F_ACK,
            |_| {},
        ) {
            Err(e) if !matches!(e.kernel_errno(), Some(libc::ENOENT | libc::ESRCH)) => Err(e),
            _ => Ok(()),
        }
    }

    /// The host routes of protocol [`PROTO`] in `table`, both families: what an agent (this
    /// one, or one before it) announced.
    ///
    /// # Errors
    /// The dump fails.
    pub fn announced(&mut self, table: u32) -> Result<BTreeSet<IpAddr>, NetlinkError> {
        Ok(self
            .announced_anywhere()?
            .into_iter()
            .filter_map(|(t, ip)| (t == table).then_some(ip))
            .collect())
    }

    /// The host routes of protocol [`PROTO`] in every table, as (table, address): also those
    /// an agent left in a table it was configured with before.
    ///
    /// # Errors
    /// The dump fails.
    pub fn announced_anywhere(&mut self) -> Result<BTreeSet<(u32, IpAddr)>, NetlinkError> {
        let mut all = BTreeSet::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = RouteMessage::default();
            m.header.address_family = family;
            all.extend(self.dump(
                Request::AnnouncedDump,
                &RouteNetlinkMessage::GetRoute(m),
                |reply, out| {
                    if let RouteNetlinkMessage::NewRoute(r) = reply
                        && let Some(route) = ours(&r)
                    {
                        out.push(route);
                    }
                },
            )?);
        }
        Ok(all)
    }
}

/// `r`'s table and address if it is one of ours: a host route of protocol [`PROTO`].
fn ours(r: &RouteMessage) -> Option<(u32, IpAddr)> {
    if r.header.protocol != RouteProtocol::Other(PROTO) {
        return None;
    }
    let mut t = u32::from(r.header.table);
    let mut dst = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(id) => t = *id,
            RouteAttribute::Destination(d) => dst = route_address(d),
            _ => {}
        }
    }
    let host = match dst? {
        IpAddr::V4(a) => (r.header.destination_prefix_length == 32).then_some(IpAddr::V4(a)),
        IpAddr::V6(a) => (r.header.destination_prefix_length == 128).then_some(IpAddr::V6(a)),
    };
    host.map(|ip| (t, ip))
}
