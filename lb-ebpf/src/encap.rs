//! Floating IP (direct server return): a client → VIP packet goes to its backend with the VIP
//! still its destination, for `l2` with only the MACs rewritten, for IPIP and GUE inside an
//! outer header to the backend (`lb_common::encap`). The inner packet is not touched, so its
//! checksums stay valid and its TTL is the client's; the backend holds the VIP and answers the
//! client straight, so no reply ever comes back here.
//!
//! Both families' senders are programs of their own (`lb_encap`, `lb_encap6`), entered by tail
//! call once the fast path has chosen the backend, which hands them the backend, the flow hash
//! and where the headers are through a per-CPU scratch entry (`LB_ENCAP_TMP`). verifier: inline
//! (as BPF functions of the fast path), the IPv6 path's stack and the encapsulation's came to
//! 688 bytes over three frames (the limit is 512), and the IPv6 path with it took 852 183
//! instructions of the verifier's million. After `bpf_xdp_adjust_head` every packet pointer is
//! re-derived from the context.

use aya_ebpf::{
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    consts::{TOO_BIG_BURST, TOO_BIG_RATE_PER_SEC},
    encap::{self, EncapConfig, OUTER_TTL, mode, too_big},
    flow::proto,
    hdr::{EthHdr, Ipv4Hdr, Ipv6Hdr, UdpHdr},
    maps::{BackendId, NextHop},
    verdict::{DropReason, SendReason},
};

use crate::{
    maps::{LB_ENCAP, LB_ENCAP_TMP, LB_TOO_BIG_RL},
    parse::ptr_at,
    verdict::Verdict,
    xlate,
};

/// Bytes of extension headers an IPv6 packet may carry into a GUE service: the outer UDP
/// checksum covers them, and the sum reads them 8 bytes at a time, bounded for the verifier.
/// Past it the packet is a counted drop (`drop_ext_headers`); IPIP and `l2` take any chain the
/// parser walks.
pub const GUE6_MAX_EXT_BYTES: usize = 256;

/// The encapsulation settings: a pointer to the map's one entry, read field by field where
/// they are written (the agent writes the entry at load; it refuses a floating-IP service whose
/// family has no outer source). verifier/size: copied out whole before the helper, its 16-byte
/// address lived across the call as sixteen 8-byte stack slots, as did the backend's.
#[inline(always)]
fn config() -> Option<*const EncapConfig> {
    LB_ENCAP.get_ptr(0)
}

/// Stores `src` at `dst` byte by byte, volatile: LLVM can neither merge the stores nor turn
/// them into a `memcpy`/`memmove` call (it did, for a MAC copied as an array from a map value
/// into the packet).
///
/// # Safety
/// `dst` has `N` writable bytes (bounds-checked packet memory).
#[inline(always)]
unsafe fn put<const N: usize>(dst: *mut u8, src: &[u8; N]) {
    let mut i = 0;
    while i < N {
        // SAFETY: the caller guarantees `N` bytes at `dst`; `i < N`.
        unsafe { dst.add(i).write_volatile(src[i]) };
        i += 1;
    }
}

/// Grows the frame at the front by `by` bytes and moves the L2 header (`l3` bytes: 14, or 18
/// with an 802.1Q tag) to the new front, its MACs left for `xlate::out` to write. The outer
/// headers then go between it and the inner packet, at `l3`.
///
/// verifier: the copy is two fixed-size reads and writes (and two more for a tag), each
/// through a pointer bounds-checked after the helper, which invalidated every older one.
#[inline(always)]
fn grow(ctx: &XdpContext, l3: usize, by: usize) -> Result<*mut EthHdr, DropReason> {
    #[expect(clippy::cast_possible_wrap, reason = "an overhead of at most 48 bytes")]
    let delta = -(by as i32);
    // SAFETY: the context is this program's; the helper checks the headroom itself.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return Err(DropReason::EncapMtu);
    }
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(DropReason::Malformed)?;
    let old = ptr_at::<[u8; 2]>(ctx, by + 12).ok_or(DropReason::Malformed)?;
    // SAFETY: both bounds-checked above; `by` >= 20 > 18, so the two do not overlap.
    unsafe { (*eth).ether_type = *old };
    if l3 == 18 {
        let tag = ptr_at::<[u8; 4]>(ctx, by + 14).ok_or(DropReason::Malformed)?;
        let new = ptr_at::<[u8; 4]>(ctx, 14).ok_or(DropReason::Malformed)?;
        // SAFETY: as above.
        unsafe { *new = *tag };
    }
    Ok(eth)
}

/// Out through `nh` when the agent resolved it (counted as `ok`), else through the kernel FIB's answer
/// for the outer header (`forward_fib`), else a counted drop: an encapsulated packet handed to
/// the kernel would come from one of its own addresses, a martian.
#[inline(always)]
fn out(
    ctx: &XdpContext,
    (eth, ok): (*mut EthHdr, SendReason),
    nh: NextHop,
    fib: impl FnOnce() -> Option<NextHop>,
) -> Verdict {
    let (nh, why) = if nh.is_resolved() {
        (nh, ok)
    } else {
        match fib() {
            Some(nh) => (nh, SendReason::ForwardFib),
            None => return Verdict::Drop(DropReason::NoNextHop),
        }
    };
    // size: the MACs stored by `put` (copied as arrays, as `xlate::out` does, LLVM could not
    // tell the next hop from the packet here and called `memmove` for one of them).
    let e = eth.cast::<u8>();
    // SAFETY: `eth` was bounds-checked after the last helper that moved the packet: 14 bytes.
    unsafe {
        put(e, &nh.dmac);
        put(e.add(6), &nh.smac);
    }
    Verdict::Sent(xlate::leave(ctx, nh.ifindex), why)
}

/// `l2`: the MACs of `nh`, nothing else. An unresolved next hop is the kernel FIB's only for a
/// backend on a connected link (no gateway); a gateway would route the VIP straight back.
#[inline(always)]
fn l2(
    ctx: &XdpContext,
    ok: SendReason,
    nh: NextHop,
    fib: impl FnOnce() -> Option<NextHop>,
) -> Verdict {
    match ptr_at::<EthHdr>(ctx, 0) {
        Some(eth) => out(ctx, (eth, ok), nh, fib),
        None => Verdict::Drop(DropReason::Malformed),
    }
}

/// What a sender needs to know besides the backend and the hash, packed in one word: the mode (bits 0–1),
/// whether the frame has an 802.1Q tag (bit 2: the IP header at 18, else 14), and for IPv6
/// the transport header's offset (bits 8–23) and protocol (24–31).
#[inline(always)]
#[must_use]
pub fn at(m: u32, l3: usize, l4: usize, proto: u8) -> u32 {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "an offset inside one frame"
    )]
    let l4 = l4 as u32;
    (m & 0b11) | (u32::from(l3 == 18) << 2) | ((l4 & 0xffff) << 8) | (u32::from(proto) << 24)
}

/// [`at`]'s flag for an ICMP error about a floating-IP flow (to the VIP, about the backend's
/// reply): encapsulated to the flow's backend like its forward packets, and counted as
/// `icmp_to_backend`.
pub const AT_ICMP: u32 = 1 << 3;

/// The mode and the IP header's offset packed by [`at`].
#[inline(always)]
fn unpack(at: u32) -> (u32, usize) {
    (at & 0b11, if at & 0b100 == 0 { 14 } else { 18 })
}

/// What a packet [`at`] describes is counted as once sent by its resolved next hop.
#[inline(always)]
fn reason(at: u32) -> SendReason {
    if at & AT_ICMP == 0 {
        SendReason::ForwardEncap
    } else {
        SendReason::IcmpToBackend
    }
}

/// Hands a floating-IP packet to backend `id` (flow hash `hash`; the rest in `at`, [`at`]) to
/// its family's encapsulating program (`slot`: `PROG_ENCAP` or `PROG_ENCAP6`). Returns only if
/// the tail call fails.
#[inline(always)]
pub fn enter(ctx: &XdpContext, slot: u32, (id, hash, at): (BackendId, u32, u32)) -> Verdict {
    match LB_ENCAP_TMP.get_ptr_mut(0) {
        // SAFETY: this CPU's entry of a per-CPU array, read by the program tail-called next on
        // this CPU, before anything else runs here.
        Some(t) => unsafe { *t = [id, hash, at, 0] },
        None => return Verdict::Drop(DropReason::EncapUnavailable),
    }
    xlate::tail_call(ctx, slot, DropReason::EncapUnavailable)
}

/// What [`enter`] handed over: (backend id, flow hash, [`at`]).
#[inline(always)]
fn handed() -> Option<(BackendId, u32, u32)> {
    // SAFETY: copied out at once.
    let t = unsafe { *LB_ENCAP_TMP.get_ptr(0)? };
    Some((t[0], t[1], t[2]))
}

/// The IPv4 floating-IP program's body.
#[inline(always)]
pub fn run4(ctx: &XdpContext) -> Verdict {
    match handed() {
        Some((id, hash, at)) => send4(ctx, id, hash, at),
        None => Verdict::Drop(DropReason::EncapUnavailable),
    }
}

/// The IPv6 floating-IP program's body.
#[inline(always)]
pub fn run6(ctx: &XdpContext) -> Verdict {
    match handed() {
        Some((id, hash, at)) => send6(ctx, id, hash, at),
        None => Verdict::Drop(DropReason::EncapUnavailable),
    }
}

/// An IPv4 floating-IP packet to backend `id` (flow hash `hash`; the rest in `at`, [`at`]).
#[inline(always)]
fn send4(ctx: &XdpContext, id: BackendId, hash: u32, at: u32) -> Verdict {
    let Some(be) = crate::select::live_backend(id) else {
        return Verdict::Drop(DropReason::NoBackend);
    };
    let (m, l3) = unpack(at);
    let ok = reason(at);
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, l3) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    if m == mode::L2 {
        // SAFETY: bounds-checked above, and no helper has run since.
        let src = unsafe { (*ip).src };
        return l2(ctx, ok, be.nh, || xlate::fib_on_link4(ctx, src, be.addr));
    }
    // SAFETY: bounds-checked above; read before the helper moves the packet.
    let (tos, tot_len, frag) = unsafe {
        (
            (*ip).tos,
            u16::from_be_bytes((*ip).tot_len),
            u16::from_be_bytes((*ip).frag_off),
        )
    };
    // The MTU is the resolved next hop's link's; through the FIB fallback the kernel checks
    // the outer length itself (`fib_hdr` passes it) and a packet too big has no next hop.
    if be.nh.is_resolved() && !too_big::fits(u32::from(tot_len), m, false, be.mtu) {
        // Never an ICMP error about an ICMP error, and never one for a packet that may be
        // fragmented (no DF): that one is not ours to fragment, and a router would have.
        if at & AT_ICMP != 0 || frag & encap::IPV4_DF == 0 {
            return Verdict::Drop(DropReason::EncapMtu);
        }
        return too_big4(ctx, l3, too_big::inner_mtu(be.mtu, m, false));
    }
    let gue = m == mode::GUE;
    let by = encap::overhead(m, false);
    let Some(cfg) = config() else {
        return Verdict::Drop(DropReason::EncapUnavailable);
    };
    let eth = match grow(ctx, l3, by) {
        Ok(e) => e,
        Err(r) => return Verdict::Drop(r),
    };
    let Some(o) = ptr_at::<Ipv4Hdr>(ctx, l3) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    // SAFETY: the map's entry, valid for the program's run.
    let (src, gue_port) = unsafe { ((*cfg).src4, (*cfg).gue_port) };
    #[expect(clippy::cast_possible_truncation, reason = "an overhead of 20 or 28")]
    let outer_len = tot_len.wrapping_add(by as u16);
    let p = if gue { proto::UDP } else { encap::PROTO_IPIP };
    // SAFETY: `o` was bounds-checked after the helper.
    unsafe {
        (*o).version_ihl = 0x45;
        (*o).tos = tos;
        (*o).tot_len = outer_len.to_be_bytes();
        (*o).id = [0; 2];
        (*o).frag_off = encap::IPV4_DF.to_be_bytes();
        (*o).ttl = OUTER_TTL;
        (*o).proto = p;
        (*o).check = encap::outer4_check(src, be.addr, tos, outer_len, p).to_be_bytes();
        (*o).src = src;
        (*o).dst = be.addr;
    }
    if gue {
        let Some(u) = ptr_at::<UdpHdr>(ctx, l3 + 20) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        // SAFETY: bounds-checked above. The checksum is 0: optional over IPv4 (RFC 768), and
        // the inner packet carries its own.
        unsafe {
            (*u).sport = encap::gue_sport(hash).to_be_bytes();
            (*u).dport = gue_port;
            (*u).len = outer_len.wrapping_sub(20).to_be_bytes();
            (*u).check = [0; 2];
        }
    }
    out(ctx, (eth, ok), be.nh, || xlate::fib_hdr(ctx, o))
}

/// The one's-complement sum (unfolded) of the 40-byte IPv6 header at `ip` as it is, and of its
/// pseudo-header for an upper layer of `l4_len` bytes of protocol `p`.
///
/// # Safety
/// `ip` is a bounds-checked IPv6 header.
#[inline(always)]
unsafe fn sums6(ip: *const Ipv6Hdr, l4_len: u32, p: u8) -> (u32, u32) {
    // SAFETY: the caller guarantees the pointer.
    let h = unsafe { &*ip };
    let w = |a: u8, b: u8| (u32::from(a) << 8) | u32::from(b);
    let addrs = encap::pseudo6_sum(&h.src, &h.dst, 0, 0);
    let hdr = addrs
        + w(h.vtc_flow[0], h.vtc_flow[1])
        + w(h.vtc_flow[2], h.vtc_flow[3])
        + w(h.payload_len[0], h.payload_len[1])
        + w(h.next, h.hop_limit);
    let pseudo = addrs + (l4_len >> 16) + (l4_len & 0xffff) + u32::from(p);
    (hdr, pseudo)
}

/// The sum (unfolded) of the `len` bytes of extension headers at `off`, 8 at a time, or `None`
/// past [`GUE6_MAX_EXT_BYTES`] or the frame.
#[inline(always)]
fn ext_sum(ctx: &XdpContext, off: usize, len: usize) -> Option<u32> {
    if len > GUE6_MAX_EXT_BYTES {
        return None;
    }
    let mut sum = 0u32;
    let mut i = 0;
    // verifier: a constant trip count; each step's read is a bounded check of its own.
    while i < GUE6_MAX_EXT_BYTES / 8 {
        if i * 8 >= len {
            break;
        }
        let c = ptr_at::<[u8; 8]>(ctx, off + i * 8)?;
        // SAFETY: bounds-checked above.
        let c = unsafe { *c };
        sum += (u32::from(c[0]) << 8 | u32::from(c[1])) + (u32::from(c[2]) << 8 | u32::from(c[3]));
        sum += (u32::from(c[4]) << 8 | u32::from(c[5])) + (u32::from(c[6]) << 8 | u32::from(c[7]));
        i += 1;
    }
    Some(sum)
}

/// The sums a GUE-over-IPv6 checksum needs of the inner packet whose IPv6 header is at `l3`
/// and transport header (protocol `p`) at `l4`: its IP headers' sum (low word) and its
/// segment's pseudo-header sum (high word); `None` past [`GUE6_MAX_EXT_BYTES`] of extension
/// headers. verifier: a BPF function of its own, so that its reads and sums do not hold
/// registers (and stack) across the rest of the program (its frame came to 496 bytes).
#[inline(never)]
fn inner_sums6(ctx: &XdpContext, l3: usize, l4: usize, p: u8) -> Option<u64> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, l3)?;
    let ext = ext_sum(ctx, l3 + 40, l4.wrapping_sub(l3 + 40))?;
    // SAFETY: bounds-checked above.
    let payload = u32::from(u16::from_be_bytes(unsafe { (*ip).payload_len }));
    #[expect(clippy::cast_possible_truncation, reason = "a frame's offsets")]
    let l4_len = payload.wrapping_sub((l4 - l3 - 40) as u32);
    // SAFETY: bounds-checked above; no helper has run since.
    let (hdr, pseudo) = unsafe { sums6(ip, l4_len, p) };
    Some(u64::from(hdr + ext) | (u64::from(pseudo) << 32))
}

/// An IPv6 floating-IP packet to backend `id` (flow hash `hash`; the rest in `at`, [`at`]).
/// The backend and the settings are read through their map entries where they are used: held
/// across the helper, their 16-byte addresses took 32 stack slots (the frame came to 504).
#[inline(always)]
fn send6(ctx: &XdpContext, id: BackendId, hash: u32, at: u32) -> Verdict {
    let Some(be) = backend6(id) else {
        return Verdict::Drop(DropReason::NoBackend);
    };
    let (m, l3) = unpack(at);
    let ok = reason(at);
    let l4 = ((at >> 8) & 0xffff) as usize;
    let p = (at >> 24) as u8;
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, l3) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    if m == mode::L2 {
        // SAFETY: bounds-checked above, and no helper has run since; `be` is a map entry.
        let (src, to, nh) = unsafe { ((*ip).src, (*be).addr, (*be).nh) };
        return l2(ctx, ok, nh, || crate::xlate6::fib_on_link6(ctx, src, to));
    }
    // SAFETY: bounds-checked above; read before the helper moves the packet.
    let (tclass, payload) = unsafe {
        let h = &*ip;
        (
            (h.vtc_flow[0] << 4) | (h.vtc_flow[1] >> 4),
            u16::from_be_bytes(h.payload_len),
        )
    };
    // SAFETY: a map entry.
    let (resolved, mtu) = unsafe { ((*be).nh.is_resolved(), (*be).mtu) };
    if resolved && !too_big::fits(u32::from(payload) + 40, m, true, mtu) {
        if at & AT_ICMP != 0 {
            return Verdict::Drop(DropReason::EncapMtu);
        }
        return too_big6(ctx, l3, too_big::inner_mtu(mtu, m, true));
    }
    let gue = m == mode::GUE;
    // The outer UDP checksum's inner part, from the inner headers alone
    // (`encap::gue6_check`), before the helper moves the packet.
    let inner = if gue {
        match inner_sums6(ctx, l3, l4, p) {
            Some(s) => s,
            None => return Verdict::Drop(DropReason::ExtHeaders),
        }
    } else {
        0
    };
    let Some(cfg) = config() else {
        return Verdict::Drop(DropReason::EncapUnavailable);
    };
    let by = encap::overhead(m, true);
    let eth = match grow(ctx, l3, by) {
        Ok(e) => e,
        Err(r) => return Verdict::Drop(r),
    };
    let Some(o) = ptr_at::<Ipv6Hdr>(ctx, l3) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    // The inner packet whole (40 + its payload), plus the UDP header for GUE.
    let inner_len = payload.wrapping_add(40);
    let udp_len = inner_len.wrapping_add(8);
    // SAFETY: `o` was bounds-checked after the helper; `cfg` and `be` are map entries.
    unsafe {
        (*o).vtc_flow = encap::outer6_word(tclass, encap::flow_label(hash));
        (*o).payload_len = if gue { udp_len } else { inner_len }.to_be_bytes();
        (*o).next = if gue { proto::UDP } else { encap::PROTO_IPV6 };
        (*o).hop_limit = OUTER_TTL;
        put(o.cast::<u8>().add(8), &(*cfg).src6);
        put(o.cast::<u8>().add(24), &(*be).addr);
    }
    if gue {
        let Some(u) = ptr_at::<UdpHdr>(ctx, l3 + 40) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        // SAFETY: map entries, valid for the program's run.
        let (outer, port) = unsafe {
            (
                encap::pseudo6_sum(&(*cfg).src6, &(*be).addr, u32::from(udp_len), proto::UDP),
                (*cfg).gue_port,
            )
        };
        let sport = encap::gue_sport(hash);
        let udp = u32::from(sport) + u32::from(u16::from_be_bytes(port)) + u32::from(udp_len);
        #[expect(clippy::cast_possible_truncation, reason = "two words packed in one")]
        let check = encap::gue6_check(outer, udp, inner as u32, (inner >> 32) as u32);
        // SAFETY: bounds-checked above.
        unsafe {
            (*u).sport = sport.to_be_bytes();
            (*u).dport = port;
            (*u).len = udp_len.to_be_bytes();
            (*u).check = check.to_be_bytes();
        }
    }
    let p = if gue { proto::UDP } else { encap::PROTO_IPV6 };
    // SAFETY: a map entry.
    let nh = unsafe { (*be).nh };
    // SAFETY: `o` is the bounds-checked outer header.
    out(ctx, (eth, ok), nh, || unsafe {
        crate::xlate6::fib(ctx, o, p)
    })
}

/// Backend `id`'s `LB_BACKENDS6` entry, if it is live (as `six::live_backend`, as a pointer).
#[inline(always)]
fn backend6(id: BackendId) -> Option<*const lb_common::maps::Backend6> {
    if id == 0 {
        return None;
    }
    let b = crate::maps::LB_BACKENDS6.get_ptr(id)?;
    // SAFETY: a map entry, valid for the program's run.
    unsafe { (*b).is_active() }.then_some(b)
}

/// Whether this CPU may send one more "too big" answer.
#[inline(always)]
fn too_big_token() -> bool {
    crate::icmp::take_from(&LB_TOO_BIG_RL, TOO_BIG_RATE_PER_SEC, TOO_BIG_BURST)
}

/// Cuts the frame down to its first `l3 + quote` bytes (the L2 header and the quote of the
/// packet whose IP header is at `l3`), then grows it at the front by `by` bytes for the
/// answer's headers, the L2 header moved there with its MACs swapped: the answer goes back
/// out of the port the packet came in by, to the neighbour that sent it.
#[inline(always)]
fn turn_into_answer(
    ctx: &XdpContext,
    l3: usize,
    quote: usize,
    by: usize,
) -> Result<(), DropReason> {
    let len = ctx.data_end() - ctx.data();
    #[expect(clippy::cast_possible_wrap, reason = "a frame's length")]
    let cut = -(len.saturating_sub(l3 + quote) as i32);
    // SAFETY: the context is this program's; the helper checks the new length itself.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, cut) } != 0 {
        return Err(DropReason::Malformed);
    }
    let eth = grow(ctx, l3, by)?;
    let old = ptr_at::<[u8; 12]>(ctx, by).ok_or(DropReason::Malformed)?;
    // SAFETY: both bounds-checked after the helpers; `by` >= 28 > 18: they do not overlap.
    unsafe {
        let macs = *old;
        let e = eth.cast::<u8>();
        let mut i = 0;
        while i < 6 {
            e.add(i).write_volatile(macs[6 + i]);
            e.add(6 + i).write_volatile(macs[i]);
            i += 1;
        }
    }
    Ok(())
}

/// The one's-complement sum (unfolded) of the `len` (at most `max`) bytes at `off`, two at a
/// time, an odd last byte padded. verifier: a constant trip count, each read checked.
#[inline(always)]
fn quote_sum<const MAX: usize>(ctx: &XdpContext, off: usize, len: usize) -> Option<u32> {
    let mut sum = 0u32;
    let mut i = 0;
    while i < MAX / 2 {
        if i * 2 + 2 > len {
            break;
        }
        let w = ptr_at::<[u8; 2]>(ctx, off + i * 2)?;
        // SAFETY: bounds-checked above.
        sum += u32::from(u16::from_be_bytes(unsafe { *w }));
        i += 1;
    }
    if len & 1 == 1 && len <= MAX {
        // verifier: the word that ends with the last byte, at `off - 1 + (len & !1)`: with
        // `len - 1` it saw a possible -1, and a one-byte read compiled to `ptr >= end`, a
        // comparison that gives the pointer no range. `off` >= 1 (the answer's headers).
        let w = ptr_at::<[u8; 2]>(ctx, off - 1 + (len & !1))?;
        // SAFETY: bounds-checked above.
        sum += u32::from(unsafe { (*w)[1] }) << 8;
    }
    Some(sum)
}

/// Answers the IPv4 packet at `l3` (with DF) with ICMP "fragmentation needed" giving `mtu`,
/// from its destination (the VIP) to its source, as a router on the way would, rate-limited
/// (`drop_encap_mtu` past the limit). verifier: a BPF function of its own, so that its reads
/// do not add to the encapsulating path's states.
#[inline(never)]
fn too_big4(ctx: &XdpContext, l3: usize, mtu: u32) -> Verdict {
    match answer4(ctx, l3, mtu) {
        Ok(()) => Verdict::Sent(xlate::back_out(ctx), SendReason::IcmpTooBigSent),
        Err(r) => Verdict::Drop(r),
    }
}

#[inline(always)]
fn answer4(ctx: &XdpContext, l3: usize, mtu: u32) -> Result<(), DropReason> {
    if !too_big_token() {
        return Err(DropReason::EncapMtu);
    }
    let ip = ptr_at::<Ipv4Hdr>(ctx, l3).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds-checked above.
    let len = usize::from(u16::from_be_bytes(unsafe { (*ip).tot_len }));
    let quote = too_big::quote_len(len, false);
    turn_into_answer(ctx, l3, quote, too_big::HEADERS4)?;
    let o = ptr_at::<Ipv4Hdr>(ctx, l3).ok_or(DropReason::Malformed)?;
    let inner = ptr_at::<Ipv4Hdr>(ctx, l3 + too_big::HEADERS4).ok_or(DropReason::Malformed)?;
    let icmp = ptr_at::<[u8; 8]>(ctx, l3 + 20).ok_or(DropReason::Malformed)?;
    let sum = quote_sum::<{ too_big::QUOTE4 }>(ctx, l3 + too_big::HEADERS4, quote)
        .ok_or(DropReason::Malformed)?;
    #[expect(clippy::cast_possible_truncation, reason = "at most 28 + 128")]
    let tot = (too_big::HEADERS4 + quote) as u16;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "`inner_mtu` caps it at 65 535"
    )]
    let mtu = (mtu as u16).to_be_bytes();
    let check = too_big::icmp4_check(u16::from_be_bytes(mtu), sum).to_be_bytes();
    // SAFETY: all three bounds-checked after the last helper.
    unsafe {
        let (vip, client) = ((*inner).dst, (*inner).src);
        (*o).version_ihl = 0x45;
        (*o).tos = 0;
        (*o).tot_len = tot.to_be_bytes();
        (*o).id = [0; 2];
        (*o).frag_off = encap::IPV4_DF.to_be_bytes();
        (*o).ttl = OUTER_TTL;
        (*o).proto = proto::ICMP;
        (*o).check = encap::outer4_check(vip, client, 0, tot, proto::ICMP).to_be_bytes();
        (*o).src = vip;
        (*o).dst = client;
        put(
            icmp.cast::<u8>(),
            &[3, 4, check[0], check[1], 0, 0, mtu[0], mtu[1]],
        );
    }
    Ok(())
}

/// Answers the IPv6 packet at `l3` with ICMPv6 "packet too big" giving `mtu`, from its
/// destination (the VIP) to its source, rate-limited as [`too_big4`].
#[inline(never)]
fn too_big6(ctx: &XdpContext, l3: usize, mtu: u32) -> Verdict {
    match answer6(ctx, l3, mtu) {
        Ok(()) => Verdict::Sent(xlate::back_out(ctx), SendReason::IcmpTooBigSent),
        Err(r) => Verdict::Drop(r),
    }
}

#[inline(always)]
fn answer6(ctx: &XdpContext, l3: usize, mtu: u32) -> Result<(), DropReason> {
    if !too_big_token() {
        return Err(DropReason::EncapMtu);
    }
    let ip = ptr_at::<Ipv6Hdr>(ctx, l3).ok_or(DropReason::Malformed)?;
    // SAFETY: bounds-checked above.
    let len = usize::from(u16::from_be_bytes(unsafe { (*ip).payload_len })) + 40;
    let quote = too_big::quote_len(len, true);
    turn_into_answer(ctx, l3, quote, too_big::HEADERS6)?;
    let o = ptr_at::<Ipv6Hdr>(ctx, l3).ok_or(DropReason::Malformed)?;
    let inner = ptr_at::<Ipv6Hdr>(ctx, l3 + too_big::HEADERS6).ok_or(DropReason::Malformed)?;
    let icmp = ptr_at::<[u8; 8]>(ctx, l3 + 40).ok_or(DropReason::Malformed)?;
    let sum = quote_sum::<{ too_big::QUOTE6 }>(ctx, l3 + too_big::HEADERS6, quote)
        .ok_or(DropReason::Malformed)?;
    #[expect(clippy::cast_possible_truncation, reason = "at most 8 + 256")]
    let payload = (too_big::HEADERS6 - 40 + quote) as u16;
    // SAFETY: all three bounds-checked after the last helper.
    unsafe {
        let (vip, client) = ((*inner).dst, (*inner).src);
        #[expect(clippy::cast_possible_truncation, reason = "at most 256")]
        let check = too_big::icmp6_check(&vip, &client, mtu, quote as u32, sum).to_be_bytes();
        (*o).vtc_flow = [0x60, 0, 0, 0];
        (*o).payload_len = payload.to_be_bytes();
        (*o).next = too_big::PROTO_ICMP6;
        (*o).hop_limit = OUTER_TTL;
        put(o.cast::<u8>().add(8), &vip);
        put(o.cast::<u8>().add(24), &client);
        let m = mtu.to_be_bytes();
        put(
            icmp.cast::<u8>(),
            &[2, 0, check[0], check[1], m[0], m[1], m[2], m[3]],
        );
    }
    Ok(())
}
