//! Classify: what a parsed packet is to the load balancer, decided once, so the entry point is
//! one `match` over [`Class`]. The order matters, and is the whole policy of precedence:
//! * TCP/UDP: a service (client → VIP:port), else the reply of a tracked flow (found through
//!   the source's reverse-service entry; one refused as a reply is `NotReply` unless a PIP
//!   or VIP claims it);
//! * not TCP/UDP (or not balanceable): an ICMP error about a tracked flow, from a backend's
//!   side (before a PIP: conntrack is about TCP/UDP flows, and the error belongs to one);
//! * then for both: a PIP (every protocol; after VIP flows, since a DIP can also be a VIP's
//!   backend), then outbound NAT (a covered backend's flow out, or one returning to a
//!   frontend address), then an HA-ports VIP's catch-all (TCP/UDP to a port no exact service has),
//!   then anything else to a VIP (ICMP to it, or a counted drop), else not ours.
//!
//! A TCP/UDP packet first meets the "maybe ours" filter (`LB_OURS4`): only a destination whose
//! bit is set can be a VIP or a PIP, only a source whose bit is set a backend or a PIP's
//! instance, so traffic that is none of ours passes after two array reads. Other protocols
//! skip the filter: an ICMP error about a flow may come from a router on the backends' side.

use lb_common::{
    flow::proto,
    maps::{PipEntry4, ServiceInfo, ServiceKey4, VIP_F_HA_PORTS, VipInfo, ours_bit},
    outbound::{OUT_F_STATELESS, OutboundEntry4},
    verdict::{DropReason, PassReason},
};

use crate::{
    conntrack::{self, FromBackend, Reply},
    icmp,
    maps::LB_OURS4,
    outbound,
    parse::Packet,
    pip, select,
};

/// Whether an address may be one the fast path looks up (its filter bit is set).
#[inline(always)]
fn maybe_ours(a: [u8; 4]) -> bool {
    let (w, m) = ours_bit(a);
    LB_OURS4.get(w).is_some_and(|v| v & m != 0)
}

/// What a packet is.
pub enum Class {
    /// Client → VIP:port of a service.
    Service(ServiceInfo),
    /// Backend → client: the reply of a tracked flow.
    Reply(Reply),
    /// The reply of a hairpin flow (the hairpin program translates it).
    HairpinReply,
    /// An ICMP error from a backend's side about a tracked flow.
    IcmpFromBackend(Reply),
    /// To or from an instance-level public IP (`true`: to it).
    Pip(PipEntry4, bool),
    /// A covered backend's flow to outside its rule's inside prefixes, or a packet to a
    /// frontend address of an outbound rule (the outbound program translates both).
    Outbound,
    /// As `Outbound`, for a stateless rule: no flow state, so translated here.
    OutboundStateless(OutboundEntry4),
    /// To a stateless rule's frontend port: the block's owner, if a block holds the port.
    OutboundStatelessReturn(Option<[u8; 4]>),
    /// ICMP to a VIP: an echo request or an error.
    IcmpToVip(VipInfo),
    /// To a VIP, but nothing there serves it.
    Unservable(DropReason),
    /// None of ours: the kernel's (`NotOurs`, or `NotReply` for a packet from a backend
    /// endpoint that its flow refused as a reply).
    NotOurs(PassReason),
}

#[inline(always)]
pub fn classify(ctx: &aya_ebpf::programs::XdpContext, pkt: &Packet) -> Class {
    // SAFETY: `pkt.ip` was bounds-checked by the parser.
    let (dst, proto_) = unsafe { ((*pkt.ip).dst, (*pkt.ip).proto) };
    let is_icmp = proto_ == proto::ICMP && pkt.problem == Some(DropReason::Proto);
    let mut not_ours = PassReason::NotOurs;
    // For TCP/UDP: whether the destination may be a VIP or PIP, the source a backend or a
    // PIP's instance. Everything else is looked up as it comes.
    let (to_us, from_us) = if let Some((flow, _)) = pkt.flow() {
        let (to_us, from_us) = (maybe_ours(flow.dst), maybe_ours(flow.src));
        if !to_us && !from_us {
            return Class::NotOurs(not_ours);
        }
        if to_us && let Some(svc) = select::service(flow) {
            return Class::Service(svc);
        }
        if from_us {
            match conntrack::from_backend(flow, pkt.flags()) {
                FromBackend::Reply(r) => return Class::Reply(r),
                FromBackend::Hairpin => return Class::HairpinReply,
                FromBackend::Refused => not_ours = PassReason::NotReply,
                FromBackend::None => {}
            }
        }
        (to_us, from_us)
    } else {
        if is_icmp && let Some(ct) = icmp::tracked_error_from_backend(ctx, pkt) {
            return Class::IcmpFromBackend(ct);
        }
        // An error about an outbound flow, either way: before PIPs and VIPs, as the one above
        // (a frontend is often a VIP).
        if is_icmp && icmp::about_outbound(ctx, pkt) {
            return Class::Outbound;
        }
        (true, true)
    };
    if let Some((e, inbound)) = pip::lookup(pkt, to_us, from_us) {
        return Class::Pip(e, inbound);
    }
    // Outbound NAT, after PIPs (an instance with a PIP leaves through it, as in the
    // reference) and before the VIP's HA-ports catch-all (a frontend's blocks hold no service
    // port). The inside check is here, so that traffic to the inside pays no tail call.
    // A packet its flow refused as a reply (`NotReply`) stays the kernel's: it answers a
    // connection that did not go through us, and must not leave as an outbound flow.
    if let Some((flow, _)) = pkt.flow()
        && not_ours == PassReason::NotOurs
    {
        if from_us && let Some(e) = outbound::entry(flow.src).filter(|e| e.covers(flow.proto)) {
            if outbound::inside(e.rule, flow.dst) {
                return Class::NotOurs(PassReason::OutboundInside);
            }
            if e.flags & OUT_F_STATELESS != 0 {
                return Class::OutboundStateless(e);
            }
            return Class::Outbound;
        }
        if to_us && let Some(f) = outbound::front(flow.dst) {
            if f.stateless() {
                return Class::OutboundStatelessReturn(outbound::block_owner(
                    flow.dst, flow.dport, &f,
                ));
            }
            return Class::Outbound;
        }
    }
    // Only a destination that may be ours can be a VIP: no lookup for the rest.
    let Some(vip) = to_us.then(|| select::vip(dst)).flatten() else {
        return Class::NotOurs(not_ours);
    };
    match (pkt.flow(), is_icmp) {
        // HA ports: a port no exact service has is the catch-all's, (VIP, 0, protocol). After
        // the PIP lookup (no PIP is a VIP), so only packets to such a VIP pay for it.
        (Some((flow, _)), _) if vip.flags & VIP_F_HA_PORTS != 0 => {
            match select::service_at(ServiceKey4::of(flow.dst, [0; 2], flow.proto)) {
                Some(svc) => Class::Service(svc),
                None => Class::Unservable(DropReason::NoService),
            }
        }
        (Some(_), _) => Class::Unservable(DropReason::NoService),
        (None, true) => Class::IcmpToVip(vip),
        (None, false) => Class::Unservable(pkt.problem.unwrap_or(DropReason::Malformed)),
    }
}
