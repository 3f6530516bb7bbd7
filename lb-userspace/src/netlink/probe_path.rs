//! The probe path of `--probe-via tunnel` (`lb_common::encap::probe`), set up by the agent as
//! `ip` would:
//!
//! ```text
//! ip link add lbprobe0 type dummy          # or ifb, where the kernel has no dummy
//! ip link set lbprobe0 mtu 1280 up
//! ip rule add fwmark 0x4c400000/0xfffc0000 lookup 19522 pref 19522     # and ip -6 rule
//! ip route replace default dev lbprobe0 table 19522                     # and ip -6 route
//! ```
//!
//! A probe socket's mark sends its packets by the table's route to the probe device, which
//! answers no ARP (so the kernel resolves no neighbour for the VIP) and drops whatever its tc
//! program does not take. Every step is idempotent: a restarted agent finds them in place.
//! A plain stop removes them (`ip rule del …`, `ip link del lbprobe0`); a stop with
//! `--keep-attached` leaves them for the next agent.

use lb_common::encap::probe;
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    route::{RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType},
    rule::{RuleAction, RuleAttribute, RuleMessage},
};

use super::{Netlink, NetlinkError, Request};

/// The kernel's index of interface `name`, if there is one.
fn ifindex_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name; the call reads nothing else.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The probes' fwmark rule of `family`: `fwmark MARK_TAG/MARK_MASK lookup TABLE pref
/// RULE_PRIORITY`.
fn rule(family: AddressFamily) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = family;
    m.header.action = RuleAction::ToTable;
    m.attributes.extend([
        RuleAttribute::FwMark(probe::MARK_TAG),
        RuleAttribute::FwMask(probe::MARK_MASK),
        RuleAttribute::Priority(probe::RULE_PRIORITY),
        RuleAttribute::Table(probe::TABLE),
    ]);
    m
}

impl Netlink {
    /// Sets up the probe path (see the module's text) and gives the probe device's index.
    ///
    /// # Errors
    /// The kernel refuses a step (no dummy nor ifb device type, not permitted).
    pub fn probe_path_setup(&mut self) -> Result<u32, NetlinkError> {
        let ifindex = if let Some(i) = ifindex_of(probe::DEVICE) {
            i
        } else {
            if let Err(e) = self.link_add(InfoKind::Dummy) {
                // EOPNOTSUPP: this kernel has no dummy driver; ifb also drops what it is given
                // and answers no ARP.
                if e.kernel_errno() != Some(libc::EOPNOTSUPP) {
                    return Err(e);
                }
                self.link_add(InfoKind::Ifb)?;
            }
            ifindex_of(probe::DEVICE).ok_or(NetlinkError::Unexpected {
                request: Request::ProbePath("link add"),
                reason: "the created device has no index",
            })?
        };
        let mut m = LinkMessage::default();
        m.header.index = ifindex;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::Mtu(probe::DEVICE_MTU));
        self.exchange(
            Request::ProbePath("link set up"),
            RouteNetlinkMessage::SetLink(m),
            NLM_F_REQUEST | NLM_F_ACK,
            |_| {},
        )?;
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            self.rule_add(family)?;
            self.default_route(family, ifindex)?;
        }
        Ok(ifindex)
    }

    /// Removes the probe path (a plain stop's cleanup): the fwmark rules, then the device,
    /// whose going takes its table's routes with it. What is already gone is no error.
    ///
    /// # Errors
    /// The kernel refuses a removal for another reason (not permitted).
    pub fn probe_path_teardown(&mut self) -> Result<(), NetlinkError> {
        let gone = |e: &NetlinkError| {
            matches!(
                e.kernel_errno(),
                Some(libc::ENOENT | libc::ENODEV | libc::ESRCH)
            )
        };
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            match self.exchange(
                Request::ProbePath("rule del"),
                RouteNetlinkMessage::DelRule(rule(family)),
                NLM_F_REQUEST | NLM_F_ACK,
                |_| {},
            ) {
                Err(e) if !gone(&e) => return Err(e),
                _ => {}
            }
        }
        let Some(ifindex) = ifindex_of(probe::DEVICE) else {
            return Ok(());
        };
        let mut m = LinkMessage::default();
        m.header.index = ifindex;
        match self.exchange(
            Request::ProbePath("link del"),
            RouteNetlinkMessage::DelLink(m),
            NLM_F_REQUEST | NLM_F_ACK,
            |_| {},
        ) {
            Err(e) if !gone(&e) => Err(e),
            _ => Ok(()),
        }
    }

    fn link_add(&mut self, kind: InfoKind) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.attributes
            .push(LinkAttribute::IfName(probe::DEVICE.to_owned()));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(kind)]));
        match self.exchange(
            Request::ProbePath("link add"),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            |_| {},
        ) {
            Err(e) if e.kernel_errno() != Some(libc::EEXIST) => Err(e),
            _ => Ok(()),
        }
    }

    /// The fwmark rule, once: `NLM_F_EXCL` makes a second add fail with `EEXIST` instead of
    /// adding a duplicate (rules have no replace).
    fn rule_add(&mut self, family: AddressFamily) -> Result<(), NetlinkError> {
        let m = rule(family);
        match self.exchange(
            Request::ProbePath("rule add"),
            RouteNetlinkMessage::NewRule(m),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            |_| {},
        ) {
            Err(e) if e.kernel_errno() != Some(libc::EEXIST) => Err(e),
            _ => Ok(()),
        }
    }

    fn default_route(&mut self, family: AddressFamily, ifindex: u32) -> Result<(), NetlinkError> {
        let mut m = RouteMessage::default();
        m.header = RouteHeader {
            address_family: family,
            // Past the header's 8 bits: the table goes in the attribute.
            table: RouteHeader::RT_TABLE_UNSPEC,
            protocol: RouteProtocol::Static,
            scope: if family == AddressFamily::Inet {
                RouteScope::Link
            } else {
                RouteScope::Universe
            },
            kind: RouteType::Unicast,
            ..m.header
        };
        m.attributes.extend([
            RouteAttribute::Oif(ifindex),
            RouteAttribute::Table(probe::TABLE),
        ]);
        self.exchange(
            Request::ProbePath("route replace"),
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            |_| {},
        )?;
        Ok(())
    }
}
