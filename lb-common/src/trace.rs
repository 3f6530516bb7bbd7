//! `lb trace`, "tcpdump for the fast path": the program samples packets' verdicts into a ring
//! buffer while the agent has tracing on. XDP-forwarded frames never reach tcpdump, so this is
//! how an operator sees what the program did with a packet: as it arrived, as it left, under
//! which verdict.
//!
//! Off by default. Each packet then reads one array slot (`LB_TRACE_CFG`) and branches; the
//! benchmark measures that against an object whose trace hooks are compiled out
//! (`LB_TRACE_HOOKS = 0`). On, a packet the filter selects takes a token of a per-CPU bucket
//! (bounded rate) and one ring-buffer record; events the bucket or a full ring refuse are
//! counted (`LB_TRACE_LOST`), never silently lost.

use bytemuck::{Pod, Zeroable};

use crate::{
    flow::{FlowKey4, FlowKey6},
    impl_user_pod,
};

/// `LB_TRACE_CFG` slot 0, written by the agent: whether tracing is on, and what it selects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct TraceConfig {
    /// Non-zero: tracing is on.
    pub on: u32,
    /// Only packets to or from this VIP (as they arrived: destination; as they left: source),
    /// all zero for any.
    pub vip: [u8; 4],
    /// Only packets to or from this port (likewise), 0 for any.
    pub port: [u8; 2],
    /// Only packets of this family: 4, 6, or 0 for both (a VIP filter names one).
    pub family: u8,
    pub _pad: u8,
    /// Cost of one event and the burst, in nanoseconds of bucket credit (`RateState::take`).
    pub cost_ns: u32,
    pub burst_ns: u64,
    /// As `vip`, for an IPv6 VIP (`family` 6).
    pub vip6: [u8; 16],
}
const _: () = assert!(size_of::<TraceConfig>() == 40);

/// One ring-buffer record: a packet as it arrived and as it left, and its verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct TraceEvent {
    /// `bpf_ktime_get_ns` (monotonic), for ordering and intervals.
    pub time_ns: u64,
    pub ifindex: u32,
    /// The verdict reason (`crate::verdict::Reason` as a number).
    pub reason: u32,
    /// The XDP action returned.
    pub action: u32,
    /// The frame's length as it arrived.
    pub len: u32,
    /// The IPv4 TCP/UDP 5-tuple as the packet arrived (all zero for anything else).
    pub before: FlowKey4,
    /// ... and as it left (after any translation).
    pub after: FlowKey4,
}
const _: () = assert!(size_of::<TraceEvent>() == 56);

/// [`TraceEvent`] of an IPv6 frame, in the same ring (a record's length tells them apart).
/// The 5-tuples are the IPv6 fixed header's addresses and, for TCP or UDP right after it, the
/// ports; all zero for a frame that is not IPv6.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct TraceEvent6 {
    pub time_ns: u64,
    pub ifindex: u32,
    pub reason: u32,
    pub action: u32,
    pub len: u32,
    pub before: FlowKey6,
    pub after: FlowKey6,
}
const _: () = assert!(size_of::<TraceEvent6>() == 104);

/// `LB_TRACE_TMP6` (per CPU): what the IPv6 programs hand to `lb_trace6`, which writes the
/// record in a stack of its own (a tail call): the 5-tuple as the frame arrived, and the
/// verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct TraceScratch6 {
    pub before: FlowKey6,
    pub reason: u32,
    pub action: u32,
}
const _: () = assert!(size_of::<TraceScratch6>() == 48);

impl_user_pod!(TraceConfig, TraceEvent, TraceEvent6, TraceScratch6);

/// `LB_TRACE_LOST` slots (per CPU): events the rate limit refused, and events a full ring
/// refused.
pub const LOST_RATE: u32 = 0;
pub const LOST_RING: u32 = 1;
/// Bytes of the ring buffer (a power of two, a multiple of the page size): 4,681 events.
pub const RING_BYTES: u32 = 256 * 1024;
/// The default and the largest sampling rates, events per second per CPU.
pub const DEFAULT_RATE: u32 = 1000;
pub const MAX_RATE: u32 = 100_000;

/// The config that traces `rate` events per second per CPU (bursts of one second's worth)
/// of the packets `vip` and `port` select (`None`: any). A VIP selects its family only.
#[must_use]
pub fn config(vip: Option<core::net::IpAddr>, port: Option<u16>, rate: u32) -> TraceConfig {
    let rate = rate.clamp(1, MAX_RATE);
    let cost = 1_000_000_000 / rate;
    let (family, vip, vip6) = match vip {
        None => (0, [0; 4], [0; 16]),
        Some(core::net::IpAddr::V4(a)) => (4, a.octets(), [0; 16]),
        Some(core::net::IpAddr::V6(a)) => (6, [0; 4], a.octets()),
    };
    TraceConfig {
        on: 1,
        vip,
        port: port.unwrap_or(0).to_be_bytes(),
        family,
        _pad: 0,
        cost_ns: cost,
        burst_ns: u64::from(cost) * u64::from(rate),
        vip6,
    }
}

/// Whether the filter selects an IPv4 packet that arrived as `before` and left as `after`: to
/// the VIP (or port) as it arrived, or from it as it left (a reply, reverse-NATed to the VIP).
#[inline(always)]
#[must_use]
pub fn selects(c: &TraceConfig, before: &FlowKey4, after: &FlowKey4) -> bool {
    let any_vip = c.vip == [0; 4];
    let any_port = c.port == [0; 2];
    c.family != 6
        && (any_vip || before.dst == c.vip || after.src == c.vip)
        && (any_port || before.dport == c.port || after.sport == c.port)
}

/// [`selects`] for an IPv6 packet: not under an IPv4 VIP filter.
#[inline(always)]
#[must_use]
pub fn selects6(c: &TraceConfig, before: &FlowKey6, after: &FlowKey6) -> bool {
    let any_port = c.port == [0; 2];
    c.family != 4
        && (c.family != 6 || before.dst == c.vip6 || after.src == c.vip6)
        && (any_port || before.dport == c.port || after.sport == c.port)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: [u8; 4] = [203, 0, 113, 10];

    fn key(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> FlowKey4 {
        FlowKey4::of(src, dst, sport.to_be_bytes(), dport.to_be_bytes(), 6)
    }

    #[test]
    fn the_filter_selects_to_and_from_the_vip_and_port() {
        let c = config(Some(core::net::IpAddr::from(VIP)), Some(80), 100);
        let client = [198, 51, 100, 2];
        let be = [192, 0, 2, 11];
        // A forwarded packet: to the VIP as it arrived, to the backend as it left.
        let fwd = (key(client, VIP, 40000, 80), key(client, be, 40000, 8080));
        assert!(selects(&c, &fwd.0, &fwd.1));
        // A reply: from the backend as it arrived, from the VIP as it left.
        let rep = (key(be, client, 8080, 40000), key(VIP, client, 80, 40000));
        assert!(selects(&c, &rep.0, &rep.1));
        // Another port of the VIP, another VIP.
        let other = key(client, VIP, 40000, 443);
        assert!(!selects(&c, &other, &other));
        let elsewhere = key(client, [203, 0, 113, 11], 40000, 80);
        assert!(!selects(&c, &elsewhere, &elsewhere));
        // No filter: everything.
        let all = config(None, None, 100);
        assert!(selects(&all, &elsewhere, &elsewhere));
        assert!(selects(&all, &FlowKey4::default(), &FlowKey4::default()));
    }

    /// An IPv6 VIP filter selects its flows both ways and no IPv4 packet; an IPv4 one no
    /// IPv6 packet; no VIP filter, both families, by port alone.
    #[test]
    fn a_vip_filter_selects_its_family_only() {
        let a = |s: &str| s.parse::<core::net::Ipv6Addr>().unwrap();
        let (vip, client, be) = (a("2001:db8:3::10"), a("2001:db8:1::2"), a("2001:db8:2::11"));
        let k6 = |src: core::net::Ipv6Addr, dst: core::net::Ipv6Addr, sport: u16, dport: u16| {
            FlowKey6::of(
                src.octets(),
                dst.octets(),
                sport.to_be_bytes(),
                dport.to_be_bytes(),
                6,
            )
        };
        let c6 = config(Some(vip.into()), Some(80), 100);
        let fwd = (k6(client, vip, 40000, 80), k6(client, be, 40000, 8080));
        assert!(selects6(&c6, &fwd.0, &fwd.1));
        let rep = (k6(be, client, 8080, 40000), k6(vip, client, 80, 40000));
        assert!(selects6(&c6, &rep.0, &rep.1));
        let other = k6(client, a("2001:db8:3::11"), 40000, 80);
        assert!(!selects6(&c6, &other, &other));
        let v4 = key([198, 51, 100, 2], VIP, 40000, 80);
        assert!(
            !selects(&c6, &v4, &v4),
            "an IPv6 VIP filter selects no IPv4 packet"
        );
        let c4 = config(Some(core::net::IpAddr::from(VIP)), None, 100);
        assert!(selects(&c4, &v4, &v4));
        assert!(
            !selects6(&c4, &fwd.0, &fwd.1),
            "an IPv4 VIP filter selects no IPv6 packet"
        );
        let by_port = config(None, Some(80), 100);
        assert!(selects6(&by_port, &fwd.0, &fwd.1) && selects(&by_port, &v4, &v4));
        let p443 = k6(client, vip, 40000, 443);
        assert!(!selects6(&by_port, &p443, &p443));
        let none = config(None, None, 100);
        assert!(selects6(&none, &FlowKey6::default(), &FlowKey6::default()));
    }

    #[test]
    fn the_rate_is_bounded() {
        let c = config(None, None, 0);
        assert_eq!(c.cost_ns, 1_000_000_000, "at least one per second");
        let c = config(None, None, u32::MAX);
        assert_eq!(c.cost_ns, 1_000_000_000 / MAX_RATE);
        assert_eq!(c.burst_ns, u64::from(c.cost_ns) * u64::from(MAX_RATE));
        assert_eq!(c.on, 1);
    }
}
