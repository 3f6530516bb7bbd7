//! What an interface is: its kind, and for a veth its peer (`RTM_GETLINK`), which may live in
//! another network namespace (`IFLA_LINK_NETNSID`, read through `IFLA_TARGET_NETNSID`), and
//! the namespace that holds it (`RTM_GETNSID`).

use netlink_packet_core::NLM_F_REQUEST;
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached},
    nsid::{NsidAttribute, NsidMessage},
};

use super::{NetlinkError, Request, socket::Netlink};

/// One interface, as far as the veth checks need it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkFacts {
    pub name: String,
    /// The link is a veth.
    pub veth: bool,
    /// An XDP program is attached (any mode).
    pub xdp: bool,
    /// The peer's (or lower device's) ifindex, `IFLA_LINK`.
    pub link: Option<u32>,
    /// The namespace id of the peer's namespace, as this namespace numbers it; `None`: the
    /// peer is in this namespace.
    pub link_netnsid: Option<i32>,
}

impl Netlink {
    /// The facts of interface `ifindex`, in this namespace or, with `netnsid`, in the
    /// namespace this one knows by that id.
    ///
    /// # Errors
    /// An exchange with the kernel fails ([`NetlinkError`]), or no such interface.
    pub fn link_facts(
        &mut self,
        ifindex: u32,
        netnsid: Option<i32>,
    ) -> Result<LinkFacts, NetlinkError> {
        Ok(facts_of(&self.link(ifindex, netnsid)?))
    }

    /// `RTM_GETLINK` of one interface (in the namespace this one knows as `netnsid`, if set).
    ///
    /// # Errors
    /// An exchange with the kernel fails, or the reply holds no link.
    pub(super) fn link(
        &mut self,
        ifindex: u32,
        netnsid: Option<i32>,
    ) -> Result<LinkMessage, NetlinkError> {
        let request = Request::LinkGet(ifindex);
        let mut message = LinkMessage::default();
        message.header.index = ifindex;
        if let Some(id) = netnsid {
            // IFLA_IF_NETNSID is IFLA_TARGET_NETNSID: look the index up over there.
            message.attributes.push(LinkAttribute::IfNetnsId(id));
        }
        let mut reply = None;
        self.exchange(
            request,
            RouteNetlinkMessage::GetLink(message),
            NLM_F_REQUEST,
            |m| {
                if let RouteNetlinkMessage::NewLink(link) = m {
                    reply.get_or_insert(link);
                }
            },
        )?;
        reply.ok_or(NetlinkError::Unexpected {
            request,
            reason: "no RTM_NEWLINK in reply",
        })
    }

    /// The id this namespace gives the namespace of the open file `fd` (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`); `None` if it has none.
    ///
    /// # Errors
    /// An exchange with the kernel fails.
    pub fn nsid_of_fd(&mut self, fd: u32) -> Result<Option<i32>, NetlinkError> {
        let mut message = NsidMessage::default();
        message.header.family = AddressFamily::Unspec;
        message.attributes.push(NsidAttribute::Fd(fd));
        let mut id = None;
        self.exchange(
            Request::NsidGet,
            RouteNetlinkMessage::GetNsId(message),
            NLM_F_REQUEST,
            |m| {
                if let RouteNetlinkMessage::NewNsId(n) = m {
                    id = n.attributes.iter().find_map(|a| match a {
                        NsidAttribute::Id(i) if *i >= 0 => Some(*i),
                        _ => None,
                    });
                }
            },
        )?;
        Ok(id)
    }
}

fn facts_of(link: &LinkMessage) -> LinkFacts {
    let mut f = LinkFacts::default();
    for a in &link.attributes {
        match a {
            LinkAttribute::IfName(n) => f.name.clone_from(n),
            LinkAttribute::LinkInfo(infos) => {
                f.veth = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            LinkAttribute::Xdp(x) => {
                f.xdp = x
                    .iter()
                    .any(|x| matches!(x, LinkXdp::Attached(a) if !matches!(a, XdpAttached::None)));
            }
            LinkAttribute::Link(i) => f.link = Some(*i),
            LinkAttribute::LinkNetNsId(i) if *i >= 0 => f.link_netnsid = Some(*i),
            _ => {}
        }
    }
    f
}
