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

use crate::{flow::FlowKey4, impl_user_pod};

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
    pub _pad: [u8; 2],
    /// Cost of one event and the burst, in nanoseconds of bucket credit (`RateState::take`).
    pub cost_ns: u32,
    pub burst_ns: u64,
}
const _: () = assert!(size_of::<TraceConfig>() == 24);

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

impl_user_pod!(TraceConfig, TraceEvent);

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
/// of the packets `vip` and `port` select (`None`: any).
#[must_use]
pub fn config(vip: Option<[u8; 4]>, port: Option<u16>, rate: u32) -> TraceConfig {
    let rate = rate.clamp(1, MAX_RATE);
    let cost = 1_000_000_000 / rate;
    TraceConfig {
        on: 1,
        vip: vip.unwrap_or_default(),
        port: port.unwrap_or(0).to_be_bytes(),
        _pad: [0; 2],
        cost_ns: cost,
        burst_ns: u64::from(cost) * u64::from(rate),
    }
}

/// Whether the filter selects a packet that arrived as `before` and left as `after`: to the
/// VIP (or port) as it arrived, or from it as it left (a reply, reverse-NATed to the VIP).
#[inline(always)]
#[must_use]
pub fn selects(c: &TraceConfig, before: &FlowKey4, after: &FlowKey4) -> bool {
    let any_vip = c.vip == [0; 4];
    let any_port = c.port == [0; 2];
    (any_vip || before.dst == c.vip || after.src == c.vip)
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
        let c = config(Some(VIP), Some(80), 100);
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
