//! The XDP load balancer: parse → classify → admit → select → translate → forward.
//!
//! IPv6 frames take the same stages in their own family's modules (`six.rs`: `parse6.rs`,
//! `conntrack6.rs`, `xlate6.rs`), over the IPv6 maps.
//!
//! Each stage is a module with one job: `parse.rs` (bounds-checked headers), `classify.rs` (what
//! the packet is to us, as one [`classify::Class`]), `policy.rs` (admission of new flows),
//! `select.rs` with `conntrack.rs` (which backend), `xlate.rs` (NAT, checksums, next hop, out).
//! Every stage ends in a [`verdict::Verdict`], whose reason's type is its action's class, and
//! [`lb_xdp`] counts each packet under exactly one reason, in one place. The hash, slot rule,
//! checksum arithmetic and reasons come from `lb-common`, where host tests cover them.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod classify;
mod conntrack;
mod conntrack6;
mod encap;
mod hairpin;
mod hairpin6;
mod icmp;
mod icmp6;
mod maps;
mod outbound;
mod parse;
mod parse6;
mod pip;
mod pip6;
mod policy;
mod probe;
mod select;
mod six;
mod stats;
mod trace;
mod verdict;
mod xlate;
mod xlate6;
mod xmit;

use aya_ebpf::{macros::xdp, programs::XdpContext};
use lb_common::{
    conn,
    flow::{FlowKey4, proto},
    maps::ServiceInfo,
    verdict::{DropReason, SendReason},
};

use crate::{
    classify::Class,
    conntrack::Reply,
    parse::{L4, Packet},
    select::Pick,
    stats::Dir,
    verdict::Verdict,
};

/// One program's body `$body` (an expression of type [`Verdict`]) run as every entry point
/// runs it: the packet traced as it arrived (when `lb trace` samples it), the verdict counted
/// under its one reason, traced as it leaves, and the action returned.
///
/// verifier: a macro, not a function taking the body: a tail call is only allowed in a function
/// that returns `int`, and a body passed as a closure was emitted as a BPF function of its own
/// returning the verdict ("tail_call is only allowed in functions that return 'int'").
macro_rules! counted {
    // The IPv6 programs: traced through `lb_trace6` by tail call (see `trace.rs`), since the
    // exit hook's frame would join theirs (verifier: 512 bytes for the whole chain). If the
    // tail call is made, it returns the action; otherwise this does.
    (six, $ctx:expr, $body:expr) => {{
        let traced = trace::enter6($ctx);
        let v: Verdict = $body;
        // verifier: the reason once, before the branch. Matched again inside it, LLVM moved
        // a copy of a register only the `Sent` arm writes above the match, and the verifier
        // refuses reading it on the other arms ("R6 !read_ok").
        let reason = v.reason();
        stats::count_reason(reason);
        let action = v.action();
        if traced {
            trace::exit6($ctx, reason as u32, action);
        }
        action
    }};
    ($ctx:expr, $body:expr) => {{
        let traced = trace::enter($ctx);
        let v: Verdict = $body;
        stats::count_reason(v.reason());
        let action = v.action();
        if traced {
            trace::exit($ctx, v.reason() as u32, action);
        }
        action
    }};
}

#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] entry point takes its context by value"
)]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    // One look at the ethertype (past one 802.1Q tag), then each family's path as a function
    // of its own. A frame too short for Ethernet is IPv4's to pass (`pass_short`).
    if parse::l2(&ctx).is_ok_and(|l2| l2.ether_type == lb_common::hdr::ETH_P_IPV6) {
        return family6(XdpContext::new(ctx.ctx));
    }
    family4(XdpContext::new(ctx.ctx))
}

/// Every non-IPv6 frame: the IPv4 fast path, counted and traced.
///
/// verifier: this and [`family6`] are BPF functions (`inline(never)`), each with its own frame
/// under `lb_xdp`'s empty one, so the deeper of the two chains counts against the 512 bytes,
/// not their sum (inlined together they needed 528). They used to be two programs, the IPv6
/// one entered by tail call; a call costs less (on the bench machine of 2026-12-02, 10 to
/// 15 ns of an IPv6 packet's ~100 above the floor). A tail call from inside a function is
/// allowed while the frames above it take less than 256 bytes; `lb_xdp`'s takes none.
#[inline(never)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "one register, as the #[xdp] body takes it"
)]
fn family4(ctx: XdpContext) -> u32 {
    // A hairpin or outbound flow leaves by tail call inside and never comes back here:
    // `lb_hairpin` or `lb_outbound` counts and traces it.
    counted!(&ctx, try_lb(&ctx))
}

/// Every IPv6 frame (see `six.rs`), as [`family4`].
#[inline(never)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "one register, as the #[xdp] body takes it"
)]
fn family6(ctx: XdpContext) -> u32 {
    counted!(six, &ctx, six::run(&ctx))
}

/// Hairpin SNAT flows, entered from [`lb_xdp`] by tail call (see `hairpin.rs`).
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] entry point takes its context by value"
)]
pub fn lb_hairpin(ctx: XdpContext) -> u32 {
    // The packet is as it arrived: nothing is rewritten before the tail call.
    counted!(&ctx, hairpin::run(&ctx))
}

/// Outbound NAT flows, entered from [`lb_xdp`] by tail call (see `outbound.rs`).
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] entry point takes its context by value"
)]
pub fn lb_outbound(ctx: XdpContext) -> u32 {
    // The packet is as it arrived: nothing is rewritten before the tail call.
    counted!(&ctx, outbound::run(&ctx))
}

/// Floating-IP forward packets, entered from [`lb_xdp`] by tail call (see `encap.rs`).
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] entry point takes its context by value"
)]
pub fn lb_encap(ctx: XdpContext) -> u32 {
    counted!(&ctx, encap::run4(&ctx))
}

/// IPv6 floating-IP forward packets, entered from [`family6`] by tail call (see `encap.rs`).
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] entry point takes its context by value"
)]
pub fn lb_encap6(ctx: XdpContext) -> u32 {
    counted!(six, &ctx, encap::run6(&ctx))
}

/// IPv6 hairpin SNAT flows, entered from [`family6`] by tail call (see `hairpin6.rs`).
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] entry point takes its context by value"
)]
pub fn lb_hairpin6(ctx: XdpContext) -> u32 {
    // The packet is as it arrived: nothing is rewritten before the tail call.
    counted!(six, &ctx, hairpin6::run(&ctx))
}

/// `lb trace`'s record of an IPv6 packet, entered by tail call from the IPv6 programs' exit
/// when tracing is on (see `trace.rs`); returns the action they decided.
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] entry point takes its context by value"
)]
pub fn lb_trace6(ctx: XdpContext) -> u32 {
    trace::run6(&ctx)
}

/// ICMPv6 errors, entered from [`family6`] by tail call (see `icmp6.rs`).
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] entry point takes its context by value"
)]
pub fn lb_icmp6(ctx: XdpContext) -> u32 {
    counted!(six, &ctx, icmp6::run(&ctx))
}

/// IPv6 PIP traffic, entered from [`family6`] and [`lb_icmp6`] by tail call (see `pip6.rs`).
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] entry point takes its context by value"
)]
pub fn lb_pip6(ctx: XdpContext) -> u32 {
    counted!(six, &ctx, pip6::run(&ctx))
}

#[inline(always)]
fn try_lb(ctx: &XdpContext) -> Verdict {
    let l2 = match parse::l2(ctx) {
        Ok(l2) => l2,
        Err(pass) => return Verdict::Pass(pass),
    };
    let pkt = match parse::packet(ctx, &l2) {
        Ok(p) => p,
        Err(pass) => return Verdict::Pass(pass),
    };
    // `classify` gives `Service` and `Reply` for TCP/UDP packets only; the `None` arms are
    // there so that even the impossible has a defined, counted outcome.
    match classify::classify(ctx, &pkt) {
        Class::Service(svc) => match pkt.flow() {
            Some((flow, l4)) => to_backend(ctx, &pkt, flow, l4, &svc),
            None => Verdict::Drop(DropReason::Malformed),
        },
        Class::Reply(r) => match pkt.flow() {
            Some((flow, l4)) => to_client(ctx, &pkt, flow, l4, &r),
            None => Verdict::Drop(DropReason::Malformed),
        },
        Class::HairpinReply => hairpin::enter(ctx),
        Class::IcmpFromBackend(r) => icmp::error_from_backend(ctx, &pkt, &r),
        Class::Pip(e, inbound) => pip::nat(ctx, &pkt, &e, inbound),
        Class::Outbound => outbound::enter(ctx),
        Class::OutboundStateless(e) => match pkt.flow() {
            Some(f) => outbound::stateless_out(ctx, &pkt, f, &e),
            None => Verdict::Drop(DropReason::Malformed),
        },
        Class::OutboundStatelessReturn(owner) => match pkt.flow() {
            Some(f) => outbound::stateless_in(ctx, &pkt, f, owner),
            None => Verdict::Drop(DropReason::Malformed),
        },
        Class::IcmpToVip(vip) => icmp::to_vip(ctx, &pkt, &vip),
        Class::Unservable(r) => Verdict::Drop(r),
        Class::NotOurs(r) => Verdict::Pass(r),
    }
}

/// Client → VIP: pick (or recall) the backend, DNAT, forward.
#[inline(always)]
fn to_backend(
    ctx: &XdpContext,
    pkt: &Packet,
    flow: &FlowKey4,
    l4: L4,
    svc: &ServiceInfo,
) -> Verdict {
    if flow.proto == proto::TCP && conn::invalid_flags(pkt.flags()) {
        return Verdict::Drop(DropReason::TcpFlags);
    }
    if xlate::ttl(pkt) <= 1 {
        return Verdict::Drop(DropReason::Ttl);
    }
    let (id, be, new_flow) = match select::pick(flow, pkt, svc) {
        Ok(Pick::Tracked(id, b)) => (id, b, false),
        Ok(Pick::New(id, b)) => (id, b, true),
        Ok(Pick::Hairpin) => return hairpin::enter(ctx),
        Err(r) => return Verdict::Drop(r),
    };
    if new_flow {
        // Off unless the agent runs with --bpf-log debug: the agent sets AYA_LOG_LEVEL at load
        // time and the verifier prunes this branch as dead code when it is 0.
        aya_log_ebpf::debug!(ctx, "new flow to backend {} (service {})", id, svc.id);
    }
    stats::count_flow(id, pkt.len, Dir::Forward { new_flow });
    let fip = svc.floating_ip();
    if fip != lb_common::encap::mode::DNAT {
        let at = encap::at(fip, pkt.l3_off, 0, 0);
        let to = (id, select::hash(flow), at);
        return encap::enter(ctx, lb_common::consts::PROG_ENCAP, to);
    }
    // An HA-ports backend has no port: the flow keeps the one it was sent to.
    xlate::dnat(pkt, l4, be.addr, select::backend_port(&be, flow));
    xlate::forward(ctx, pkt, Some(be.nh), SendReason::Forward)
}

/// Backend → client reply of a tracked flow: its flags recorded on the flow, source back to
/// the VIP, forward.
#[inline(always)]
fn to_client(ctx: &XdpContext, pkt: &Packet, flow: &FlowKey4, l4: L4, r: &Reply) -> Verdict {
    if xlate::ttl(pkt) <= 1 {
        return Verdict::Drop(DropReason::Ttl);
    }
    r.commit();
    xlate::rnat(pkt, l4, r.vip, r.vport);
    stats::count_flow(r.backend, pkt.len, Dir::Reply);
    xlate::forward(ctx, pkt, select::route(flow.dst), SendReason::Reply)
}

#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible, as the helpers we call (and aya-log's) require.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
