//! The XDP load balancer: parse → classify → select → translate → forward.
//!
//! Little logic lives here: the hash, slot rule, checksum arithmetic and verdict reasons come
//! from `lb-common`, where host tests cover them. Every packet is counted under exactly one
//! [`Reason`], in one place ([`lb_xdp`]).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod hairpin;
mod icmp;
mod maps;
mod parse;
mod pip;
mod select;
mod stats;
mod xlate;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    addr::{as_v4, v4_mapped},
    flow::FlowKey,
    maps::{CONN_HAIRPIN_REV, ConnEntry, ServiceInfo},
    verdict::Reason,
};

use crate::{
    parse::{L4, Packet},
    stats::Dir,
};

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let (action, reason) = try_lb(&ctx);
    stats::count_reason(reason);
    action
}

/// Hairpin SNAT flows, entered from [`lb_xdp`] by tail call (see `hairpin.rs`).
#[xdp]
pub fn lb_hairpin(ctx: XdpContext) -> u32 {
    let (action, reason) = hairpin::run(&ctx);
    stats::count_reason(reason);
    action
}

#[inline(always)]
fn try_lb(ctx: &XdpContext) -> (u32, Reason) {
    let pkt = match parse::packet(ctx) {
        Ok(p) => p,
        Err(pass) => return (xdp_action::XDP_PASS, pass),
    };
    let Some((flow, l4)) = pkt.l4 else {
        // Not balanceable (malformed, fragment, options, not TCP/UDP). In order: an ICMP error
        // about a tracked flow belongs to that flow (before a PIP, as conntrack is for TCP/UDP);
        // a PIP takes every protocol; ICMP to a VIP gets echo replies and error translation;
        // anything else to a VIP is a counted drop; the rest is the kernel's business.
        // SAFETY: `pkt.ip` was bounds-checked by the parser.
        let (dst, proto_) = unsafe { ((*pkt.ip).dst, (*pkt.ip).proto) };
        let is_icmp =
            proto_ == lb_common::flow::proto::ICMP && pkt.problem == Some(Reason::DropProto);
        if is_icmp && let Some(r) = icmp::error_from_backend(ctx, &pkt) {
            return r;
        }
        if let Some(r) = pip::translate(ctx, &pkt) {
            return r;
        }
        let Some(vip) = select::vip(v4_mapped(dst)) else {
            return (xdp_action::XDP_PASS, Reason::PassNotOurs);
        };
        if is_icmp {
            return icmp::to_vip(ctx, &pkt, &vip);
        }
        return (
            xdp_action::XDP_DROP,
            pkt.problem.unwrap_or(Reason::DropMalformed),
        );
    };
    if let Some(svc) = select::service(&flow) {
        return to_backend(ctx, &pkt, &flow, l4, &svc);
    }
    if let Some(ct) = select::reply(&flow) {
        if ct.kind == CONN_HAIRPIN_REV {
            return hairpin::enter(ctx);
        }
        return to_client(ctx, &pkt, &flow, l4, &ct);
    }
    // TCP/UDP to or from a PIP (after VIP flows: a DIP can also be a VIP's backend).
    if let Some(r) = pip::translate(ctx, &pkt) {
        return r;
    }
    if select::is_vip(flow.dst) {
        (xdp_action::XDP_DROP, Reason::DropNoService)
    } else {
        (xdp_action::XDP_PASS, Reason::PassNotOurs)
    }
}

/// Client → VIP: pick (or recall) the backend, DNAT, forward.
#[inline(always)]
fn to_backend(
    ctx: &XdpContext,
    pkt: &Packet,
    flow: &FlowKey,
    l4: L4,
    svc: &ServiceInfo,
) -> (u32, Reason) {
    if xlate::ttl(pkt) <= 1 {
        return (xdp_action::XDP_DROP, Reason::DropTtl);
    }
    let (id, be, new_flow) = match select::backend_for(flow, pkt.is_syn, svc) {
        Ok(x) => x,
        Err(Reason::HairpinSnat) => return hairpin::enter(ctx),
        Err(r) => return (xdp_action::XDP_DROP, r),
    };
    let Some(addr) = as_v4(&be.addr) else {
        // The agent never pairs an IPv4 service with an IPv6 backend; guard anyway.
        return (xdp_action::XDP_DROP, Reason::DropNoBackend);
    };
    if new_flow {
        // Off unless the agent runs with --bpf-log debug: the agent sets AYA_LOG_LEVEL at load
        // time and the verifier prunes this branch as dead code when it is 0.
        aya_log_ebpf::debug!(ctx, "new flow to backend {} (service {})", id, svc.id);
    }
    xlate::dnat(pkt, l4, addr, be.port);
    stats::count_flow(svc.id, id, pkt.len, Dir::Forward { new_flow });
    xlate::forward(ctx, pkt, Some(be.nh), Reason::Forward)
}

/// Backend → client reply of a tracked flow: source back to the VIP, forward.
#[inline(always)]
fn to_client(
    ctx: &XdpContext,
    pkt: &Packet,
    flow: &FlowKey,
    l4: L4,
    ct: &ConnEntry,
) -> (u32, Reason) {
    if xlate::ttl(pkt) <= 1 {
        return (xdp_action::XDP_DROP, Reason::DropTtl);
    }
    let Some(vip) = as_v4(&ct.addr) else {
        return (xdp_action::XDP_PASS, Reason::PassNotOurs);
    };
    xlate::rnat(pkt, l4, vip, ct.port);
    stats::count_flow(ct.service, ct.backend, pkt.len, Dir::Reply);
    xlate::forward(ctx, pkt, select::route(flow.dst), Reason::Reply)
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
