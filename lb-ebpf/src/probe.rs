//! Health probes through the tunnel (`--probe-via tunnel`, `lb_common::encap::probe`): a tc
//! egress program on the probe device, `lb_probe_encap`. The agent's probe socket for a
//! (service, backend) pair connects to VIP:port with a mark naming the pair's backend id and
//! the service's mode; a policy rule sends it by the probe device, whose tc hook runs here.
//! The packet is encapsulated to the backend exactly as the fast path would a client's
//! (`encap.rs`: the outer source from `LB_ENCAP`, the outer destination the backend's
//! address, the GUE port), given the backend's resolved next hop's MACs and redirected out of
//! its link. The backend's answer comes straight back from VIP:port, as any DSR reply, to the
//! LB address the socket is bound to; the XDP program passes it (not ours) and the probe's
//! socket completes the connection. So the probe covers the whole forward path: encapsulation,
//! the backend's decapsulation, the VIP on its loopback, and the service on VIP:port.
//!
//! The packets come from the kernel's own TCP, so they are linear, small (the probe device's
//! MTU is 1280) and carry no IPv6 extension headers; the skb helpers (`load`, `store`,
//! `adjust_room`) do the bounds checks. A packet without a probe's mark, or whose backend has
//! no resolved next hop yet (the agent resolves it; the next probe finds it), is dropped and
//! counted: the probe then fails by its timeout, which is the truth about that path.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::{bpf_get_hash_recalc, bpf_redirect},
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};
use lb_common::{
    encap::{
        self, OUTER_TTL, mode,
        probe::{self, Outcome},
    },
    flow::proto,
    hdr::{ETH_P_IPV4, ETH_P_IPV6, Ipv4Hdr, Ipv6Hdr, UdpHdr},
    maps::NextHop,
};

use crate::maps::{LB_BACKENDS4, LB_BACKENDS6, LB_ENCAP};

/// Packets per [`Outcome`], per CPU. Reader: the agent's metrics.
#[map(name = "LB_PROBE_STATS")]
static LB_PROBE_STATS: PerCpuArray<u64> = PerCpuArray::pinned(probe::ALL.len() as u32, 0);

const ETH_LEN: usize = 14;

#[classifier]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[classifier] entry point takes its context by value"
)]
pub fn lb_probe_encap(ctx: TcContext) -> i32 {
    let (outcome, action) = match encap_probe(&ctx) {
        Ok(ifindex) => {
            // SAFETY: a helper call with the program's own context.
            #[expect(clippy::cast_possible_truncation, reason = "TC_ACT_* codes are small")]
            let act = unsafe { bpf_redirect(ifindex, 0) } as i32;
            (Outcome::Sent, act)
        }
        #[allow(
            clippy::cast_possible_wrap,
            clippy::unnecessary_cast,
            reason = "TC_ACT_SHOT (2) is a u32 in the bpf target's bindings, an i32 in the host's"
        )]
        Err(o) => (o, TC_ACT_SHOT as i32),
    };
    if let Some(c) = LB_PROBE_STATS.get_ptr_mut(outcome as u32) {
        // SAFETY: this CPU's counter.
        unsafe { *c += 1 };
    }
    action
}

/// The probe packet encapsulated to its backend: the backend link's ifindex to redirect to.
#[inline(always)]
fn encap_probe(ctx: &TcContext) -> Result<u32, Outcome> {
    // SAFETY: the context's own skb.
    let mark = unsafe { (*ctx.skb.skb).mark };
    let (m, id) = probe::unmark(mark).ok_or(Outcome::NoBackend)?;
    // `protocol` is the ethertype in network order, in the low 16 bits.
    #[expect(clippy::cast_possible_truncation, reason = "a 16-bit ethertype")]
    let ethertype = u16::from_be(ctx.skb.protocol() as u16);
    let nh = match ethertype {
        ETH_P_IPV4 => four(ctx, m, id)?,
        ETH_P_IPV6 => six(ctx, m, id)?,
        _ => return Err(Outcome::Malformed),
    };
    if !nh.is_resolved() {
        return Err(Outcome::NoRoute);
    }
    ctx.store(0, &nh.dmac, 0).map_err(|_| Outcome::Malformed)?;
    ctx.store(6, &nh.smac, 0).map_err(|_| Outcome::Malformed)?;
    Ok(nh.ifindex)
}

/// The flow hash the kernel keeps for the probe's connection, for the GUE source port and the
/// IPv6 flow label (as the fast path takes its own flow hash).
#[inline(always)]
fn hash(ctx: &TcContext) -> u32 {
    // SAFETY: a helper call with the program's own context.
    unsafe { bpf_get_hash_recalc(ctx.skb.skb) }
}

/// Grows the packet after its L2 header by `m`'s outer headers, telling the kernel what they
/// are (so that offloads see the inner packet as inner).
#[inline(always)]
fn grow(ctx: &TcContext, m: u32, v6: bool) -> Result<(), Outcome> {
    let l3 = if v6 {
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV6
    } else {
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    };
    let l4 = if m == mode::GUE {
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP
    } else {
        0
    };
    #[expect(clippy::cast_possible_wrap, reason = "an overhead of at most 48")]
    let by = encap::overhead(m, v6) as i32;
    ctx.adjust_room(by, BPF_ADJ_ROOM_MAC, u64::from(l3 | l4))
        .map_err(|_| Outcome::Malformed)
}

/// An IPv4 probe to backend `id`: its next hop, the packet encapsulated for `m`.
#[inline(always)]
fn four(ctx: &TcContext, m: u32, id: u32) -> Result<NextHop, Outcome> {
    let be = LB_BACKENDS4.get(id).ok_or(Outcome::NoBackend)?;
    if be.addr == [0; 4] {
        return Err(Outcome::NoBackend);
    }
    if m == mode::L2 {
        return Ok(be.nh);
    }
    let cfg = LB_ENCAP.get(0).ok_or(Outcome::NoBackend)?;
    let inner: Ipv4Hdr = ctx.load(ETH_LEN).map_err(|_| Outcome::Malformed)?;
    if inner.version_ihl >> 4 != 4 {
        return Err(Outcome::Malformed);
    }
    let gue = m == mode::GUE;
    let hash = hash(ctx);
    grow(ctx, m, false)?;
    #[expect(clippy::cast_possible_truncation, reason = "an overhead of 20 or 28")]
    let len = u16::from_be_bytes(inner.tot_len).wrapping_add(encap::overhead(m, false) as u16);
    let p = if gue { proto::UDP } else { encap::PROTO_IPIP };
    let outer = Ipv4Hdr {
        version_ihl: 0x45,
        tos: inner.tos,
        tot_len: len.to_be_bytes(),
        id: [0; 2],
        frag_off: encap::IPV4_DF.to_be_bytes(),
        ttl: OUTER_TTL,
        proto: p,
        check: encap::outer4_check(cfg.src4, be.addr, inner.tos, len, p).to_be_bytes(),
        src: cfg.src4,
        dst: be.addr,
    };
    ctx.store(ETH_LEN, &outer, 0)
        .map_err(|_| Outcome::Malformed)?;
    if gue {
        // The checksum is 0: optional over IPv4 (RFC 768), as the fast path sends it.
        let udp = UdpHdr {
            sport: encap::gue_sport(hash).to_be_bytes(),
            dport: cfg.gue_port,
            len: len.wrapping_sub(20).to_be_bytes(),
            check: [0; 2],
        };
        ctx.store(ETH_LEN + 20, &udp, 0)
            .map_err(|_| Outcome::Malformed)?;
    }
    Ok(be.nh)
}

/// An IPv6 probe to backend `id`: its next hop, the packet encapsulated for `m`.
#[inline(always)]
fn six(ctx: &TcContext, m: u32, id: u32) -> Result<NextHop, Outcome> {
    let be = LB_BACKENDS6.get(id).ok_or(Outcome::NoBackend)?;
    if be.addr == [0; 16] {
        return Err(Outcome::NoBackend);
    }
    if m == mode::L2 {
        return Ok(be.nh);
    }
    let cfg = LB_ENCAP.get(0).ok_or(Outcome::NoBackend)?;
    let inner: Ipv6Hdr = ctx.load(ETH_LEN).map_err(|_| Outcome::Malformed)?;
    if inner.vtc_flow[0] >> 4 != 6 {
        return Err(Outcome::Malformed);
    }
    let gue = m == mode::GUE;
    let hash = hash(ctx);
    let payload = u16::from_be_bytes(inner.payload_len);
    // The outer UDP checksum's inner part (`encap::gue6_check`), from the inner header
    // alone: the kernel's TCP sends no extension headers, so its segment follows at once.
    let (hdrs, pseudo) = if gue {
        (
            header_sum6(&inner),
            encap::pseudo6_sum(&inner.src, &inner.dst, u32::from(payload), inner.next),
        )
    } else {
        (0, 0)
    };
    grow(ctx, m, true)?;
    let inner_len = payload.wrapping_add(40);
    let udp_len = inner_len.wrapping_add(8);
    let tclass = (inner.vtc_flow[0] << 4) | (inner.vtc_flow[1] >> 4);
    let outer = Ipv6Hdr {
        vtc_flow: encap::outer6_word(tclass, encap::flow_label(hash)),
        payload_len: if gue { udp_len } else { inner_len }.to_be_bytes(),
        next: if gue { proto::UDP } else { encap::PROTO_IPV6 },
        hop_limit: OUTER_TTL,
        src: cfg.src6,
        dst: be.addr,
    };
    ctx.store(ETH_LEN, &outer, 0)
        .map_err(|_| Outcome::Malformed)?;
    if gue {
        let sport = encap::gue_sport(hash);
        let words =
            u32::from(sport) + u32::from(u16::from_be_bytes(cfg.gue_port)) + u32::from(udp_len);
        let outer_sum = encap::pseudo6_sum(&cfg.src6, &be.addr, u32::from(udp_len), proto::UDP);
        let udp = UdpHdr {
            sport: sport.to_be_bytes(),
            dport: cfg.gue_port,
            len: udp_len.to_be_bytes(),
            check: encap::gue6_check(outer_sum, words, hdrs, pseudo).to_be_bytes(),
        };
        ctx.store(ETH_LEN + 40, &udp, 0)
            .map_err(|_| Outcome::Malformed)?;
    }
    Ok(be.nh)
}

/// The one's-complement sum (unfolded) of an IPv6 header's 20 words as they are.
#[inline(always)]
fn header_sum6(h: &Ipv6Hdr) -> u32 {
    let w = |a: u8, b: u8| (u32::from(a) << 8) | u32::from(b);
    let mut sum = w(h.vtc_flow[0], h.vtc_flow[1])
        + w(h.vtc_flow[2], h.vtc_flow[3])
        + w(h.payload_len[0], h.payload_len[1])
        + w(h.next, h.hop_limit);
    let mut i = 0;
    // verifier: a constant trip count, unrolled.
    while i < 16 {
        sum += w(h.src[i], h.src[i + 1]) + w(h.dst[i], h.dst[i + 1]);
        i += 2;
    }
    sum
}
