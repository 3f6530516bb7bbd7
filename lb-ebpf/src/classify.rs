//! Classify: what a parsed packet is to the load balancer, decided once, so the entry point is
//! one `match` over [`Class`]. The order matters, and is the whole policy of precedence:
//! * TCP/UDP: a service (client → VIP:port), else the reply of a tracked flow;
//! * not TCP/UDP (or not balanceable): an ICMP error about a tracked flow, from a backend's
//!   side (before a PIP: conntrack is about TCP/UDP flows, and the error belongs to one);
//! * then for both: a PIP (every protocol; after VIP flows, since a DIP can also be a VIP's
//!   backend), then anything else to a VIP (ICMP to it, or a counted drop), else not ours.

use lb_common::{
    addr::v4_mapped,
    flow::proto,
    maps::{CONN_HAIRPIN_REV, ConnEntry, PipEntry, ServiceInfo, VipInfo},
    verdict::DropReason,
};

use crate::{conntrack, icmp, parse::Packet, pip, select};

/// What a packet is.
pub enum Class {
    /// Client → VIP:port of a service.
    Service(ServiceInfo),
    /// Backend → client: the reply of a tracked flow (its reverse entry).
    Reply(ConnEntry),
    /// The reply of a hairpin flow (the hairpin program translates it).
    HairpinReply,
    /// An ICMP error from a backend's side about a tracked flow (the flow's reverse entry).
    IcmpFromBackend(ConnEntry),
    /// To or from an instance-level public IP (`true`: to it).
    Pip(PipEntry, bool),
    /// ICMP to a VIP: an echo request or an error.
    IcmpToVip(VipInfo),
    /// To a VIP, but nothing there serves it.
    Unservable(DropReason),
    /// None of ours: the kernel's.
    NotOurs,
}

#[inline(always)]
pub fn classify(ctx: &aya_ebpf::programs::XdpContext, pkt: &Packet) -> Class {
    // SAFETY: `pkt.ip` was bounds-checked by the parser.
    let (dst, proto_) = unsafe { ((*pkt.ip).dst, (*pkt.ip).proto) };
    let is_icmp = proto_ == proto::ICMP && pkt.problem == Some(DropReason::Proto);
    match &pkt.l4 {
        Some((flow, _)) => {
            if let Some(svc) = select::service(flow) {
                return Class::Service(svc);
            }
            if let Some(ct) = conntrack::reply(flow) {
                return if ct.kind == CONN_HAIRPIN_REV {
                    Class::HairpinReply
                } else {
                    Class::Reply(ct)
                };
            }
        }
        None => {
            if is_icmp && let Some(ct) = icmp::tracked_error_from_backend(ctx, pkt) {
                return Class::IcmpFromBackend(ct);
            }
        }
    }
    if let Some((e, inbound)) = pip::lookup(pkt) {
        return Class::Pip(e, inbound);
    }
    let Some(vip) = select::vip(v4_mapped(dst)) else {
        return Class::NotOurs;
    };
    match (&pkt.l4, is_icmp) {
        (Some(_), _) => Class::Unservable(DropReason::NoService),
        (None, true) => Class::IcmpToVip(vip),
        (None, false) => Class::Unservable(pkt.problem.unwrap_or(DropReason::Malformed)),
    }
}
