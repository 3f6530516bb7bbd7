//! Next hops from the kernel's own tables, through netlink: for each backend (route → gateway
//! or the backend itself → neighbour MAC) and for client-facing destinations: every valid
//! neighbour on an attached interface as a host entry, every gateway route on one, and every
//! connected subnet on one as an unresolved entry (the fast path then asks the kernel FIB).

use std::{collections::HashMap, net::IpAddr};

use lb_common::{
    addr::{self, Addr, V4_MAPPED_PREFIX_LEN},
    maps::NextHop,
};

use crate::{netlink::Netlink, reconcile::Resolver};

/// The real [`Resolver`].
pub struct NetlinkResolver {
    nl: Netlink,
    /// Interfaces the program is attached to: client routes are taken from these.
    ifindexes: Vec<u32>,
}

impl NetlinkResolver {
    /// # Errors
    /// The netlink socket cannot be opened.
    pub fn new(ifindexes: Vec<u32>) -> Result<Self, crate::netlink::NetlinkError> {
        Ok(Self {
            nl: Netlink::open()?,
            ifindexes,
        })
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
    fn next_hop(&mut self, ip: IpAddr) -> Option<NextHop> {
        match self.nl.next_hop(ip) {
            Ok(Some((ifindex, smac, dmac))) => Some(NextHop {
                ifindex,
                smac,
                dmac,
            }),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%ip, error = %e, "next-hop lookup failed");
                None
            }
        }
    }

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
        out
    }
}
