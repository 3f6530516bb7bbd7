//! The next hop of an address (route → gateway or the address itself → neighbour MAC), and the
//! agent's [`NetlinkResolver`]: backends' and PIP instances' hops, and the client-facing routes.

use std::{collections::HashMap, net::IpAddr};

use lb_common::{
    addr::{self, Addr, V4_MAPPED_PREFIX_LEN},
    maps::NextHop,
};

use super::{Neighbour, Netlink, NetlinkError};
use crate::reconcile::{Hop, Resolution, ResolveJob, Resolver};

impl Netlink {
    /// The next hop for `dst`: the output interface, its MAC, the neighbour's MAC, and which
    /// neighbour that is (the gateway, or `dst` itself when directly connected).
    ///
    /// Looks up the route, then the neighbour entry of the gateway (or of `dst` itself) on the
    /// route's interface. If the entry is missing or unusable, asks the kernel to resolve it and
    /// returns `Ok(None)`; the neighbour change that follows brings the caller back. `Ok(None)`
    /// also means there is no usable route (see [`Netlink::route_get`]).
    ///
    /// A usable but `STALE` entry is returned and also handed to
    /// [`Netlink::resolve_neighbour`]: traffic forwarded by XDP never passes the kernel's
    /// neighbour code, so without this nudge the entry would stay `STALE` (its MAC never
    /// re-confirmed) until garbage collection drops it.
    ///
    /// # Errors
    /// An exchange fails, or the route's interface has no Ethernet address.
    pub fn next_hop(&mut self, dst: IpAddr) -> Result<Option<Hop>, NetlinkError> {
        let Some(route) = self.route_get(dst)? else {
            return Ok(None);
        };
        let via = route.gateway.unwrap_or(dst);
        let neighbour = self.neighbour(route.oif, via)?;
        let Some((dmac, state)) = neighbour
            .filter(Neighbour::is_valid)
            .and_then(|n| n.mac.map(|mac| (mac, n.state)))
        else {
            self.resolve_neighbour(route.oif, via)?;
            return Ok(None);
        };
        if state & libc::NUD_STALE != 0 {
            self.resolve_neighbour(route.oif, via)?;
        }
        let (smac, link_mtu) = self.link_info(route.oif)?;
        let smac = smac.ok_or(NetlinkError::NoLinkAddress { ifindex: route.oif })?;
        Ok(Some(Hop {
            nh: NextHop {
                ifindex: route.oif,
                smac,
                dmac,
            },
            via,
            // A route's own MTU (`ip route ... mtu N`, or a learned path MTU) is the one the
            // kernel itself would honour; it can only be smaller than the link's.
            mtu: match route.mtu {
                Some(m) if link_mtu != 0 => m.min(link_mtu),
                Some(m) => m,
                None => link_mtu,
            },
        }))
    }
}

/// The real [`Resolver`]: every answer from the kernel's own tables. For client-facing
/// destinations: every valid neighbour on an attached interface as a host entry, every gateway
/// route on one, and every connected subnet on one as an unresolved entry (the fast path then
/// asks the kernel FIB).
pub struct NetlinkResolver {
    nl: Netlink,
    /// Interfaces the program is attached to: client routes are taken from these.
    ifindexes: Vec<u32>,
}

impl NetlinkResolver {
    /// # Errors
    /// The netlink socket cannot be opened.
    pub fn new(ifindexes: Vec<u32>) -> Result<Self, NetlinkError> {
        Ok(Self {
            nl: Netlink::open()?,
            ifindexes,
        })
    }

    fn hop(&mut self, ip: IpAddr) -> Option<Hop> {
        match self.nl.next_hop(ip) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(%ip, error = %e, "next-hop lookup failed");
                None
            }
        }
    }
}

/// Map-form prefix length of an address family's prefix.
fn map_prefix_len(ip: IpAddr, len: u8) -> u32 {
    match ip {
        IpAddr::V4(_) => V4_MAPPED_PREFIX_LEN + u32::from(len),
        IpAddr::V6(_) => u32::from(len),
    }
}

impl Resolver for NetlinkResolver {
    fn resolve(&mut self, job: &ResolveJob) -> Resolution {
        Resolution {
            hops: job.addrs.iter().map(|ip| (*ip, self.hop(*ip))).collect(),
            routes: job.routes.then(|| self.client_routes()),
            locals: if job.routes {
                match self.nl.local_addrs() {
                    Ok(a) => Some(a.into_iter().map(addr::from_ip).collect()),
                    Err(e) => {
                        // Kept as they are: the next address or route change retries.
                        tracing::warn!(error = %e, "address dump failed");
                        None
                    }
                }
            } else {
                None
            },
        }
    }
}

impl NetlinkResolver {
    /// Client-facing next hops: (prefix length in map form, prefix, next hop).
    fn client_routes(&mut self) -> Vec<(u32, Addr, NextHop)> {
        let mut macs: HashMap<u32, Option<[u8; 6]>> = HashMap::new();
        let mut out = Vec::new();
        let neighbours = match self.nl.neighbours() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "neighbour dump failed");
                return out;
            }
        };
        let mut link_mac = |nl: &mut Netlink, idx: u32| {
            *macs
                .entry(idx)
                .or_insert_with(|| nl.link_mac(idx).ok().flatten())
        };
        let mut valid: HashMap<(u32, IpAddr), [u8; 6]> = HashMap::new();
        // Multicast "neighbours" (NOARP entries for ff02::/16) are not hosts to reply to.
        let hosts = neighbours
            .iter()
            .filter(|n| !n.ip.is_multicast() && self.ifindexes.contains(&n.ifindex));
        for n in hosts.filter(|n| n.is_valid()) {
            let (Some(dmac), Some(smac)) = (n.mac, link_mac(&mut self.nl, n.ifindex)) else {
                continue;
            };
            valid.insert((n.ifindex, n.ip), dmac);
            let len = map_prefix_len(n.ip, if n.ip.is_ipv4() { 32 } else { 128 });
            out.push((
                len,
                addr::from_ip(n.ip),
                NextHop {
                    ifindex: n.ifindex,
                    smac,
                    dmac,
                },
            ));
        }
        let routes = match self.nl.routes() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "route dump failed");
                return out;
            }
        };
        for r in routes {
            let Some(oif) = r.oif.filter(|o| self.ifindexes.contains(o)) else {
                continue;
            };
            let Some(gw) = r.gateway else {
                // A connected subnet: its hosts are reached directly, each with its own MAC. An
                // unresolved entry (ifindex 0) makes the fast path use the kernel FIB for hosts
                // whose neighbour entry is not learned yet, instead of falling through to a
                // shorter route (the default route) on another interface.
                out.push((
                    map_prefix_len(r.dst, r.prefix_len),
                    addr::from_ip(r.dst),
                    NextHop::default(),
                ));
                continue;
            };
            let Some(smac) = link_mac(&mut self.nl, oif) else {
                continue;
            };
            match valid.get(&(oif, gw)) {
                Some(dmac) => out.push((
                    map_prefix_len(r.dst, r.prefix_len),
                    addr::from_ip(r.dst),
                    NextHop {
                        ifindex: oif,
                        smac,
                        dmac: *dmac,
                    },
                )),
                None => {
                    // Ask the kernel to resolve the gateway; the next refresh picks it up.
                    if let Err(e) = self.nl.resolve_neighbour(oif, gw) {
                        tracing::debug!(%gw, error = %e, "neighbour resolution request failed");
                    }
                }
            }
        }
        // Both families: IPv4 entries go to `LB_ROUTES4`, IPv6 ones (link-local neighbours and
        // gateways included) to `LB_ROUTES6`. Multicast routes are no client's.
        out.retain(|(_, a, _)| !addr::to_ip(a).is_multicast());
        out
    }
}
