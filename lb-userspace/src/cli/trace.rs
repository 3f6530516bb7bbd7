//! `lb trace`: asks the agent to turn sampling on (the agent is the only writer of the trace
//! config, and turns it off when the time is up, even if this process dies), reads the
//! records from the pinned ring buffer as they come, and asks the agent to turn it off again.
//! Events the program's rate limit or a full ring refused are counted, and the summary says
//! how many.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, PerCpuArray, RingBuf};
use lb_common::{
    flow::{FlowKey4, FlowKey6},
    trace::{LOST_RATE, LOST_RING, TraceEvent, TraceEvent6},
    verdict::ALL_REASONS,
};
use tokio::io::unix::AsyncFd;

use super::{Format, TraceArgs};
use crate::api::{self, Request, Response};

/// What one trace saw.
#[derive(Debug, Default)]
pub struct Summary {
    pub events: u64,
    /// Records of a length neither record type has (another build's program).
    pub undecoded: u64,
    pub lost_rate: u64,
    pub lost_ring: u64,
}

/// Runs one trace: prints each record as it comes (a line of text, or a JSON line), and at
/// the end a summary.
///
/// # Errors
/// The agent refuses the trace or cannot be reached, or the pinned maps cannot be read.
pub async fn run(socket: &Path, a: &TraceArgs, format: Format) -> anyhow::Result<Summary> {
    let req = Request::Trace {
        vip: a.vip,
        port: a.port,
        rate: a.rate,
        seconds: a.seconds,
    };
    let (ring, lost, interfaces) = match api::call(socket, &req).await? {
        Response::Tracing {
            ring,
            lost,
            interfaces,
            ..
        } => (ring, lost, interfaces),
        Response::Error { kind, message } => {
            return Err(super::output::Failure::new(kind, message).into());
        }
        other => bail!("unexpected answer to a trace: {other:?}"),
    };
    let result = read(&ring, &lost, &interfaces, a, format).await;
    // Off again whatever happened (the agent's timer is the safety net).
    let stopped = api::call(socket, &Request::TraceStop).await;
    let summary = result?;
    stopped.context("turning tracing off")?;
    Ok(summary)
}

async fn read(
    ring: &str,
    lost: &str,
    interfaces: &[(u32, String)],
    a: &TraceArgs,
    format: Format,
) -> anyhow::Result<Summary> {
    let lost_map: PerCpuArray<MapData, u64> = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(
        MapData::from_pin(lost).with_context(|| format!("opening {lost}"))?,
    ))?;
    let lost_now = |slot: u32| -> u64 { lost_map.get(&slot, 0).map_or(0, |v| v.iter().sum()) };
    let (rate0, ring0) = (lost_now(LOST_RATE), lost_now(LOST_RING));
    let rb = RingBuf::try_from(aya::maps::Map::RingBuf(
        MapData::from_pin(ring).with_context(|| format!("opening {ring}"))?,
    ))?;
    // SAFETY: the ring owns its map fd, open for as long as the `AsyncFd` holds the ring, and
    // its `as_raw_fd` always gives that fd.
    let mut fd = unsafe { AsyncFd::register(rb) }
        .map_err(|e| anyhow::anyhow!("polling the trace ring: {e}"))?;
    let mut s = Summary::default();
    let mut first = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(a.seconds));
    'outer: loop {
        let mut guard = tokio::select! {
            g = fd.readable_mut() => g?,
            () = tokio::time::sleep_until(deadline) => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let rb = guard.get_inner_mut();
        while let Some(item) = rb.next() {
            let Some(e) = Record::decode(&item) else {
                s.undecoded += 1;
                continue;
            };
            let t0 = *first.get_or_insert(e.time_ns);
            println!("{}", line(&e, t0, interfaces, format));
            s.events += 1;
            if a.count.is_some_and(|c| s.events >= u64::from(c)) {
                break 'outer;
            }
        }
        guard.clear_ready();
    }
    s.lost_rate = lost_now(LOST_RATE).saturating_sub(rate0);
    s.lost_ring = lost_now(LOST_RING).saturating_sub(ring0);
    Ok(s)
}

/// One record of either family: the verdict, and the 5-tuples as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub time_ns: u64,
    pub ifindex: u32,
    pub reason: u32,
    pub action: u32,
    pub len: u32,
    pub before: String,
    pub after: String,
}

impl Record {
    /// A ring record, told apart by its length: an IPv4 one ([`TraceEvent`]) or an IPv6 one
    /// ([`TraceEvent6`]); `None` for any other length.
    #[must_use]
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() == size_of::<TraceEvent>() {
            let e: TraceEvent = bytemuck::pod_read_unaligned(b);
            return Some(Self::from(&e));
        }
        if b.len() == size_of::<TraceEvent6>() {
            let e: TraceEvent6 = bytemuck::pod_read_unaligned(b);
            return Some(Self::from(&e));
        }
        None
    }
}

impl From<&TraceEvent> for Record {
    fn from(e: &TraceEvent) -> Self {
        Self {
            time_ns: e.time_ns,
            ifindex: e.ifindex,
            reason: e.reason,
            action: e.action,
            len: e.len,
            before: flow_text(&e.before),
            after: flow_text(&e.after),
        }
    }
}

impl From<&TraceEvent6> for Record {
    fn from(e: &TraceEvent6) -> Self {
        Self {
            time_ns: e.time_ns,
            ifindex: e.ifindex,
            reason: e.reason,
            action: e.action,
            len: e.len,
            before: flow_text6(&e.before),
            after: flow_text6(&e.after),
        }
    }
}

/// One record, as text or as a JSON line.
#[must_use]
pub fn line(e: &Record, t0: u64, interfaces: &[(u32, String)], format: Format) -> String {
    let reason = ALL_REASONS
        .iter()
        .find(|r| **r as u32 == e.reason)
        .map_or("unknown", |r| r.name());
    let action = match e.action {
        0 => "aborted",
        1 => "drop",
        2 => "pass",
        3 => "tx",
        4 => "redirect",
        _ => "unknown",
    };
    let iface = interfaces
        .iter()
        .find(|(i, _)| *i == e.ifindex)
        .map_or_else(|| format!("if{}", e.ifindex), |(_, n)| n.clone());
    let t = e.time_ns.saturating_sub(t0) as f64 / 1e9;
    match format {
        Format::Json => serde_json::json!({
            "time_s": t,
            "interface": iface,
            "len": e.len,
            "before": e.before,
            "after": e.after,
            "reason": reason,
            "action": action,
        })
        .to_string(),
        Format::Table => format!(
            "{t:>10.6} {iface:<6} {} => {} {reason} ({action}, {} bytes)",
            e.before, e.after, e.len
        ),
    }
}

/// `198.51.100.2:40000 > 203.0.113.10:80 tcp`, or `-` for a frame that is not IPv4 TCP/UDP.
fn flow_text(k: &FlowKey4) -> String {
    if k.proto == 0 {
        return "-".into();
    }
    format!(
        "{}:{} > {}:{} {}",
        std::net::Ipv4Addr::from(k.src),
        u16::from_be_bytes(k.sport),
        std::net::Ipv4Addr::from(k.dst),
        u16::from_be_bytes(k.dport),
        if k.proto == 6 { "tcp" } else { "udp" }
    )
}

/// `[2001:db8:1::2]:40000 > [2001:db8:3::10]:80 tcp`; the addresses alone for IPv6 that is
/// not TCP/UDP right after the fixed header; `-` for a frame that is not IPv6.
fn flow_text6(k: &FlowKey6) -> String {
    let (src, dst) = (
        std::net::Ipv6Addr::from(k.src),
        std::net::Ipv6Addr::from(k.dst),
    );
    if k.proto == 0 {
        if k.src == [0; 16] && k.dst == [0; 16] {
            return "-".into();
        }
        return format!("{src} > {dst}");
    }
    format!(
        "[{src}]:{} > [{dst}]:{} {}",
        u16::from_be_bytes(k.sport),
        u16::from_be_bytes(k.dport),
        if k.proto == 6 { "tcp" } else { "udp" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_as_before_after_and_verdict() {
        let e = TraceEvent {
            time_ns: 1_500_000_000,
            ifindex: 2,
            reason: 0,
            action: 3,
            len: 74,
            before: FlowKey4::of(
                [198, 51, 100, 2],
                [203, 0, 113, 10],
                40000u16.to_be_bytes(),
                80u16.to_be_bytes(),
                6,
            ),
            after: FlowKey4::of(
                [198, 51, 100, 2],
                [192, 0, 2, 11],
                40000u16.to_be_bytes(),
                80u16.to_be_bytes(),
                6,
            ),
        };
        let ifs = [(2, "l0".to_owned())];
        let e = Record::decode(bytemuck::bytes_of(&e)).unwrap();
        let t = line(&e, 1_000_000_000, &ifs, Format::Table);
        assert_eq!(
            t,
            "  0.500000 l0     198.51.100.2:40000 > 203.0.113.10:80 tcp => 198.51.100.2:40000 > 192.0.2.11:80 tcp forward (tx, 74 bytes)"
        );
        let j: serde_json::Value =
            serde_json::from_str(&line(&e, 1_000_000_000, &ifs, Format::Json)).unwrap();
        assert_eq!(j["after"], "198.51.100.2:40000 > 192.0.2.11:80 tcp");
        assert_eq!(j["reason"], "forward");
        assert_eq!(
            line(&(&TraceEvent::default()).into(), 0, &[], Format::Table)
                .split_whitespace()
                .nth(2),
            Some("-")
        );
    }

    /// An IPv6 record reads by its length, with bracketed addresses; one of another length is
    /// not read as either.
    #[test]
    fn an_ipv6_record_reads_by_its_length() {
        let a = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
        let e = TraceEvent6 {
            time_ns: 2_000_000_000,
            ifindex: 2,
            reason: 0,
            action: 3,
            len: 94,
            before: FlowKey6::of(
                a("2001:db8:1::2"),
                a("2001:db8:3::10"),
                40000u16.to_be_bytes(),
                80u16.to_be_bytes(),
                6,
            ),
            after: FlowKey6::of(
                a("2001:db8:1::2"),
                a("2001:db8:2::11"),
                40000u16.to_be_bytes(),
                80u16.to_be_bytes(),
                6,
            ),
        };
        let r = Record::decode(bytemuck::bytes_of(&e)).unwrap();
        assert_eq!(
            line(&r, 1_000_000_000, &[(2, "l0".to_owned())], Format::Table),
            "  1.000000 l0     [2001:db8:1::2]:40000 > [2001:db8:3::10]:80 tcp => [2001:db8:1::2]:40000 > [2001:db8:2::11]:80 tcp forward (tx, 94 bytes)"
        );
        let icmp = TraceEvent6 {
            before: FlowKey6::of(a("2001:db8:1::2"), a("2001:db8:3::10"), [0; 2], [0; 2], 0),
            ..e
        };
        assert_eq!(Record::from(&icmp).before, "2001:db8:1::2 > 2001:db8:3::10");
        assert_eq!(Record::from(&TraceEvent6::default()).after, "-");
        assert_eq!(Record::decode(&[0u8; 64]), None);
    }
}
