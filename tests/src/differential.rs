//! The kernel against the model, one frame at a time: the comparison shared by the randomised
//! differential test (`tests/differential.rs`) and the kernel fuzz target (`tests/fuzz`).
//!
//! A frame goes through the real program (`BPF_PROG_TEST_RUN`) and through
//! `lb_common::model`. They must agree on the verdict: the action, the one reason counter that
//! moved, the backend a forwarded frame went to (read from the output's destination), the VIP
//! and port a reply now comes from. And on the output bytes: a passed frame comes out
//! untouched; a forwarded or reverse-NATed one is the input with exactly the fields the
//! translation owns changed (MACs, the rewritten address and port, TTL or hop limit minus one,
//! the checksums), and its checksums are valid exactly when the input's were (incremental
//! updates keep a broken checksum broken, and never break a good one).

use std::net::SocketAddr;

use lb_common::{
    addr::{Addr, as_v4, to_ip},
    csum,
    flow::proto,
    maps::{BackendId, RevKey, RevService, ServiceKey, VipInfo},
    model::{self, Model, ModelAclEntry, ModelAdmission, ModelBackend, ModelVip, Parsed, Verdict},
    verdict::{ALL_REASONS, Reason},
};

use crate::{
    fixture::{FixedResolver, Harness, XDP_DROP, XDP_PASS, XDP_TX},
    packet::{CLIENT_MAC, LB_MAC, Outer, encapsulated, hex},
};

/// [`CONFIG`]'s outer sources and GUE port.
pub const ENCAP_SOURCE4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 2, 1);
pub const ENCAP_SOURCE6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
pub const GUE_PORT: u16 = 6080;

/// What an encapsulated output carries: the outer destination and the inner frame (the L2
/// header kept, the inner IP packet behind it). `None` if `out` is no IPIP or GUE packet.
fn decapsulated(out: &[u8]) -> Option<(Addr, Vec<u8>)> {
    let l3 = if out.get(12..14)? == [0x81, 0x00] {
        18
    } else {
        14
    };
    let v6 = out.get(l3 - 2..l3)? == [0x86, 0xdd];
    let (hlen, next, dst) = if v6 {
        let d: [u8; 16] = out.get(l3 + 24..l3 + 40)?.try_into().ok()?;
        (40, *out.get(l3 + 6)?, d)
    } else {
        let d: [u8; 4] = out.get(l3 + 16..l3 + 20)?.try_into().ok()?;
        (20, *out.get(l3 + 9)?, lb_common::addr::v4_mapped(d))
    };
    let inner = match next {
        4 | 41 => l3 + hlen,
        proto::UDP if out.get(l3 + hlen + 2..l3 + hlen + 4)? == GUE_PORT.to_be_bytes() => {
            l3 + hlen + 8
        }
        _ => return None,
    };
    let mut f = out[..l3].to_vec();
    // The inner packet's ethertype (GUE carries either family).
    let ver = *out.get(inner)? >> 4;
    f[l3 - 2..l3].copy_from_slice(if ver == 6 {
        &[0x86, 0xdd]
    } else {
        &[0x08, 0x00]
    });
    f.extend_from_slice(&out[inner..]);
    Some((dst, f))
}

/// An IPv6 GUE output's outer checksum is valid exactly when the inner segment's is (see
/// `expected`).
fn gue6_checksum_agrees(frame: &[u8], out: &[u8], p: &Parsed) -> Result<(), String> {
    let end = ip_end(frame, p);
    let inner = segment_ok6(&p.src, &p.dst, p.proto, frame.get(p.l4_off..end));
    let l3 = p.l3_off;
    let outer = out.get(l3..l3 + 40).and_then(|o| {
        let (src, dst): ([u8; 16], [u8; 16]) =
            (o[8..24].try_into().ok()?, o[24..40].try_into().ok()?);
        Some(segment_ok6(
            &src,
            &dst,
            proto::UDP,
            out.get(l3 + 40..end + 48),
        ))
    });
    if outer == Some(inner) {
        Ok(())
    } else {
        Err(format!(
            "GUE6 outer checksum validity {outer:?}, inner {inner}"
        ))
    }
}

/// Where the IP packet of `frame` ends by its own length field (IPv4 total length, IPv6
/// payload length), at most the frame's end.
fn ip_end(frame: &[u8], p: &Parsed) -> usize {
    let l3 = p.l3_off;
    let len = |at: usize| {
        frame
            .get(at..at + 2)
            .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    let n = if p.v6 { 40 + len(l3 + 4) } else { len(l3 + 2) };
    (l3 + n).min(frame.len())
}

/// Whether an IPv6 upper-layer `segment` (to the frame's end) of protocol `p` from `src` to
/// `dst` has a valid checksum: with its checksum field in place the sum folds to all ones.
fn segment_ok6(src: &Addr, dst: &Addr, p: u8, segment: Option<&[u8]>) -> bool {
    let Some(seg) = segment else { return false };
    let mut pseudo = [0u8; 40];
    pseudo[..16].copy_from_slice(src);
    pseudo[16..32].copy_from_slice(dst);
    pseudo[32..36].copy_from_slice(&u32::try_from(seg.len()).unwrap_or(0).to_be_bytes());
    pseudo[39] = p;
    csum::fold(csum::sum_words(seg, csum::sum_words(&pseudo, 0))) == 0xffff
}

/// The MAC every backend's next hop has (`FixedResolver::all_on_lo`).
pub const BACKEND_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x11];

/// Every backend and client resolved to `lo` ([`BACKEND_MAC`], `CLIENT_MAC`).
#[must_use]
pub fn resolver() -> FixedResolver {
    FixedResolver::all_on_lo(BACKEND_MAC)
}

/// The state both sides start from, the same in each family: services over backends shared
/// between them, a port forward, a shared endpoint, stateless replies, source affinity, a
/// service without backends, an endpoint ACL, an internal VIP with HA ports, a PIP whose
/// instance is also a backend, and an internal VIP with hairpin SNAT. The close timeout is far longer than any run (the model treats closed
/// flows as within it).
pub const CONFIG: &str = r#"
[agent]
ring_slots = 16384
conntrack_flows = 65536
tcp_close_timeout = 3600
encap_source4 = "192.0.2.1"
encap_source6 = "2001:db8:2::1"
gue_port = 6080

# Floating IP, one VIP per mode and family: a forward packet goes to its backend untouched
# (encapsulated, or for l2 with the MACs only), and an ICMP error about a flow's reply too.
# 192.0.2.11 also serves DNAT services above: its endpoint is shared across data-path modes.
[[service]]
vip = "203.0.113.30:80/tcp"
backends = ["192.0.2.11", "192.0.2.50"]
table_size = 251
floating_ip = "l2"

[[service]]
vip = "203.0.113.31:53/udp"
backends = ["192.0.2.50", "192.0.2.51"]
table_size = 251
floating_ip = "ipip"

[[service]]
vip = "203.0.113.32:443/tcp"
backends = ["192.0.2.50", "192.0.2.51"]
table_size = 251
floating_ip = "gue"

[[service]]
vip = "[2001:db8:3::31]:80/tcp"
backends = ["2001:db8:2::50", "2001:db8:2::51"]
table_size = 251
floating_ip = "ipip"

[[service]]
vip = "[2001:db8:3::32]:53/udp"
backends = ["2001:db8:2::50", "2001:db8:2::51"]
table_size = 251
floating_ip = "gue"

[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11", "192.0.2.12:8080", "192.0.2.13"]
table_size = 251

[[service]]
vip = "203.0.113.10:53/udp"
backends = ["192.0.2.11", "192.0.2.12"]
table_size = 251

[[service]]
vip = "203.0.113.11:443/tcp"
backends = ["192.0.2.14", "192.0.2.15", "192.0.2.16", "192.0.2.17"]
table_size = 1021

# 192.0.2.14:443 also serves this one: a shared endpoint.
[[service]]
vip = "203.0.113.12:443/tcp"
backends = ["192.0.2.14"]
table_size = 251

# Stateless replies: every packet from 192.0.2.18:8443 is a reply, except to the LB itself.
[[service]]
vip = "203.0.113.13:8443/tcp"
backends = ["192.0.2.18"]
table_size = 251
replies = "stateless"

# Source affinity, and source and protocol: the hash covers less of the 5-tuple.
[[service]]
vip = "203.0.113.14:80/tcp"
backends = ["192.0.2.20", "192.0.2.21", "192.0.2.22"]
table_size = 251
distribution = "source-ip"

[[service]]
vip = "203.0.113.14:53/udp"
backends = ["192.0.2.20", "192.0.2.21", "192.0.2.22"]
table_size = 251
distribution = "source-ip-protocol"

# A service with no backend: new flows are dropped.
[[service]]
vip = "203.0.113.11:444/tcp"
table_size = 251

# An endpoint ACL, first match: 198.51.100.2 denied, the rest of .0/30 permitted, all else
# denied by default.
[[service]]
vip = "203.0.113.15:80/tcp"
backends = ["192.0.2.11", "192.0.2.13"]
table_size = 251
acl = [
  { order = 10, action = "deny", prefix = "198.51.100.2/32" },
  { order = 20, action = "permit", prefix = "198.51.100.0/30" },
]

# An internal VIP with HA ports: every TCP and UDP port, for sources in 198.51.100.0/31 only;
# its own backends connecting to it are dropped (no hairpin SNAT). An HA-ports backend serves
# nothing else (it answers from every port).
[[service]]
vip = "203.0.113.16:0/any"
backends = ["192.0.2.30", "192.0.2.31"]
table_size = 251
internal = ["198.51.100.0/31"]

# Hairpin SNAT: an internal VIP whose own backends may connect to it, source-NATed to the VIP
# (the SNAT port chosen as the program chooses it).
[[service]]
vip = "203.0.113.18:80/tcp"
backends = ["192.0.2.40", "192.0.2.41"]
table_size = 251
internal = ["198.51.100.0/31"]
hairpin = "snat"

# A PIP whose instance is also a backend above (of 203.0.113.11:443): every protocol to and
# from it, and a reply its VIP flow refuses still leaves from the PIP.
[[pip]]
pip = "203.0.113.17"
dip = "192.0.2.15"

# The same shapes over IPv6.
[[service]]
vip = "[2001:db8:3::10]:80/tcp"
backends = ["2001:db8:2::11", "[2001:db8:2::12]:8080", "2001:db8:2::13"]
table_size = 251

[[service]]
vip = "[2001:db8:3::10]:53/udp"
backends = ["2001:db8:2::11", "2001:db8:2::12"]
table_size = 251

[[service]]
vip = "[2001:db8:3::11]:443/tcp"
backends = ["2001:db8:2::14", "2001:db8:2::15", "2001:db8:2::16", "2001:db8:2::17"]
table_size = 1021

[[service]]
vip = "[2001:db8:3::12]:443/tcp"
backends = ["2001:db8:2::14"]
table_size = 251

[[service]]
vip = "[2001:db8:3::13]:8443/tcp"
backends = ["2001:db8:2::18"]
table_size = 251
replies = "stateless"

[[service]]
vip = "[2001:db8:3::14]:80/tcp"
backends = ["2001:db8:2::20", "2001:db8:2::21", "2001:db8:2::22"]
table_size = 251
distribution = "source-ip"

[[service]]
vip = "[2001:db8:3::14]:53/udp"
backends = ["2001:db8:2::20", "2001:db8:2::21", "2001:db8:2::22"]
table_size = 251
distribution = "source-ip-protocol"

[[service]]
vip = "[2001:db8:3::11]:444/tcp"
table_size = 251

[[service]]
vip = "[2001:db8:3::15]:80/tcp"
backends = ["2001:db8:2::11", "2001:db8:2::13"]
table_size = 251
acl = [
  { order = 10, action = "deny", prefix = "2001:db8:1::2/128" },
  { order = 20, action = "permit", prefix = "2001:db8:1::/126" },
]

[[service]]
vip = "[2001:db8:3::18]:80/tcp"
backends = ["2001:db8:2::40", "2001:db8:2::41"]
table_size = 251
internal = ["2001:db8:1::/127"]
hairpin = "snat"

[[pip]]
pip = "2001:db8:3::17"
dip = "2001:db8:2::15"

[[service]]
vip = "[2001:db8:3::16]:0/any"
backends = ["2001:db8:2::30", "2001:db8:2::31"]
table_size = 251
internal = ["2001:db8:1::/127"]
"#;

/// Builds the model from what the agent installed in both families' maps (tables, backends,
/// VIPs, reverse-service entries, local addresses): the kernel's job under test is what it
/// does with them. No flows: the model starts with an empty conntrack, as a fresh load does.
///
/// # Panics
/// A map cannot be read.
#[must_use]
pub fn model_of(h: &Harness) -> Model {
    let maps = h.rec.maps();
    let mut m = Model {
        seed: h.seed,
        ..Model::default()
    };
    let mut tables = Vec::new();
    for item in &maps.services {
        let (key, info) = item.expect("service entry");
        tables.push((ServiceKey::from_v4(&key), info));
    }
    for item in &maps.services6 {
        let (key, info) = item.expect("IPv6 service entry");
        tables.push((ServiceKey::from_v6(&key), info));
    }
    for (key, info) in tables {
        let table: Vec<u32> = (info.table_off..info.table_off + info.table_len)
            .map(|i| maps.ring.get(&i, 0).expect("ring slot"))
            .collect();
        for &id in &table {
            if id == 0 || m.backends.contains_key(&id) {
                continue;
            }
            let b = if as_v4(&key.vip).is_some() {
                let b = maps.backends.get(&id, 0).expect("backend");
                ModelBackend {
                    addr: lb_common::addr::v4_mapped(b.addr),
                    port: b.port,
                    active: b.is_active(),
                }
            } else {
                let b = maps.backends6.get(&id, 0).expect("IPv6 backend");
                ModelBackend {
                    addr: b.addr,
                    port: b.port,
                    active: b.is_active(),
                }
            };
            m.backends.insert(id, b);
        }
        m.modes.insert(key, info.distribution());
        if info.floating_ip() != lb_common::encap::mode::DNAT {
            m.encap.insert(key, info.floating_ip());
        }
        m.admission.insert(
            key,
            ModelAdmission {
                acl_id: info.acl_id,
                flags: info.flags,
            },
        );
        m.services.insert(key, table);
    }
    let mut vips: Vec<(Addr, VipInfo)> = Vec::new();
    for item in &maps.vips {
        let (k, v) = item.expect("vip");
        vips.push((lb_common::addr::v4_mapped(k), v));
    }
    for item in &maps.vips6 {
        vips.push(item.expect("IPv6 vip"));
    }
    for (addr, v) in vips {
        m.vips.insert(addr);
        m.vip_policy.insert(
            addr,
            ModelVip {
                ilb_id: v.ilb_id,
                flags: v.flags,
            },
        );
    }
    for item in &maps.pips {
        let (k, e) = item.expect("PIP");
        m.pips.insert(
            lb_common::addr::v4_mapped(k),
            lb_common::addr::v4_mapped(e.addr),
        );
    }
    for item in &maps.pip_rev {
        let (k, e) = item.expect("PIP instance");
        m.pip_rev.insert(
            lb_common::addr::v4_mapped(k),
            lb_common::addr::v4_mapped(e.addr),
        );
    }
    for item in &maps.pips6 {
        let (k, e) = item.expect("IPv6 PIP");
        m.pips.insert(k, e.addr);
    }
    for item in &maps.pip_rev6 {
        let (k, e) = item.expect("IPv6 PIP instance");
        m.pip_rev.insert(k, e.addr);
    }
    // ACL sets: the key is the set id (big-endian) and then the address; its prefix counts
    // the id's 32 bits too.
    let mut entry = |v6: bool, len: u32, data: &[u8], action: u32, rule: u32| {
        let id = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let (addr, len) = if v6 {
            let mut a = [0u8; 16];
            a.copy_from_slice(&data[4..20]);
            (a, len - 32)
        } else {
            let a = lb_common::addr::v4_mapped([data[4], data[5], data[6], data[7]]);
            (a, 96 + len - 32)
        };
        m.acls.entry((id, v6)).or_default().push(ModelAclEntry {
            len: u8::try_from(len).expect("a prefix length"),
            addr,
            action,
            rule,
        });
    };
    for item in &maps.acl {
        let (k, v) = item.expect("ACL entry");
        entry(false, k.prefix_len(), &k.data(), v.action, v.rule);
    }
    for item in &maps.acl6 {
        let (k, v) = item.expect("IPv6 ACL entry");
        entry(true, k.prefix_len(), &k.data(), v.action, v.rule);
    }
    for k in maps.locals6.keys() {
        m.locals.insert(k.expect("local IPv6 address"));
    }
    for k in maps.locals.keys() {
        m.locals
            .insert(lb_common::addr::v4_mapped(k.expect("local address")));
    }
    for item in &maps.revsvc {
        let (k, v) = item.expect("reverse-service entry");
        m.revs.insert(RevKey::from_v4(&k), RevService::from_v4(&v));
    }
    for item in &maps.revsvc6 {
        let (k, v) = item.expect("IPv6 reverse-service entry");
        m.revs.insert(RevKey::from_v6(&k), RevService::from_v6(&v));
    }
    m
}

/// Forgets every tracked flow on both sides: the kernel's conntrack maps emptied, the model's
/// flows and reverse entries cleared. Between fuzz inputs, so that each input is judged from
/// the same state (and replays alike).
///
/// # Panics
/// A conntrack map cannot be read or written.
pub fn forget_flows(h: &mut Harness, model: &mut Model) {
    let maps = h.rec.maps_mut();
    let keys4: Vec<_> = maps
        .side
        .conntrack
        .keys()
        .map(|k| k.expect("key"))
        .collect();
    for k in keys4 {
        // An entry the LRU evicted meanwhile is gone already.
        let _ = maps.side.conntrack.remove(&k);
    }
    let keys6: Vec<_> = maps
        .side
        .conntrack6
        .keys()
        .map(|k| k.expect("key"))
        .collect();
    for k in keys6 {
        let _ = maps.side.conntrack6.remove(&k);
    }
    model.flows.clear();
    model.replies.clear();
    model.hairpins.clear();
    model.hairpin_replies.clear();
}

/// A frame parsed, with where its network payload ends (by the header's length field) and
/// whether its IPv4 header checksum is valid (`true` for IPv6, which has none); `None` when
/// the lengths do not fit the frame.
fn l3_extent(frame: &[u8]) -> Option<(Parsed, usize, bool)> {
    let p = model::parse(frame).ok()?;
    let l3 = p.l3_off;
    let be16 = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    let (end, ip_ok) = if p.v6 {
        (l3 + 40 + be16(l3 + 4)?, true)
    } else {
        (
            l3 + be16(l3 + 2)?,
            csum::ipv4_header(frame.get(l3..l3 + 20)?) == 0,
        )
    };
    Some((p, end, ip_ok))
}

/// Whether the IPv4 header checksum (IPv4) and the TCP/UDP checksum of a parsed frame are
/// valid; `None` when the frame's lengths do not describe a segment inside it.
#[must_use]
pub fn checksums_ok(out: &[u8]) -> Option<(bool, bool)> {
    let (p, end, ip_ok) = l3_extent(out)?;
    let seg = out.get(p.l4_off..end)?;
    let c = match (as_v4(&p.src), as_v4(&p.dst)) {
        (Some(s), Some(d)) if !p.v6 => csum::l4_v4(s, d, p.proto, seg),
        _ => csum::l4_v6(p.src, p.dst, p.proto, seg),
    };
    // A segment summed with its own valid checksum folds to zero (UDP reports that as
    // 0xffff).
    Some((ip_ok, c == 0 || c == 0xffff))
}

/// The checksums of an ICMP (or ICMPv6) packet right after its network header: whether the
/// IPv4 header's (`true` for IPv6, which has none), the ICMP message's (ICMPv6's with its
/// pseudo-header) and an embedded IPv4 header's are valid, and the part of an embedded TCP/UDP
/// checksum that no address or port accounts for (see [`embedded_rest`]). `None` when the
/// lengths do not describe a message inside the frame.
#[must_use]
pub fn icmp_checksums(frame: &[u8]) -> Option<(bool, bool, Option<bool>, Option<u16>)> {
    let (p, end, ip_ok) = l3_extent(frame)?;
    let msg = frame.get(p.l4_off..end)?;
    let icmp_ok = if p.v6 {
        csum::l4_v6(p.src, p.dst, proto::ICMPV6, msg) == 0
    } else {
        csum::ipv4_header(msg) == 0
    };
    let inner = model::embedded_at(frame, p.l4_off, p.v6);
    let inner_ip = match inner {
        Some((ip, _, _)) if !p.v6 => Some(csum::ipv4_header(&frame[ip..ip + 20]) == 0),
        _ => None,
    };
    let inner_l4 = inner.and_then(|(ip, l4, check)| embedded_rest(frame, ip, l4, check?, p.v6));
    Some((ip_ok, icmp_ok, inner_ip, inner_l4))
}

/// What an embedded TCP/UDP checksum covers besides the embedded addresses and ports: the
/// checksum minus their sum, in one's complement (zero as 0). A translation that rewrites
/// only addresses and ports and patches the checksum right leaves it as it was, whether the
/// error carries the whole segment or not. `None` for an IPv4 UDP checksum of zero (none).
fn embedded_rest(frame: &[u8], ip: usize, l4: usize, check: usize, v6: bool) -> Option<u16> {
    let c = u16::from_be_bytes([frame[check], frame[check + 1]]);
    let udp = check == l4 + 6;
    if udp && !v6 && c == 0 {
        return None;
    }
    let addrs = if v6 {
        &frame[ip + 8..ip + 40]
    } else {
        &frame[ip + 12..ip + 20]
    };
    let covered = csum::fold(csum::sum_words(
        &frame[l4..l4 + 4],
        csum::sum_words(addrs, 0),
    ));
    let rest = csum::fold(u32::from(!c) + u32::from(!covered));
    Some(if rest == 0xffff { 0 } else { rest })
}

/// What one comparison found, when the two sides agreed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agreed {
    /// Same verdict and output; the reason counted.
    Verdict(Reason),
    /// The model has no opinion (ICMP): the kernel's reason, not compared.
    OutOfScope(Reason),
}

/// Where a parsed frame's network header keeps what translations rewrite: the address length,
/// the source and destination addresses' offsets, and the TTL's (or hop limit's).
fn ip_fields(p: &Parsed) -> (usize, usize, usize, usize) {
    let l3 = p.l3_off;
    if p.v6 {
        (16, l3 + 8, l3 + 24, l3 + 7)
    } else {
        (4, l3 + 12, l3 + 16, l3 + 8)
    }
}

/// Copies the 2-byte field at `at` from `out` into `e`, where both have it (a checksum the
/// comparison checks for validity instead of by value).
fn take_field(e: &mut [u8], out: &[u8], at: usize) {
    if let (Some(d), Some(s)) = (e.get_mut(at..at + 2), out.get(at..at + 2)) {
        d.copy_from_slice(s);
    }
}

/// The id of the model's backend at `addr`:`port` (an HA-ports backend, which has no port,
/// at any port): the model's own choice `want` when it is that one (an endpoint of two
/// services has two ids), else the first.
fn backend_at(
    model: &Model,
    want: Option<BackendId>,
    addr: &Addr,
    port: [u8; 2],
) -> Option<BackendId> {
    let is = |b: &ModelBackend| b.addr == *addr && (b.port == port || b.port == [0; 2]);
    want.filter(|w| model.backends.get(w).is_some_and(is))
        .or_else(|| {
            model
                .backends
                .iter()
                .find(|(_, b)| is(b))
                .map(|(id, _)| *id)
        })
}

/// The backend `want` if it has address `addr`, else any backend that has it.
fn backend_at_addr(model: &Model, want: BackendId, addr: &Addr) -> Option<BackendId> {
    if model.backends.get(&want).is_some_and(|b| b.addr == *addr) {
        return Some(want);
    }
    model
        .backends
        .iter()
        .find(|(_, b)| b.addr == *addr)
        .map(|(id, _)| *id)
}

/// The output bytes a translated frame must have: `input` with the translation's fields
/// rewritten (addresses, ports, TTL, MACs as `dmac`, or the output's own for a FIB-resolved
/// hop), the checksum fields taken from `out` (they are checked for validity instead).
fn expected(input: &[u8], out: &[u8], p: &Parsed, v: Verdict, model: &Model, fib: bool) -> Vec<u8> {
    let mut e = input.to_vec();
    let (l3, l4) = (p.l3_off, p.l4_off);
    let (alen, src_at, dst_at, ttl_at) = ip_fields(p);
    let tail = |a: &[u8; 16]| a[16 - alen..].to_vec();
    match v {
        Verdict::Forward(id) => {
            let b = model.backends[&id];
            e[dst_at..dst_at + alen].copy_from_slice(&tail(&b.addr));
            if b.port != [0; 2] {
                e[l4 + 2..l4 + 4].copy_from_slice(&b.port);
            }
            e[0..6].copy_from_slice(&BACKEND_MAC);
        }
        Verdict::Reply(vip, port) => {
            e[src_at..src_at + alen].copy_from_slice(&tail(&vip));
            e[l4..l4 + 2].copy_from_slice(&port);
            e[0..6].copy_from_slice(&CLIENT_MAC);
        }
        // To the chosen backend, from the VIP and the SNAT port.
        Verdict::Hairpin(id, snat) => {
            let b = model.backends[&id];
            e[src_at..src_at + alen].copy_from_slice(&input[dst_at..dst_at + alen]);
            e[dst_at..dst_at + alen].copy_from_slice(&tail(&b.addr));
            e[l4..l4 + 2].copy_from_slice(&snat);
            if b.port != [0; 2] {
                e[l4 + 2..l4 + 4].copy_from_slice(&b.port);
            }
            e[0..6].copy_from_slice(&BACKEND_MAC);
        }
        // Back to the connecting backend, from the VIP and the port it connected to.
        Verdict::HairpinReply(client, port, vport) => {
            e[src_at..src_at + alen].copy_from_slice(&input[dst_at..dst_at + alen]);
            e[dst_at..dst_at + alen].copy_from_slice(&tail(&client));
            e[l4..l4 + 2].copy_from_slice(&vport);
            e[l4 + 2..l4 + 4].copy_from_slice(&port);
            e[0..6].copy_from_slice(&BACKEND_MAC);
        }
        // In: to the instance's next hop; out: by the client route.
        Verdict::Pip(to, inbound) => {
            let at = if inbound { dst_at } else { src_at };
            e[at..at + alen].copy_from_slice(&tail(&to));
            e[0..6].copy_from_slice(if inbound { &BACKEND_MAC } else { &CLIENT_MAC });
        }
        Verdict::Echo | Verdict::IcmpToBackend(_) | Verdict::IcmpToClient(..) => {
            return expected_icmp(input, out, p, v, model);
        }
        // The input untouched behind the outer headers (built from the RFCs' layouts in
        // `packet::encapsulated`), or for `l2` the MACs only.
        Verdict::Encap { id, mode, hash } | Verdict::IcmpEncap { id, mode, hash } => {
            let b = model.backends[&id];
            if mode == lb_common::encap::mode::L2 {
                return crate::packet::remac(input, LB_MAC, BACKEND_MAC);
            }
            let src: std::net::IpAddr = if p.v6 {
                ENCAP_SOURCE6.into()
            } else {
                ENCAP_SOURCE4.into()
            };
            let outer = if mode == lb_common::encap::mode::GUE {
                Outer::Gue {
                    sport: lb_common::encap::gue_sport(hash),
                    dport: GUE_PORT,
                }
            } else {
                Outer::Ipip
            };
            let label = if p.v6 {
                lb_common::encap::flow_label(hash)
            } else {
                0
            };
            // The outer headers describe the inner IP packet by its own length field; bytes
            // after it (L2 padding) stay after the outer packet, as they were.
            let end = ip_end(input, p);
            let mut e = encapsulated(
                &input[..end],
                (src, to_ip(&b.addr)),
                outer,
                label,
                (LB_MAC, BACKEND_MAC),
            );
            e.extend_from_slice(&input[end..]);
            // Over IPv6 the GUE checksum is computed from the inner headers alone (Linux's
            // local checksum offload): equal to the full computation exactly when the inner
            // segment's own checksum is valid. Taken from the output, and its validity
            // checked against the inner one's in `compare`.
            if p.v6 && mode == lb_common::encap::mode::GUE {
                let at = p.l3_off + 40 + 6;
                if let (Some(d), Some(o)) = (e.get_mut(at..at + 2), out.get(at..at + 2)) {
                    d.copy_from_slice(o);
                }
            }
            return e;
        }
        Verdict::Other(_) | Verdict::OutOfScope => return e,
    }
    e[6..12].copy_from_slice(&LB_MAC);
    if fib {
        e[0..12].copy_from_slice(&out[0..12]);
    }
    e[ttl_at] = e[ttl_at].wrapping_sub(1);
    let mut take = |at: usize| take_field(&mut e, out, at);
    // The L4 checksum where the program patches one: TCP and UDP, for IPv4 in a first
    // fragment only (a later one has no L4 header), after the real header length (options).
    let (l4, first) = if p.v6 {
        (l4, true)
    } else {
        let frag = u16::from_be_bytes([input[l3 + 6], input[l3 + 7]]) & 0x1fff;
        (l3 + usize::from(input[l3] & 0x0f) * 4, frag == 0)
    };
    if !p.v6 {
        take(l3 + 10);
    }
    match p.proto {
        proto::TCP if first => take(l4 + 16),
        proto::UDP if first => take(l4 + 6),
        // A PIP patches the ICMPv6 checksum (its pseudo-header has the addresses).
        proto::ICMPV6 if p.v6 && p.icmp6.is_some() => take(l4 + 2),
        _ => {}
    }
    e
}

/// [`expected`] for ICMP the LB answers or sends on: an echo reply is the request turned
/// around (MACs and addresses swapped, TTL or hop limit 64, the reply type); an error about a
/// tracked flow has the embedded address and port the flow's NAT owns rewritten, and the
/// outer destination (to the backend) or source (from the backend itself, to the client).
/// Every checksum field is taken from `out` (they are checked for validity instead).
fn expected_icmp(input: &[u8], out: &[u8], p: &Parsed, v: Verdict, model: &Model) -> Vec<u8> {
    let mut e = input.to_vec();
    let (l3, l4) = (p.l3_off, p.l4_off);
    let (alen, src_at, dst_at, ttl_at) = ip_fields(p);
    let tail = |a: &[u8; 16]| a[16 - alen..].to_vec();
    let mut takes = vec![l4 + 2];
    if !p.v6 {
        takes.push(l3 + 10);
    }
    if v == Verdict::Echo {
        e[0..6].copy_from_slice(&input[6..12]);
        e[6..12].copy_from_slice(&input[0..6]);
        e[src_at..src_at + alen].copy_from_slice(&input[dst_at..dst_at + alen]);
        e[dst_at..dst_at + alen].copy_from_slice(&input[src_at..src_at + alen]);
        e[ttl_at] = 64;
        e[l4] = if p.v6 { 129 } else { 0 };
    } else {
        let (ip, il4, check) =
            model::embedded_at(input, l4, p.v6).expect("a matched error embeds a packet");
        let (isrc, idst) = if p.v6 {
            (ip + 8, ip + 24)
        } else {
            (ip + 12, ip + 16)
        };
        if let Verdict::IcmpToBackend(id) = v {
            let b = model.backends[&id];
            e[dst_at..dst_at + alen].copy_from_slice(&tail(&b.addr));
            e[isrc..isrc + alen].copy_from_slice(&tail(&b.addr));
            // An HA-ports backend answers from the port the flow was sent to.
            if b.port != [0; 2] {
                e[il4..il4 + 2].copy_from_slice(&b.port);
            }
            e[0..6].copy_from_slice(&BACKEND_MAC);
        } else if let Verdict::IcmpToClient(vip, port) = v {
            // The backend's own error leaves from the VIP; a router's keeps its source.
            if input[src_at..src_at + alen] == input[idst..idst + alen] {
                e[src_at..src_at + alen].copy_from_slice(&tail(&vip));
            }
            e[idst..idst + alen].copy_from_slice(&tail(&vip));
            e[il4 + 2..il4 + 4].copy_from_slice(&port);
            e[0..6].copy_from_slice(&CLIENT_MAC);
        }
        e[6..12].copy_from_slice(&LB_MAC);
        e[ttl_at] = e[ttl_at].wrapping_sub(1);
        if !p.v6 {
            takes.push(ip + 10);
        }
        takes.extend(check);
    }
    for at in takes {
        take_field(&mut e, out, at);
    }
    e
}

/// Runs `frame` through the program in `h` and through `model` (which tracks its new flows as
/// the program does); `Err` describes the first disagreement.
///
/// # Errors
/// A mismatch: in the verdict, the counters, the action, or the output bytes.
///
/// # Panics
/// `BPF_PROG_TEST_RUN` fails, or the counters cannot be read.
pub fn compare(h: &mut Harness, model: &mut Model, frame: &[u8]) -> Result<Agreed, String> {
    let want = model.classify(frame);
    // The echo rate limit depends on the clock, which the model does not see: a full bucket
    // before each request the model answers.
    if want == Verdict::Echo {
        h.refill_echo();
    }
    let (action, out, before, after) = h.run_counted(frame);
    let moved: Vec<Reason> = ALL_REASONS
        .iter()
        .copied()
        .filter(|r| after[*r as usize] != before[*r as usize])
        .collect();
    let [reason] = moved[..] else {
        return Err(format!(
            "counters moved {moved:?} (model {want:?}); frame {}",
            hex(frame)
        ));
    };
    let translated = matches!(
        reason,
        Reason::ForwardEncap
            | Reason::Forward
            | Reason::ForwardFib
            | Reason::Reply
            | Reason::PipIn
            | Reason::PipOut
            | Reason::EchoReply
            | Reason::IcmpToBackend
            | Reason::IcmpToClient
            | Reason::HairpinSnat
            | Reason::HairpinReply
    );
    let action_ok = match reason {
        _ if translated => action == XDP_TX,
        r if r.is_drop() => action == XDP_DROP,
        _ => action == XDP_PASS || action == XDP_TX,
    };
    if want == Verdict::OutOfScope {
        return if action_ok {
            Ok(Agreed::OutOfScope(reason))
        } else {
            Err(format!(
                "{reason:?} with action {action}; frame {}",
                hex(frame)
            ))
        };
    }
    // The output, parsed once: its 5-tuple (the backend or VIP it went to or from) and, for a
    // PIP, its addresses.
    let out_p = model::parse(&out).ok();
    let out_flow = out_p.as_ref().and_then(|p| p.flow).map(|(k, _)| k);
    let got = match (reason, out_flow) {
        // The backend the kernel chose, from the output's destination.
        (Reason::Forward | Reason::ForwardFib, Some(k)) => {
            let w = match want {
                Verdict::Forward(w) => Some(w),
                _ => None,
            };
            backend_at(model, w, &k.dst, k.dport)
                .map_or(Verdict::Other(Reason::Forward), Verdict::Forward)
        }
        (Reason::Reply, Some(k)) => Verdict::Reply(k.src, k.sport),
        (Reason::HairpinReply, Some(k)) => Verdict::HairpinReply(k.dst, k.dport, k.sport),
        // The backend from the output's destination, as for a forward.
        (Reason::HairpinSnat, Some(k)) => {
            let w = match want {
                Verdict::Hairpin(w, _) => Some(w),
                _ => None,
            };
            backend_at(model, w, &k.dst, k.dport)
                .map_or(Verdict::Other(reason), |id| Verdict::Hairpin(id, k.sport))
        }
        (Reason::EchoReply, _) => Verdict::Echo,
        // Floating IP: the backend from the outer destination (or for `l2` the output's own
        // destination MAC's next hop: every backend has the same, so the model's is taken if
        // the output is the untouched input); the mode and hash as the model has them when
        // the bytes agree (checked below).
        (Reason::ForwardEncap | Reason::IcmpToBackend, _)
            if matches!(want, Verdict::Encap { .. } | Verdict::IcmpEncap { .. })
                || decapsulated(&out).is_some()
                || reason == Reason::ForwardEncap =>
        {
            let (Verdict::Encap { id, mode, hash } | Verdict::IcmpEncap { id, mode, hash }) = want
            else {
                return Err(format!(
                    "kernel {reason:?} (encapsulated), model {want:?}; frame {}; out {}",
                    hex(frame),
                    hex(&out)
                ));
            };
            let dst = decapsulated(&out).map(|(d, _)| d);
            let at = match dst {
                Some(d) => backend_at_addr(model, id, &d),
                None => Some(id),
            };
            match (at, reason) {
                (Some(id), Reason::ForwardEncap) => Verdict::Encap { id, mode, hash },
                (Some(id), _) => Verdict::IcmpEncap { id, mode, hash },
                (None, r) => Verdict::Other(r),
            }
        }
        // The backend or VIP from the output's embedded packet.
        (Reason::IcmpToBackend | Reason::IcmpToClient, _) => {
            match out_p
                .as_ref()
                .and_then(|o| model::embedded(&out, o.l4_off, o.v6))
            {
                Some(k) if reason == Reason::IcmpToClient => Verdict::IcmpToClient(k.dst, k.dport),
                Some(k) => {
                    let w = match want {
                        Verdict::IcmpToBackend(w) => Some(w),
                        _ => None,
                    };
                    backend_at(model, w, &k.src, k.sport)
                        .map_or(Verdict::Other(reason), Verdict::IcmpToBackend)
                }
                None => Verdict::Other(reason),
            }
        }
        (Reason::PipIn | Reason::PipOut, _) => match &out_p {
            Some(o) if reason == Reason::PipIn => Verdict::Pip(o.dst, true),
            Some(o) => Verdict::Pip(o.src, false),
            None => Verdict::Other(reason),
        },
        (r, _) => Verdict::Other(r),
    };
    let fail = |what: &str| {
        Err(format!(
            "{what}: kernel {got:?} (action {action}), model {want:?}; frame {}; out {}",
            hex(frame),
            hex(&out)
        ))
    };
    if got != want {
        return fail("verdicts differ");
    }
    if !action_ok {
        return fail("action");
    }
    if action == XDP_PASS && reason != Reason::PassNoNextHop && out != frame {
        return fail("a passed frame was changed");
    }
    if translated {
        let p = model::parse(frame).map_err(|r| format!("translated, yet {r:?}"))?;
        let e = expected(frame, &out, &p, want, model, reason == Reason::ForwardFib);
        if out != e {
            return fail(&format!("output bytes (expected {})", hex(&e)));
        }
        // An encapsulated packet is the input untouched behind headers whose every byte
        // (checksums included) the comparison above fixed: the checks below read the inner
        // packet's fields at the input's offsets.
        if let Verdict::Encap { mode, .. } | Verdict::IcmpEncap { mode, .. } = want {
            if p.v6
                && mode == lb_common::encap::mode::GUE
                && let Err(why) = gue6_checksum_agrees(frame, &out, &p)
            {
                return fail(&why);
            }
            return Ok(Agreed::Verdict(reason));
        }
        // Checksum validity, where the segment is a whole TCP or UDP one (a PIP also
        // translates fragments, options and other protocols).
        if p.flow.is_some() && checksums_ok(frame) != checksums_ok(&out) {
            return fail(&format!(
                "checksum validity (in {:?}, out {:?})",
                checksums_ok(frame),
                checksums_ok(&out)
            ));
        }
        // And for ICMP: the outer, message and embedded checksums (the embedded TCP/UDP one
        // by what it covers besides the rewritten fields).
        let icmp = if p.v6 { proto::ICMPV6 } else { proto::ICMP };
        if p.proto == icmp && icmp_checksums(frame) != icmp_checksums(&out) {
            return fail(&format!(
                "ICMP checksums (in {:?}, out {:?})",
                icmp_checksums(frame),
                icmp_checksums(&out)
            ));
        }
        if !p.v6
            && p.flow.is_some()
            && p.proto == proto::UDP
            && frame[p.l4_off + 6..p.l4_off + 8] == [0, 0]
        {
            // An IPv4 UDP datagram without a checksum keeps none.
            if out[p.l4_off + 6..p.l4_off + 8] != [0, 0] {
                return fail("an IPv4 UDP checksum of zero was written");
            }
        }
    }
    Ok(Agreed::Verdict(reason))
}

/// `SocketAddr` of a model backend (its family's address and port).
#[must_use]
pub fn backend_addr(b: &ModelBackend) -> SocketAddr {
    SocketAddr::new(to_ip(&b.addr), u16::from_be_bytes(b.port))
}
