//! The link layer: the ARP / NDP cache, interfaces' MACs, and asking the kernel to resolve a
//! neighbour.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::LinkAttribute,
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
};

use super::{Netlink, NetlinkError, Request, family_of};

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
    #[must_use]
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

impl Netlink {
    /// The host's own addresses of both families, on every interface (`IFA_LOCAL`, or
    /// `IFA_ADDRESS` where the kernel gives no local one, as for IPv6 on a non-point-to-point
    /// link).
    ///
    /// # Errors
    /// An exchange with the kernel fails ([`NetlinkError`]).
    pub fn local_addrs(&mut self) -> Result<Vec<IpAddr>, NetlinkError> {
        use netlink_packet_route::address::{AddressAttribute, AddressMessage};
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Unspec;
        self.dump(
            Request::AddressDump,
            &RouteNetlinkMessage::GetAddress(message),
            |message, out| {
                let RouteNetlinkMessage::NewAddress(a) = message else {
                    return;
                };
                let pick = |local: bool| {
                    a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Local(ip) if local => Some(*ip),
                        AddressAttribute::Address(ip) if !local => Some(*ip),
                        _ => None,
                    })
                };
                if let Some(ip) = pick(true).or_else(|| pick(false)) {
                    out.push(ip);
                }
            },
        )
    }

    /// The neighbour (ARP and NDP) tables, IPv4 then IPv6. Proxy entries are
    /// not included.
    ///
    /// # Errors
    /// An exchange with the kernel fails ([`NetlinkError`]).
    pub fn neighbours(&mut self) -> Result<Vec<Neighbour>, NetlinkError> {
        let mut neighbours = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut message = NeighbourMessage::default();
            message.header.family = family;
            neighbours.extend(self.dump(
                Request::NeighbourDump,
                &RouteNetlinkMessage::GetNeighbour(message),
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
    ///
    /// # Errors
    /// An exchange with the kernel fails ([`NetlinkError`]).
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
    ///
    /// # Errors
    /// An exchange with the kernel fails ([`NetlinkError`]).
    pub fn link_mac(&mut self, ifindex: u32) -> Result<Option<[u8; 6]>, NetlinkError> {
        Ok(self.link_info(ifindex)?.0)
    }

    /// A link's MAC address (as [`Self::link_mac`]) and MTU (`IFLA_MTU`; 0 if the kernel
    /// left it out), from one `RTM_GETLINK`.
    ///
    /// # Errors
    /// An exchange with the kernel fails ([`NetlinkError`]).
    pub fn link_info(&mut self, ifindex: u32) -> Result<(Option<[u8; 6]>, u32), NetlinkError> {
        let link = self.link(ifindex, None)?;
        let mut mac = None;
        let mut mtu = 0;
        for attribute in &link.attributes {
            match attribute {
                LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                LinkAttribute::Mtu(m) => mtu = *m,
                _ => {}
            }
        }
        Ok((mac, mtu))
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
    ///
    /// # Errors
    /// An exchange with the kernel fails ([`NetlinkError`]).
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
}

pub(super) fn neighbour_from_message(message: &NeighbourMessage) -> Option<Neighbour> {
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

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}
