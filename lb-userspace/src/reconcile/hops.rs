//! The next-hop book: what the last resolutions found for each backend and PIP instance
//! address, and which addresses a kernel change touches (so an event re-resolves only those).
//!
//! Resolution itself is blocking netlink, so it never runs on the writer: the reconciler asks
//! for a [`ResolveJob`], a task off the writer runs a [`Resolver`] on it, and the
//! [`Resolution`] comes back as an event.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use lb_common::{addr::Addr, maps::NextHop};

/// A resolved next hop and the neighbour whose MAC it carries (the gateway, or the address
/// itself when it is directly connected).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop {
    pub nh: NextHop,
    pub via: IpAddr,
    /// The MTU packets to this address leave with: the output link's, or the route's own if it
    /// is smaller. Encapsulating services answer "too big" against it.
    pub mtu: u32,
}

/// What to resolve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolveJob {
    pub addrs: BTreeSet<IpAddr>,
    /// Also rebuild the client-facing routes (neighbours and routes on attached interfaces)
    /// and the host's own addresses.
    pub routes: bool,
}

impl ResolveJob {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty() && !self.routes
    }

    /// Adds another job's addresses (one resolution for both).
    pub fn merge(&mut self, o: Self) {
        self.addrs.extend(o.addrs);
        self.routes |= o.routes;
    }
}

/// What a resolution found: each address's hop (`None`: unresolved for now), and the client
/// routes if they were asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    pub hops: Vec<(IpAddr, Option<Hop>)>,
    /// (prefix length in map form, prefix, next hop).
    pub routes: Option<Vec<(u32, Addr, NextHop)>>,
    /// The host's own IPv4 addresses (`LB_LOCAL4`), with the client routes.
    pub locals: Option<Vec<Addr>>,
}

/// Resolves next hops. The real one asks the kernel through netlink (blocking, so it runs on a
/// thread of its own); tests use fixed answers.
pub trait Resolver {
    fn resolve(&mut self, job: &ResolveJob) -> Resolution;
}

/// A change the kernel announced on the rtnetlink multicast groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetChange {
    /// A neighbour entry appeared, changed (state, MAC) or went.
    Neighbour { ifindex: u32, ip: IpAddr },
    /// An interface changed (MAC, up/down) or went.
    Link { ifindex: u32 },
    /// A route of the main table appeared, changed or went.
    Route { dst: IpAddr, len: u8 },
    /// An address was added to or removed from an interface.
    Address { ifindex: u32 },
    /// Messages were lost (the socket's buffer overran): anything may have changed.
    Overrun,
}

/// The hops found so far, by address.
#[derive(Clone, Debug, Default)]
pub struct Hops {
    known: HashMap<IpAddr, Option<Hop>>,
}

impl Hops {
    /// The next hop to write for `ip`: the one found, or unresolved (the fast path then uses
    /// the kernel FIB until the resolution comes in).
    #[must_use]
    pub fn next_hop(&self, ip: IpAddr) -> NextHop {
        self.known
            .get(&ip)
            .copied()
            .flatten()
            .map_or_else(NextHop::default, |h| h.nh)
    }

    /// [`Self::next_hop`] for a floating-IP `l2` backend, which must be a neighbour: a hop
    /// through a gateway is written unresolved, and the fast path's FIB fallback, which
    /// refuses a gateway too, drops its packets (`drop_no_next_hop`) rather than hand the
    /// gateway a packet addressed to the VIP.
    ///
    /// With the next hop comes the MTU of its link (0 while unresolved: the fast path's "too
    /// big" check then lets the packet go to the FIB fallback, whose own length check applies).
    #[must_use]
    pub fn next_hop_for(&self, ip: IpAddr, l2: bool) -> (NextHop, u32) {
        match self.known.get(&ip).copied().flatten() {
            Some(h) if !l2 || h.via == ip => (h.nh, h.mtu),
            _ => (NextHop::default(), 0),
        }
    }

    /// Whether `ip` has been resolved (successfully or not) at all.
    #[must_use]
    pub fn knows(&self, ip: IpAddr) -> bool {
        self.known.contains_key(&ip)
    }

    /// Takes in a resolution's hops.
    pub fn learn(&mut self, r: &Resolution) {
        for (ip, hop) in &r.hops {
            self.known.insert(*ip, *hop);
        }
    }

    /// Forgets addresses nothing uses any more.
    pub fn retain(&mut self, wanted: &BTreeSet<IpAddr>) {
        self.known.retain(|ip, _| wanted.contains(ip));
    }

    /// The addresses among `wanted` that `changes` may have moved, and whether the client routes
    /// need a rebuild:
    /// * a neighbour: the addresses whose hop goes through it on that interface;
    /// * an interface: the addresses whose hop leaves through it;
    /// * a route: the addresses inside its prefix;
    /// * an address change or an overrun: every address.
    ///
    /// Addresses not resolved yet are always included: the change may be what they waited for
    /// (a neighbour answering an ARP request, say). Every change rebuilds the client routes when
    /// it concerns an interface of `attached` (or could: routes, overruns).
    #[must_use]
    pub fn touched(
        &self,
        changes: &[NetChange],
        wanted: &BTreeSet<IpAddr>,
        attached: &[u32],
    ) -> ResolveJob {
        let mut job = ResolveJob::default();
        let hop = |ip: &IpAddr| self.known.get(ip).copied().flatten();
        for c in changes {
            let hit: Box<dyn Fn(&IpAddr) -> bool> = match *c {
                NetChange::Neighbour { ifindex, ip } => {
                    job.routes |= attached.contains(&ifindex);
                    Box::new(move |a| {
                        hop(a).is_some_and(|h| h.via == ip && h.nh.ifindex == ifindex)
                    })
                }
                NetChange::Link { ifindex } => {
                    job.routes |= attached.contains(&ifindex);
                    Box::new(move |a| hop(a).is_some_and(|h| h.nh.ifindex == ifindex))
                }
                NetChange::Route { dst, len } => {
                    job.routes = true;
                    Box::new(move |a| in_prefix(*a, dst, len))
                }
                NetChange::Address { .. } => {
                    // On any interface: the host's own addresses come with the routes.
                    job.routes = true;
                    Box::new(|_| true)
                }
                NetChange::Overrun => {
                    job.routes = true;
                    Box::new(|_| true)
                }
            };
            job.addrs
                .extend(wanted.iter().filter(|a| hop(a).is_none() || hit(a)));
        }
        job
    }
}

/// Whether `a` lies in `dst/len` (of the same family).
fn in_prefix(a: IpAddr, dst: IpAddr, len: u8) -> bool {
    match (a, dst) {
        (IpAddr::V4(a), IpAddr::V4(d)) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(a) & m == u32::from(d) & m
        }
        (IpAddr::V6(a), IpAddr::V6(d)) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(a) & m == u128::from(d) & m
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn hop(ifindex: u32, via: &str) -> Hop {
        Hop {
            nh: NextHop {
                ifindex,
                smac: [1; 6],
                dmac: [2; 6],
            },
            via: ip(via),
            mtu: 1500,
        }
    }

    /// A kernel change re-resolves only the addresses it can have moved, plus the unresolved.
    #[test]
    fn a_change_touches_only_what_goes_through_it() {
        let mut h = Hops::default();
        h.learn(&Resolution {
            hops: vec![
                (ip("192.0.2.11"), Some(hop(3, "192.0.2.11"))),
                (ip("192.0.2.12"), Some(hop(4, "192.0.2.12"))),
                (ip("198.51.100.7"), Some(hop(3, "192.0.2.254"))),
                (ip("192.0.2.13"), None),
            ],
            routes: None,
            locals: None,
        });
        let wanted: BTreeSet<IpAddr> = ["192.0.2.11", "192.0.2.12", "198.51.100.7", "192.0.2.13"]
            .map(ip)
            .into();
        let set = |v: &[&str]| v.iter().map(|s| ip(s)).collect::<BTreeSet<_>>();
        let neigh = h.touched(
            &[NetChange::Neighbour {
                ifindex: 3,
                ip: ip("192.0.2.254"),
            }],
            &wanted,
            &[3, 4],
        );
        assert_eq!(neigh.addrs, set(&["198.51.100.7", "192.0.2.13"]));
        assert!(neigh.routes, "a neighbour on an attached interface");
        let other = h.touched(
            &[NetChange::Neighbour {
                ifindex: 9,
                ip: ip("192.0.2.11"),
            }],
            &wanted,
            &[3, 4],
        );
        assert_eq!(
            other.addrs,
            set(&["192.0.2.13"]),
            "same address, other interface"
        );
        assert!(!other.routes);
        let link = h.touched(&[NetChange::Link { ifindex: 4 }], &wanted, &[3, 4]);
        assert_eq!(link.addrs, set(&["192.0.2.12", "192.0.2.13"]));
        let route = h.touched(
            &[NetChange::Route {
                dst: ip("198.51.100.0"),
                len: 24,
            }],
            &wanted,
            &[3, 4],
        );
        assert_eq!(route.addrs, set(&["198.51.100.7", "192.0.2.13"]));
        let all = h.touched(&[NetChange::Overrun], &wanted, &[3, 4]);
        assert_eq!(all.addrs, wanted);
        let default_route = h.touched(
            &[NetChange::Route {
                dst: ip("0.0.0.0"),
                len: 0,
            }],
            &wanted,
            &[],
        );
        assert_eq!(
            default_route.addrs, wanted,
            "a default route covers everything"
        );
    }
}
