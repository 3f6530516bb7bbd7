//! Adding and removing an interface address (`RTM_NEWADDR` / `RTM_DELADDR`): what
//! `lb backend setup --apply` does to put a VIP on loopback, as `ip addr replace` would.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage, AddressScope},
};

use super::{Netlink, NetlinkError, Request, family_of};

/// The message for `ip`/`prefix_len` on `ifindex`, global scope (as `ip addr add` gives a
/// non-loopback address, so that it can be a reply's source).
fn message(ifindex: u32, ip: IpAddr, prefix_len: u8) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family_of(ip);
    m.header.prefix_len = prefix_len;
    m.header.scope = AddressScope::Universe;
    m.header.index = ifindex;
    m.attributes.push(AddressAttribute::Local(ip));
    m.attributes.push(AddressAttribute::Address(ip));
    m
}

impl Netlink {
    /// Puts `ip/prefix_len` on `ifindex`, or leaves it as it is if it is there already
    /// (`ip addr replace`).
    ///
    /// # Errors
    /// The kernel refuses (no such interface, not permitted).
    pub fn address_replace(
        &mut self,
        ifindex: u32,
        ip: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        self.exchange(
            Request::AddressAdd { ifindex, ip },
            RouteNetlinkMessage::NewAddress(message(ifindex, ip, prefix_len)),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            |_| {},
        )?;
        Ok(())
    }

    /// Removes `ip/prefix_len` from `ifindex`; `Ok(false)` if it was not there.
    ///
    /// # Errors
    /// The kernel refuses for another reason.
    pub fn address_delete(
        &mut self,
        ifindex: u32,
        ip: IpAddr,
        prefix_len: u8,
    ) -> Result<bool, NetlinkError> {
        match self.exchange(
            Request::AddressDelete { ifindex, ip },
            RouteNetlinkMessage::DelAddress(message(ifindex, ip, prefix_len)),
            NLM_F_REQUEST | NLM_F_ACK,
            |_| {},
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.kernel_errno() == Some(libc::EADDRNOTAVAIL) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
