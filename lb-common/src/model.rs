//! A host model of the fast path's first stages (parse, classify, select), written from the
//! same rules the XDP program uses (the hash, the slot rule, the header checks, the flow-state
//! rules of [`crate::conn`], the verdict reasons), for both families. It is the oracle of the
//! randomized differential test and the subject of the fuzz target (`lb-common/fuzz`).
//!
//! Scope: load-balanced TCP/UDP services of either family with conntrack (one forward entry
//! per flow, replies matched through the backends' reverse-service entries, reverse entries
//! for shared backend endpoints, TCP state), stateless replies, HA ports, endpoint ACLs and
//! internal VIPs (admission of new flows, first match compiled to longest prefix, a backend's
//! own connection dropped as `drop_hairpin`), PIPs (every protocol, both ways), malformed and
//! unusual frames, IPv6 extension headers and neighbour discovery, ICMP of both families (echo
//! requests to a VIP answered, errors about tracked flows sent to the party that owns the
//! flow, other ICMP to a VIP dropped), and hairpin SNAT (a VIP's own backend connecting to it:
//! the SNAT port choice, both entries, both translations). Echo replies are modelled as within
//! the rate limit (the differential comparison refills the bucket before each request). A
//! hairpin reply whose connecting backend is gone (sent by the FIB) is
//! [`Verdict::OutOfScope`]. Closed flows are modelled as inside their close time (the
//! differential test runs the program with a close timeout far longer than itself; a fixture
//! covers expiry).
//!
//! One representation for both families, the maps' agnostic one ([`crate::addr`]): an
//! address is 16 bytes (IPv4 mapped), a 5-tuple a [`FlowKey6`] of such addresses. A tuple's
//! family is its packet's: an IPv6 packet to `::ffff:a.b.c.d` is not to the IPv4 VIP
//! `a.b.c.d` (the IPv6 maps never hold a mapped address), which the lookups below enforce.

use std::collections::{HashMap, HashSet};

use crate::{
    addr::{Addr, as_v4, v4_mapped},
    conn,
    flow::{FlowKey4, FlowKey6, proto},
    hash::{dist, dist_hash, dist_hash6},
    hdr::{ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, IPV4_FRAG_MASK, IPV6_MAX_EXT, ext, icmpv6_is_ndp},
    maglev::slot,
    maps::{
        ACL_HAIRPIN, ACL_PERMIT, BackendId, HAIRPIN_PORT_TRIES, REV_F_SHARED, REV_F_STATELESS,
        RevKey, RevService, SVC_F_INTERNAL, ServiceKey, VIP_F_HA_PORTS, VIP_F_HAIRPIN_SNAT,
        VIP_F_NO_ECHO, hairpin_port,
    },
    verdict::Reason,
};

/// What the parser finds in a frame with a readable IPv4 or IPv6 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub l3_off: usize,
    /// Whether the network header is IPv6.
    pub v6: bool,
    /// Source and destination, in map form.
    pub src: Addr,
    pub dst: Addr,
    /// The protocol: IPv4's field; IPv6's next header after the extension headers (the
    /// fixed header's when the walk did not get there).
    pub proto: u8,
    /// TTL or hop limit.
    pub ttl: u8,
    /// Offset of the transport header, once found.
    pub l4_off: usize,
    /// Why it cannot be balanced, if it cannot.
    pub problem: Option<Reason>,
    /// The 5-tuple (map form) and its TCP flags (0 for UDP), when balanceable.
    pub flow: Option<(FlowKey6, u8)>,
    /// An ICMPv6 packet's type and code, when its header's first word is in the frame, and
    /// whether it comes right after the fixed header.
    pub icmp6: Option<(u8, u8, bool)>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parses a frame as `lb-ebpf/src/parse.rs` (IPv4) and `parse6.rs` (IPv6) do. `Err` is the
/// pass reason of a frame without a readable network header.
///
/// # Errors
/// `PassShort` or `PassNotIpv4`.
pub fn parse(frame: &[u8]) -> Result<Parsed, Reason> {
    let len = frame.len();
    if len < 14 {
        return Err(Reason::PassShort);
    }
    let mut ether_type = be16(frame, 12);
    let mut off = 14;
    if ether_type == ETH_P_8021Q {
        if len < 18 {
            return Err(Reason::PassShort);
        }
        ether_type = be16(frame, 16);
        off = 18;
    }
    match ether_type {
        ETH_P_IPV4 => parse4(frame, off),
        ETH_P_IPV6 => parse6(frame, off),
        _ => Err(Reason::PassNotIpv4),
    }
}

fn parse4(frame: &[u8], off: usize) -> Result<Parsed, Reason> {
    let len = frame.len();
    if off + 20 > len {
        return Err(Reason::PassShort);
    }
    let ip = &frame[off..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let tot_len = usize::from(be16(ip, 2));
    let frag = be16(ip, 6);
    let l3_room = len - off;
    let mut p = Parsed {
        l3_off: off,
        v6: false,
        src: v4_mapped([ip[12], ip[13], ip[14], ip[15]]),
        dst: v4_mapped([ip[16], ip[17], ip[18], ip[19]]),
        proto: ip[9],
        ttl: ip[8],
        l4_off: off + 20,
        problem: None,
        flow: None,
        icmp6: None,
    };
    p.problem = if ip[0] >> 4 != 4 || ihl < 20 || tot_len < ihl || tot_len > l3_room {
        Some(Reason::DropMalformed)
    } else if frag & IPV4_FRAG_MASK != 0 {
        Some(Reason::DropFragment)
    } else if ihl != 20 {
        Some(Reason::DropIpOptions)
    } else if p.proto != proto::TCP && p.proto != proto::UDP {
        Some(Reason::DropProto)
    } else {
        None
    };
    if p.problem.is_none() {
        transport(frame, &mut p, off + tot_len);
    }
    Ok(p)
}

fn parse6(frame: &[u8], off: usize) -> Result<Parsed, Reason> {
    let len = frame.len();
    if off + 40 > len {
        return Err(Reason::PassShort);
    }
    let ip = &frame[off..];
    let addr = |at: usize| -> Addr { ip[at..at + 16].try_into().expect("16 bytes") };
    let end = off + 40 + usize::from(be16(ip, 4));
    let mut p = Parsed {
        l3_off: off,
        v6: true,
        src: addr(8),
        dst: addr(24),
        proto: ip[6],
        ttl: ip[7],
        l4_off: off + 40,
        problem: None,
        flow: None,
        icmp6: None,
    };
    if ip[0] >> 4 != 6 || end > len {
        p.problem = Some(Reason::DropMalformed);
        return Ok(p);
    }
    match walk6(frame, ip[6], off + 40, end) {
        Ok((next, l4_off)) => (p.proto, p.l4_off) = (next, l4_off),
        Err(r) => {
            p.problem = Some(r);
            return Ok(p);
        }
    }
    if p.proto == proto::TCP || p.proto == proto::UDP {
        transport(frame, &mut p, end);
    } else {
        if p.proto == proto::ICMPV6 && p.l4_off + 4 <= len {
            p.icmp6 = Some((frame[p.l4_off], frame[p.l4_off + 1], p.l4_off == off + 40));
        }
        p.problem = Some(Reason::DropProto);
    }
    Ok(p)
}

/// `parse6::walk`: at most [`IPV6_MAX_EXT`] extension headers, each 4 bytes readable.
fn walk6(frame: &[u8], mut next: u8, mut off: usize, end: usize) -> Result<(u8, usize), Reason> {
    for _ in 0..IPV6_MAX_EXT {
        match next {
            ext::HOP_BY_HOP | ext::DEST_OPTS | ext::ROUTING => {
                if off + 4 > frame.len() {
                    return Err(Reason::DropExtHeaders);
                }
                if next == ext::ROUTING && frame[off + 3] != 0 {
                    return Err(Reason::DropRoutingHeader);
                }
                next = frame[off];
                off += (usize::from(frame[off + 1]) + 1) * 8;
            }
            ext::FRAGMENT => return Err(Reason::DropFragment),
            _ => break,
        }
    }
    if matches!(
        next,
        ext::HOP_BY_HOP | ext::DEST_OPTS | ext::ROUTING | ext::FRAGMENT
    ) || off > end
    {
        return Err(Reason::DropExtHeaders);
    }
    Ok((next, off))
}

/// The TCP or UDP header at `p.l4_off`, in a packet whose network payload ends at `end`.
fn transport(frame: &[u8], p: &mut Parsed, end: usize) {
    let (len, l4_off) = (frame.len(), p.l4_off);
    let l4_len = end - l4_off;
    let (ports, flags);
    if p.proto == proto::TCP {
        if l4_off + 20 > len {
            p.problem = Some(Reason::DropMalformed);
            return;
        }
        let t = &frame[l4_off..];
        let doff = usize::from(t[12] >> 4) * 4;
        if doff < 20 || doff > l4_len {
            p.problem = Some(Reason::DropMalformed);
            return;
        }
        flags = t[13];
        ports = [t[0], t[1], t[2], t[3]];
    } else {
        if l4_off + 8 > len {
            p.problem = Some(Reason::DropMalformed);
            return;
        }
        let u = &frame[l4_off..];
        let ulen = usize::from(be16(u, 4));
        // The UDP checksum is mandatory over IPv6 (RFC 8200 8.1).
        if ulen < 8 || ulen > l4_len || (p.v6 && u[6..8] == [0, 0]) {
            p.problem = Some(Reason::DropMalformed);
            return;
        }
        flags = 0;
        ports = [u[0], u[1], u[2], u[3]];
    }
    let key = FlowKey6::of(
        p.src,
        p.dst,
        [ports[0], ports[1]],
        [ports[2], ports[3]],
        p.proto,
    );
    p.flow = Some((key, flags));
}

/// ICMP echo request types, IPv4's and ICMPv6's.
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

/// Whether an ICMP type is an error that embeds the offending packet: IPv4's destination
/// unreachable, time exceeded and parameter problem (`icmp.rs`), ICMPv6's 1–4 (`icmp6.rs`).
#[must_use]
pub const fn icmp_error(ty: u8, v6: bool) -> bool {
    if v6 {
        ty >= 1 && ty <= 4
    } else {
        matches!(ty, 3 | 11 | 12)
    }
}

/// Where the embedded packet of an ICMP error whose header is at `off` has its network
/// header, its transport header, and the embedded TCP/UDP checksum field (`None` when the
/// error does not carry it that far), when the fast path matches it: a plain header (IPv4
/// without options, IPv6 with TCP or UDP right after it) of its family, then TCP or UDP with
/// both ports in the frame.
#[must_use]
pub fn embedded_at(frame: &[u8], off: usize, v6: bool) -> Option<(usize, usize, Option<usize>)> {
    let ip = off + 8;
    let (hlen, proto_at) = if v6 { (40, 6) } else { (20, 9) };
    let h = frame.get(ip..ip + hlen)?;
    frame.get(ip + hlen..ip + hlen + 4)?;
    let plain = if v6 { h[0] >> 4 == 6 } else { h[0] == 0x45 };
    let p = h[proto_at];
    if !plain || (p != proto::TCP && p != proto::UDP) {
        return None;
    }
    let l4 = ip + hlen;
    let check = l4 + if p == proto::UDP { 6 } else { 16 };
    Some((ip, l4, (check + 2 <= frame.len()).then_some(check)))
}

/// The 5-tuple (map form) of the embedded packet of an ICMP error whose header is at `off`
/// (see [`embedded_at`]).
#[must_use]
pub fn embedded(frame: &[u8], off: usize, v6: bool) -> Option<FlowKey6> {
    let (ip, l4, _) = embedded_at(frame, off, v6)?;
    let h = &frame[ip..];
    let (src, dst, p): (Addr, Addr, u8) = if v6 {
        (
            h[8..24].try_into().expect("16 bytes"),
            h[24..40].try_into().expect("16 bytes"),
            h[6],
        )
    } else {
        (
            v4_mapped([h[12], h[13], h[14], h[15]]),
            v4_mapped([h[16], h[17], h[18], h[19]]),
            h[9],
        )
    };
    let t = &frame[l4..l4 + 4];
    Some(FlowKey6::of(src, dst, [t[0], t[1]], [t[2], t[3]], p))
}

/// A backend as the model knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelBackend {
    /// Map form: the family is the backend's.
    pub addr: Addr,
    pub port: [u8; 2],
    pub active: bool,
}

/// The model's verdict on one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Client → VIP, sent to this backend.
    Forward(BackendId),
    /// Backend → client reply of a tracked flow, its source rewritten to this VIP (map form)
    /// and port.
    Reply(Addr, [u8; 2]),
    /// To a PIP or from its instance: 1:1 NAT to this address (the instance inbound, `true`;
    /// the PIP outbound), sent.
    Pip(Addr, bool),
    /// An echo request to a VIP, answered from it (`echo_reply`).
    Echo,
    /// An ICMP error about a tracked flow (its embedded packet went VIP:port → client), sent
    /// to the backend that owns the flow: the outer destination and the embedded source
    /// rewritten to it, the embedded port too unless the backend has none (HA ports).
    IcmpToBackend(BackendId),
    /// An ICMP error from a backend's side about a tracked flow (its embedded packet went
    /// client → backend), sent to the client: the embedded destination rewritten to this VIP
    /// (map form) and port, and the outer source too when the backend itself sent it.
    IcmpToClient(Addr, [u8; 2]),
    /// A hairpin flow (a VIP's own backend → the VIP), sent to this backend with its source
    /// rewritten to the VIP and this SNAT port.
    Hairpin(BackendId, [u8; 2]),
    /// A hairpin flow's reply (chosen backend → VIP:SNAT port), sent to the connecting
    /// backend: its source rewritten to the VIP and the port the flow was sent to (the third
    /// field), its destination to the connecting backend's address and port.
    HairpinReply(Addr, [u8; 2], [u8; 2]),
    /// Every other outcome, by its reason.
    Other(Reason),
    /// Client → VIP of a floating-IP service (`mode`, `encap::mode`): sent untouched to this
    /// backend, encapsulated (or for `l2` with the MACs only); `hash` is the flow's 5-tuple
    /// hash (the GUE source port, the IPv6 flow label).
    Encap { id: BackendId, mode: u32, hash: u32 },
    /// An ICMP error to a VIP about a floating-IP flow's reply: sent untouched to the flow's
    /// backend, encapsulated like the flow's packets (`hash`: the flow's).
    IcmpEncap { id: BackendId, mode: u32, hash: u32 },
    /// Outside the model: a hairpin reply whose connecting backend is gone (the FIB's).
    OutOfScope,
}

/// A tracked flow's forward entry as the model keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelFlow {
    pub backend: BackendId,
    /// The `conn::CT_*` state.
    pub tcp: u8,
}

/// A VIP's policy fields (`VipInfo`): its internal source set and flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelVip {
    /// The internal VIP's source set in [`Model::acls`]; 0 for a public VIP.
    pub ilb_id: u32,
    /// `VIP_F_*`.
    pub flags: u32,
}

/// A service's admission fields (`ServiceInfo`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelAdmission {
    /// The endpoint's ACL set in [`Model::acls`]; 0 for none.
    pub acl_id: u32,
    /// `SVC_F_*`.
    pub flags: u32,
}

/// One entry of an ACL set as the LPM maps hold it: the first `len` bits of a map-form
/// address (an IPv4 /L is 96 + L), and the action (`ACL_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelAclEntry {
    pub len: u8,
    pub addr: Addr,
    pub action: u32,
    /// The deciding rule (for an `ACL_HAIRPIN` host entry: the backend id of that host).
    pub rule: u32,
}

/// Whether the first `len` bits of `a` and `b` are equal.
fn prefix_eq(a: &Addr, b: &Addr, len: u8) -> bool {
    let (bytes, bits) = (usize::from(len / 8), len % 8);
    a[..bytes] == b[..bytes]
        && (bits == 0 || {
            let mask = 0xffu8 << (8 - bits);
            a[bytes] & mask == b[bytes] & mask
        })
}

/// The state the fast path reads, and the flows it has tracked so far, of both families (map
/// form: see the module doc).
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub seed: u32,
    /// Each service's lookup table (slot → backend id, 0 for none).
    pub services: HashMap<ServiceKey, Vec<BackendId>>,
    /// Each service's distribution mode (`crate::hash::dist`); absent: the 5-tuple.
    pub modes: HashMap<ServiceKey, u32>,
    /// Each floating-IP service's mode (`crate::encap::mode`); absent: DNAT.
    pub encap: HashMap<ServiceKey, u32>,
    pub backends: HashMap<BackendId, ModelBackend>,
    pub vips: HashSet<Addr>,
    /// The backends' reverse-service entries (`LB_REVSVC4`, `LB_REVSVC6`).
    pub revs: HashMap<RevKey, RevService>,
    /// The LB host's own addresses (`LB_LOCAL4`).
    pub locals: HashSet<Addr>,
    /// Tracked client → VIP flows.
    pub flows: HashMap<FlowKey6, ModelFlow>,
    /// Reverse entries (flows to shared backend endpoints): reply 5-tuple → (VIP, VIP port,
    /// backend).
    pub replies: HashMap<FlowKey6, (Addr, [u8; 2], BackendId)>,
    /// VIPs' policy fields; a VIP absent here is public, with no flags.
    pub vip_policy: HashMap<Addr, ModelVip>,
    /// Services' admission fields; a service absent here admits every source.
    pub admission: HashMap<ServiceKey, ModelAdmission>,
    /// ACL sets by (id, IPv6): each family's sets live in its own map.
    pub acls: HashMap<(u32, bool), Vec<ModelAclEntry>>,
    /// PIP → its instance, and instance → its PIP (`LB_PIPS*`, `LB_PIP_REV*`).
    pub pips: HashMap<Addr, Addr>,
    pub pip_rev: HashMap<Addr, Addr>,
    /// Tracked hairpin flows (connecting backend → VIP:port): the chosen backend and the
    /// SNAT port (`CONN_HAIRPIN`).
    pub hairpins: HashMap<FlowKey6, (BackendId, [u8; 2])>,
    /// Their replies' entries (chosen backend → VIP:SNAT port, `CONN_HAIRPIN_REV`).
    pub hairpin_replies: HashMap<FlowKey6, ModelHairpinReply>,
}

/// A hairpin flow's reply entry: where its replies go back to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelHairpinReply {
    /// The connecting backend's address and port.
    pub client: Addr,
    pub port: [u8; 2],
    /// The VIP port the flow was sent to.
    pub vport: [u8; 2],
    /// The connecting backend's id (its next hop takes the replies).
    pub peer: BackendId,
}

/// What a packet from a backend endpoint is (`conntrack::FromBackend`).
enum FromBackend {
    /// The reply of a tracked flow: rewritten from this VIP and port; the forward entry's new
    /// TCP state and key, when it has one to update.
    Reply(Addr, [u8; 2], Option<(u8, FlowKey6)>),
    /// A flow was found but refuses it (another backend's, or a reused port: marked stale).
    Refused,
    /// A hairpin flow's reply.
    Hairpin,
    None,
}

/// Whether a map-form address belongs to the family of a packet (`v6`).
fn of_family(a: &Addr, v6: bool) -> bool {
    as_v4(a).is_none() == v6
}

/// The flow hash of a tuple of family `v6`, as that family's program computes it.
fn hash(flow: &FlowKey6, v6: bool, mode: u32, seed: u32) -> u32 {
    match (v6, as_v4(&flow.src), as_v4(&flow.dst)) {
        (false, Some(s), Some(d)) => dist_hash(
            &FlowKey4::of(s, d, flow.sport, flow.dport, flow.proto),
            mode,
            seed,
        ),
        _ => dist_hash6(flow, mode, seed),
    }
}

impl Model {
    fn live(&self, id: BackendId) -> Option<ModelBackend> {
        self.backends
            .get(&id)
            .copied()
            .filter(|b| id != 0 && b.active)
    }

    /// Whether there is a service at `key` for a packet of family `v6`.
    fn has_service(&self, key: &ServiceKey, v6: bool) -> bool {
        of_family(&key.vip, v6) && self.services.contains_key(key)
    }

    fn is_vip(&self, a: &Addr, v6: bool) -> bool {
        of_family(a, v6) && self.vips.contains(a)
    }

    /// A packet to a PIP or from a PIP's instance, as `pip.rs` (IPv4) and `pip6.rs` (IPv6)
    /// treat it; `None` when it is neither (or, for IPv4, too malformed to translate: it is
    /// then looked at as any other packet). Every protocol; IPv4 fragments and options are
    /// translated, an IPv6 packet the walk could not pass keeps its drop reason.
    fn pip(&self, p: &Parsed, v6: bool) -> Option<Verdict> {
        let (to, inbound) = if of_family(&p.dst, v6)
            && let Some(i) = self.pips.get(&p.dst)
        {
            (*i, true)
        } else if of_family(&p.src, v6)
            && let Some(a) = self.pip_rev.get(&p.src)
        {
            (*a, false)
        } else {
            return None;
        };
        match p.problem {
            None | Some(Reason::DropProto) => {}
            Some(Reason::DropMalformed) if v6 => return Some(Verdict::Other(Reason::PassNotOurs)),
            Some(Reason::DropMalformed) => return None,
            Some(r) if v6 => return Some(Verdict::Other(r)),
            Some(_) => {}
        }
        if p.ttl <= 1 {
            return Some(Verdict::Other(Reason::DropTtl));
        }
        Some(Verdict::Pip(to, inbound))
    }

    /// The action of the longest prefix of set `id` (of family `v6`) that holds `src`.
    fn acl(&self, id: u32, v6: bool, src: &Addr) -> Option<u32> {
        self.acl_entry(id, v6, src).map(|e| e.action)
    }

    /// The longest prefix of set `id` (of family `v6`) that holds `src`.
    fn acl_entry(&self, id: u32, v6: bool, src: &Addr) -> Option<ModelAclEntry> {
        self.acls
            .get(&(id, v6))?
            .iter()
            .filter(|e| prefix_eq(&e.addr, src, e.len))
            .max_by_key(|e| e.len)
            .copied()
    }

    /// Whether the endpoint ACL of service `key` admits `src` (a service without one admits
    /// every source).
    fn endpoint_admits(&self, key: &ServiceKey, v6: bool, src: &Addr) -> bool {
        let adm = self.admission.get(key).copied().unwrap_or_default();
        adm.acl_id == 0 || self.acl(adm.acl_id, v6, src) == Some(ACL_PERMIT)
    }

    /// The table's backend for a new flow of service `key`, by the service's distribution
    /// mode (`select::from_table`); `Err` is `drop_no_backend`.
    fn table_pick(
        &self,
        key: &ServiceKey,
        flow: &FlowKey6,
        v6: bool,
    ) -> Result<(BackendId, ModelBackend), Verdict> {
        let table = &self.services[key];
        let len = u32::try_from(table.len()).expect("table fits u32");
        let mode = self.modes.get(key).copied().unwrap_or(dist::FIVE_TUPLE);
        let no_backend = Verdict::Other(Reason::DropNoBackend);
        let s = slot(hash(flow, v6, mode, self.seed), len).ok_or(no_backend)?;
        let id = table[s as usize];
        self.live(id).map(|b| (id, b)).ok_or(no_backend)
    }

    /// Admission of a new flow of service `key`, as `policy::admit`: an internal VIP's source
    /// set first, then the endpoint's ACL. `Ok(true)`: a backend's own connection, which
    /// hairpin SNAT takes (the hairpin program checks the endpoint's ACL itself); `Err` is
    /// the verdict of a refused flow.
    fn admit(&self, key: &ServiceKey, flow: &FlowKey6, v6: bool) -> Result<bool, Verdict> {
        let adm = self.admission.get(key).copied().unwrap_or_default();
        if adm.flags & SVC_F_INTERNAL != 0
            && self.is_vip(&flow.dst, v6)
            && let Some(vip) = self.vip_policy.get(&flow.dst)
            && vip.ilb_id != 0
        {
            match self.acl(vip.ilb_id, v6, &flow.src) {
                Some(ACL_PERMIT) => {}
                Some(ACL_HAIRPIN) if vip.flags & VIP_F_HAIRPIN_SNAT != 0 => return Ok(true),
                Some(ACL_HAIRPIN) => return Err(Verdict::Other(Reason::DropHairpin)),
                _ => return Err(Verdict::Other(Reason::DropNotInternal)),
            }
        }
        if !self.endpoint_admits(key, v6, &flow.src) {
            return Err(Verdict::Other(Reason::DropAcl));
        }
        Ok(false)
    }

    /// What the fast path does with `frame`, tracking new flows as it does.
    pub fn classify(&mut self, frame: &[u8]) -> Verdict {
        let p = match parse(frame) {
            Ok(p) => p,
            Err(r) => return Verdict::Other(r),
        };
        let v6 = p.v6;
        // Neighbour discovery is the kernel's before anything is looked up (`six::classify`).
        if p.icmp6.is_some_and(|(t, _, _)| icmpv6_is_ndp(t)) {
            return Verdict::Other(Reason::PassNdp);
        }
        let Some((flow, flags)) = p.flow else {
            return if v6 {
                self.not_balanced6(frame, &p)
            } else {
                self.not_balanced4(frame, &p)
            };
        };
        let key = ServiceKey {
            vip: flow.dst,
            port: flow.dport,
            proto: flow.proto,
            _pad: 0,
        };
        if self.has_service(&key, v6) {
            return self.forward(key, flow, flags, p.ttl, v6);
        }
        let refused = match self.reply(&flow, flags, v6) {
            FromBackend::Reply(vip, port, update) => {
                if p.ttl <= 1 {
                    return Verdict::Other(Reason::DropTtl);
                }
                if let Some((tcp, fwd)) = update
                    && let Some(f) = self.flows.get_mut(&fwd)
                {
                    f.tcp = tcp;
                }
                return Verdict::Reply(vip, port);
            }
            FromBackend::Hairpin => {
                if p.ttl <= 1 {
                    return Verdict::Other(Reason::DropTtl);
                }
                let r = self.hairpin_replies[&flow];
                if self.live(r.peer).is_none() {
                    return Verdict::OutOfScope;
                }
                return Verdict::HairpinReply(r.client, r.port, r.vport);
            }
            FromBackend::Refused => true,
            FromBackend::None => false,
        };
        // A PIP, after services and replies (an instance can also be a VIP's backend), also
        // for a packet its flow refused as a reply: its client may have reused the port to
        // reach the instance through the PIP.
        if let Some(v) = self.pip(&p, v6) {
            return v;
        }
        // HA ports: a port no exact service has is the catch-all's (VIP, 0, protocol), after
        // replies and PIPs (the kernel's order).
        if self.is_vip(&flow.dst, v6)
            && self
                .vip_policy
                .get(&flow.dst)
                .is_some_and(|v| v.flags & VIP_F_HA_PORTS != 0)
        {
            let any = ServiceKey {
                port: [0; 2],
                ..key
            };
            if self.has_service(&any, v6) {
                return self.forward(any, flow, flags, p.ttl, v6);
            }
        }
        Verdict::Other(if self.is_vip(&flow.dst, v6) {
            Reason::DropNoService
        } else if refused {
            Reason::PassNotReply
        } else {
            Reason::PassNotOurs
        })
    }

    /// An IPv4 packet that is not TCP/UDP to balance, in `classify.rs`'s order: an ICMP error
    /// from a backend's side about a tracked flow, a PIP, ICMP to a VIP, anything else to a
    /// VIP (dropped), the rest (the kernel's).
    fn not_balanced4(&mut self, frame: &[u8], p: &Parsed) -> Verdict {
        // Well-formed ICMP (no options, not a fragment: the parser's `drop_proto`).
        let icmp = p.proto == proto::ICMP && p.problem == Some(Reason::DropProto);
        if icmp && let Some(v) = self.error_from_backend(frame, p) {
            return v;
        }
        if let Some(v) = self.pip(p, false) {
            return v;
        }
        if !self.is_vip(&p.dst, false) {
            return Verdict::Other(Reason::PassNotOurs);
        }
        if !icmp {
            return Verdict::Other(p.problem.unwrap_or(Reason::DropMalformed));
        }
        let Some(&[ty, code]) = frame.get(p.l4_off..p.l4_off + 4).map(|h| &h[..2]) else {
            return Verdict::Other(Reason::DropMalformed);
        };
        // An internal VIP does not exist outside its internal prefixes, for ICMP errors too.
        let internal = self.internal_source(p);
        if icmp_error(ty, false) {
            if !internal {
                return Verdict::Other(Reason::DropNotInternal);
            }
            return self.error_to_vip(frame, p);
        }
        if (ty, code) != (ICMP_ECHO_REQUEST, 0) {
            return Verdict::Other(Reason::DropProto);
        }
        self.echo(p, internal)
    }

    /// An IPv6 packet that is not TCP/UDP to balance, in `six::classify`'s order (neighbour
    /// discovery is out already): a PIP (an instance's ICMPv6 error only after `lb_icmp6`
    /// found no flow for it), an ICMPv6 error right after the fixed header (to a VIP, or from
    /// a backend's side), an echo request to a VIP, anything else to a VIP (dropped), the rest
    /// (the kernel's).
    fn not_balanced6(&mut self, frame: &[u8], p: &Parsed) -> Verdict {
        let error = p.icmp6.is_some_and(|(t, _, _)| icmp_error(t, true));
        let to_pip = of_family(&p.dst, true) && self.pips.contains_key(&p.dst);
        let from_instance = of_family(&p.src, true) && self.pip_rev.contains_key(&p.src);
        if to_pip || (from_instance && !error) {
            return self.pip6(p);
        }
        let to_vip = self.is_vip(&p.dst, true);
        if error && p.icmp6.is_some_and(|(_, _, direct)| direct) {
            if to_vip {
                if !self.internal_source(p) {
                    return Verdict::Other(Reason::DropNotInternal);
                }
                return self.error_to_vip(frame, p);
            }
            if let Some(v) = self.error_from_backend(frame, p) {
                return v;
            }
            // `lb_icmp6` hands an error about no flow of ours to `lb_pip6`.
            return self.pip6(p);
        }
        if !to_vip {
            return Verdict::Other(Reason::PassNotOurs);
        }
        // An echo request behind extension headers is not answered (`drop_proto`).
        if p.icmp6 == Some((ICMPV6_ECHO_REQUEST, 0, true)) {
            return self.echo(p, self.internal_source(p));
        }
        Verdict::Other(p.problem.unwrap_or(Reason::DropMalformed))
    }

    /// [`Self::pip`] for IPv6, where `lb_pip6` passes what neither a PIP nor an instance.
    fn pip6(&self, p: &Parsed) -> Verdict {
        self.pip(p, true)
            .unwrap_or(Verdict::Other(Reason::PassNotOurs))
    }

    /// Whether the source of a packet to a VIP may reach it: any source for a public VIP, the
    /// internal prefixes' for an internal one.
    fn internal_source(&self, p: &Parsed) -> bool {
        let vip = self.vip_policy.get(&p.dst).copied().unwrap_or_default();
        vip.ilb_id == 0 || self.acl(vip.ilb_id, p.v6, &p.src) == Some(ACL_PERMIT)
    }

    /// An echo request to a VIP: answered, unless from outside an internal VIP's prefixes or
    /// to a VIP with echo off.
    fn echo(&self, p: &Parsed, internal: bool) -> Verdict {
        if !internal {
            return Verdict::Other(Reason::DropNotInternal);
        }
        if self
            .vip_policy
            .get(&p.dst)
            .is_some_and(|v| v.flags & VIP_F_NO_ECHO != 0)
        {
            return Verdict::Other(Reason::DropEchoLimited);
        }
        Verdict::Echo
    }

    /// An ICMP error to a VIP (its header at `p.l4_off`): about a reply the LB sent (embedded
    /// VIP:port → client), it goes to the backend of the flow that reply belongs to. Only a
    /// forward entry counts, whatever its TCP state; an unmatched error is a counted drop.
    fn error_to_vip(&self, frame: &[u8], p: &Parsed) -> Verdict {
        let unmatched = Verdict::Other(Reason::DropIcmpUnmatched);
        let Some(key) = embedded(frame, p.l4_off, p.v6) else {
            return unmatched;
        };
        // A family's conntrack holds only its own flows (an IPv6 VIP is never mapped).
        let fwd = key.reversed();
        if !of_family(&fwd.dst, p.v6) {
            return unmatched;
        }
        let Some(f) = self
            .flows
            .get(&fwd)
            .filter(|f| self.live(f.backend).is_some())
        else {
            return unmatched;
        };
        if p.ttl <= 1 {
            return Verdict::Other(Reason::DropTtl);
        }
        // The flow's service (its exact port, else the VIP's HA-ports catch-all).
        let svc = ServiceKey {
            vip: fwd.dst,
            port: fwd.dport,
            proto: fwd.proto,
            _pad: 0,
        };
        let any = ServiceKey {
            port: [0; 2],
            ..svc
        };
        let mode = if self.has_service(&svc, p.v6) {
            self.encap.get(&svc)
        } else {
            self.encap.get(&any)
        };
        if let Some(&mode) = mode {
            return Verdict::IcmpEncap {
                id: f.backend,
                mode,
                hash: hash(&fwd, p.v6, dist::FIVE_TUPLE, self.seed),
            };
        }
        Verdict::IcmpToBackend(f.backend)
    }

    /// An ICMP error (its header at `p.l4_off`) about a packet the LB sent to a backend
    /// (embedded client → backend): the embedded packet reversed is a reply of the flow,
    /// matched as one (no TCP flags: an error changes no flow's state). `None` when it is no
    /// such error.
    fn error_from_backend(&mut self, frame: &[u8], p: &Parsed) -> Option<Verdict> {
        if !icmp_error(*frame.get(p.l4_off)?, p.v6) {
            return None;
        }
        let key = embedded(frame, p.l4_off, p.v6)?;
        let FromBackend::Reply(vip, vport, _) = self.reply(&key.reversed(), 0, p.v6) else {
            return None;
        };
        if p.ttl <= 1 {
            return Some(Verdict::Other(Reason::DropTtl));
        }
        Some(Verdict::IcmpToClient(vip, vport))
    }

    fn forward(
        &mut self,
        key: ServiceKey,
        flow: FlowKey6,
        flags: u8,
        ttl: u8,
        v6: bool,
    ) -> Verdict {
        let v = self.forward_dnat(key, flow, flags, ttl, v6);
        match (v, self.encap.get(&key)) {
            // A floating-IP service's backend gets the packet as it is.
            (Verdict::Forward(id), Some(&mode)) => Verdict::Encap {
                id,
                mode,
                hash: hash(&flow, v6, dist::FIVE_TUPLE, self.seed),
            },
            _ => v,
        }
    }

    fn forward_dnat(
        &mut self,
        key: ServiceKey,
        flow: FlowKey6,
        flags: u8,
        ttl: u8,
        v6: bool,
    ) -> Verdict {
        let tcp = flow.proto == proto::TCP;
        if tcp && conn::invalid_flags(flags) {
            return Verdict::Other(Reason::DropTcpFlags);
        }
        if ttl <= 1 {
            return Verdict::Other(Reason::DropTtl);
        }
        let syn = tcp && conn::is_syn(flags);
        // A tracked hairpin flow is the hairpin program's, whatever its state.
        if !syn && self.hairpins.contains_key(&flow) {
            return self.hairpin(flow, syn, v6);
        }
        if !syn
            && let Some(f) = self.flows.get(&flow).copied()
            && conn::translates(f.tcp, 0, 0, 0)
            && self.live(f.backend).is_some()
        {
            let tcp_state = if tcp {
                conn::after_forward(f.tcp, flags)
            } else {
                f.tcp
            };
            self.flows.insert(
                flow,
                ModelFlow {
                    backend: f.backend,
                    tcp: tcp_state,
                },
            );
            return Verdict::Forward(f.backend);
        }
        match self.admit(&key, &flow, v6) {
            Err(v) => return v,
            Ok(true) => return self.hairpin(flow, syn, v6),
            Ok(false) => {}
        }
        let (id, b) = match self.table_pick(&key, &flow, v6) {
            Ok(x) => x,
            Err(v) => return v,
        };
        if tcp && !syn && conn::is_teardown(flags) {
            return Verdict::Forward(id);
        }
        self.flows.insert(
            flow,
            ModelFlow {
                backend: id,
                tcp: if syn { conn::CT_SYN } else { 0 },
            },
        );
        // One entry per key: the kernel's overwrote whatever was there.
        self.hairpins.remove(&flow);
        self.hairpin_replies.remove(&flow);
        // Replies of a floating-IP flow never come back: no reverse entry.
        if !self.encap.contains_key(&key)
            && self
                .revs
                .get(&RevKey::of(b.addr, b.port, flow.proto))
                .is_some_and(|r| r.flags & REV_F_SHARED != 0)
        {
            let reply = flow.reply_from(b.addr, b.port);
            self.replies.insert(reply, (flow.dst, flow.dport, id));
            self.hairpin_replies.remove(&reply);
        }
        Verdict::Forward(id)
    }

    /// The hairpin program (`hairpin.rs`, `hairpin6.rs`) on a connecting backend's packet
    /// (TTL already checked): a tracked flow goes on to its backend unless a SYN re-picks; a
    /// new one is checked again (the VIP's hairpin entry for the source, hairpin SNAT on, the
    /// endpoint's ACL), picks its backend by the service's mode and its SNAT port by the whole
    /// 5-tuple (the first of [`HAIRPIN_PORT_TRIES`] candidates no service listens on and no
    /// other flow's reply entry holds), and tracks both entries.
    fn hairpin(&mut self, flow: FlowKey6, syn: bool, v6: bool) -> Verdict {
        if !syn
            && let Some(&(id, snat)) = self.hairpins.get(&flow)
            && self.live(id).is_some()
        {
            return Verdict::Hairpin(id, snat);
        }
        let key = ServiceKey {
            vip: flow.dst,
            port: flow.dport,
            proto: flow.proto,
            _pad: 0,
        };
        let Some(vip) = self
            .has_service(&key, v6)
            .then(|| self.vip_policy.get(&flow.dst).copied())
            .flatten()
        else {
            return Verdict::Other(Reason::DropNoService);
        };
        let peer = match self.acl_entry(vip.ilb_id, v6, &flow.src) {
            Some(e) if vip.ilb_id != 0 && e.action == ACL_HAIRPIN => e.rule,
            _ => return Verdict::Other(Reason::DropHairpin),
        };
        if vip.flags & VIP_F_HAIRPIN_SNAT == 0 {
            return Verdict::Other(Reason::DropHairpin);
        }
        if !self.endpoint_admits(&key, v6, &flow.src) {
            return Verdict::Other(Reason::DropAcl);
        }
        let (id, b) = match self.table_pick(&key, &flow, v6) {
            Ok(x) => x,
            Err(v) => return v,
        };
        // The whole 5-tuple's hash, whatever the service's mode.
        let ports_hash = hash(&flow, v6, dist::FIVE_TUPLE, self.seed);
        let mut rev = FlowKey6::of(b.addr, flow.dst, b.port, [0; 2], flow.proto);
        let free = (0..HAIRPIN_PORT_TRIES).find_map(|attempt| {
            let port = hairpin_port(ports_hash, attempt).to_be_bytes();
            rev.dport = port;
            let listening = self.services.contains_key(&ServiceKey { port, ..key });
            let held = self.flows.contains_key(&rev)
                || self.replies.contains_key(&rev)
                || self.hairpins.contains_key(&rev)
                || self
                    .hairpin_replies
                    .get(&rev)
                    .is_some_and(|r| (r.client, r.port) != (flow.src, flow.sport));
            (!listening && !held).then_some((port, rev))
        });
        let Some((snat, rev)) = free else {
            return Verdict::Other(Reason::DropHairpinNoPort);
        };
        self.hairpin_replies.insert(
            rev,
            ModelHairpinReply {
                client: flow.src,
                port: flow.sport,
                vport: flow.dport,
                peer,
            },
        );
        self.hairpins.insert(flow, (id, snat));
        // One entry per key: the kernel's overwrote whatever was there.
        self.flows.remove(&flow);
        self.flows.remove(&rev);
        self.replies.remove(&rev);
        Verdict::Hairpin(id, snat)
    }

    /// A packet from a backend endpoint, as `conntrack::from_backend`: the reply of a tracked
    /// flow (no forward state to update for a stateless endpoint's reply), refused by the flow
    /// it names (another backend's, or a reused port: the flow is marked stale), a hairpin
    /// flow's reply, or nothing of ours (no flow, or a stateless endpoint's packet to the LB).
    fn reply(&mut self, flow: &FlowKey6, flags: u8, v6: bool) -> FromBackend {
        if !of_family(&flow.src, v6) {
            return FromBackend::None;
        }
        // An HA-ports backend's entry has port 0: it answers from every port, and its
        // replies come from the port the client sent to.
        let Some(mut rev) = self
            .revs
            .get(&RevKey::of(flow.src, flow.sport, flow.proto))
            .or_else(|| self.revs.get(&RevKey::of(flow.src, [0; 2], flow.proto)))
            .copied()
        else {
            return FromBackend::None;
        };
        if rev.vport == [0; 2] {
            rev.vport = flow.sport;
        }
        if rev.flags & REV_F_STATELESS != 0 {
            if self.locals.contains(&flow.dst) {
                return FromBackend::None;
            }
            return FromBackend::Reply(rev.vip, rev.vport, None);
        }
        let hairpin = self.hairpin_replies.contains_key(flow);
        let shared = rev.flags & REV_F_SHARED != 0;
        if shared && hairpin {
            return FromBackend::Hairpin;
        }
        let own = shared.then(|| self.replies.get(flow).copied()).flatten();
        let (vip, vport, backend) = own.unwrap_or((rev.vip, rev.vport, rev.backend));
        let fwd = flow.forward_of_reply(vip, vport);
        let Some(f) = self.flows.get(&fwd).copied() else {
            // A hairpin reply goes to VIP:SNAT port, which no forward key has.
            return if hairpin {
                FromBackend::Hairpin
            } else {
                FromBackend::None
            };
        };
        if f.backend != backend || !conn::translates(f.tcp, 0, 0, 0) {
            return FromBackend::Refused;
        }
        let tcp = if flow.proto == proto::TCP { flags } else { 0 };
        match conn::after_reply(f.tcp, tcp) {
            Ok(n) => FromBackend::Reply(vip, vport, Some((n, fwd))),
            Err(stale) => {
                self.flows.insert(
                    fwd,
                    ModelFlow {
                        backend: f.backend,
                        tcp: stale,
                    },
                );
                FromBackend::Refused
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::hdr::TCP_SYN;

    fn tcp_syn() -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = proto::TCP;
        ip[12..16].copy_from_slice(&[198, 51, 100, 2]);
        ip[16..20].copy_from_slice(&[203, 0, 113, 10]);
        let t = &mut f[34..54];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&80u16.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = TCP_SYN;
        f
    }

    /// An IPv6 SYN behind the extension headers `exts` (type, 8 bytes each).
    fn tcp6_syn(exts: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40];
        f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        f[14] = 0x60;
        let plen = u16::try_from(exts.len() * 8 + 20).unwrap();
        f[18..20].copy_from_slice(&plen.to_be_bytes());
        f[20] = exts.first().copied().unwrap_or(proto::TCP);
        f[21] = 64;
        f[22..24].copy_from_slice(&[0x20, 0x01]);
        f[38..40].copy_from_slice(&[0x20, 0x01]);
        for (i, _) in exts.iter().enumerate() {
            let next = exts.get(i + 1).copied().unwrap_or(proto::TCP);
            f.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 0]);
        }
        let mut t = [0u8; 20];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&80u16.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = TCP_SYN;
        f.extend_from_slice(&t);
        f
    }

    #[test]
    fn parses_a_syn_and_every_truncation_is_defined() {
        let f = tcp_syn();
        let p = parse(&f).unwrap();
        let (k, flags) = p.flow.unwrap();
        assert!(conn::is_syn(flags) && k.dport == 80u16.to_be_bytes() && p.problem.is_none());
        assert_eq!(k.dst, v4_mapped([203, 0, 113, 10]));
        for len in 0..f.len() {
            let r = parse(&f[..len]);
            match len {
                0..34 => assert_eq!(r, Err(Reason::PassShort), "len {len}"),
                _ => assert_eq!(r.unwrap().problem, Some(Reason::DropMalformed), "len {len}"),
            }
        }
    }

    #[test]
    fn walks_ipv6_extension_headers_to_the_bound() {
        let (hop, dst, rt) = (ext::HOP_BY_HOP, ext::DEST_OPTS, ext::ROUTING);
        for exts in [&[][..], &[hop], &[hop, dst], &[hop, dst, rt, dst]] {
            let f = tcp6_syn(exts);
            let p = parse(&f).unwrap();
            assert!(p.v6 && p.problem.is_none(), "{exts:?}: {p:?}");
            assert_eq!(p.l4_off, 54 + 8 * exts.len());
            assert_eq!(p.flow.unwrap().0.dport, 80u16.to_be_bytes());
            // Cut anywhere past the fixed header, the frame's payload length lies: malformed.
            for len in 54..f.len() {
                assert_eq!(
                    parse(&f[..len]).unwrap().problem,
                    Some(Reason::DropMalformed)
                );
            }
        }
        let five = tcp6_syn(&[hop, dst, dst, dst, dst]);
        assert_eq!(parse(&five).unwrap().problem, Some(Reason::DropExtHeaders));
        let frag = tcp6_syn(&[hop, ext::FRAGMENT]);
        assert_eq!(parse(&frag).unwrap().problem, Some(Reason::DropFragment));
        let mut routed = tcp6_syn(&[rt]);
        routed[54 + 3] = 1;
        assert_eq!(
            parse(&routed).unwrap().problem,
            Some(Reason::DropRoutingHeader)
        );
        for len in 14..54 {
            assert_eq!(parse(&five[..len]), Err(Reason::PassShort));
        }
    }

    #[test]
    fn an_ipv6_packet_to_a_mapped_address_is_not_to_the_ipv4_vip() {
        let vip = v4_mapped([203, 0, 113, 10]);
        let mut m = Model::default();
        m.vips.insert(vip);
        let key = ServiceKey {
            vip,
            port: 80u16.to_be_bytes(),
            proto: proto::TCP,
            _pad: 0,
        };
        m.services.insert(key, vec![1]);
        m.backends.insert(
            1,
            ModelBackend {
                addr: v4_mapped([192, 0, 2, 11]),
                port: 80u16.to_be_bytes(),
                active: true,
            },
        );
        assert_eq!(m.classify(&tcp_syn()), Verdict::Forward(1));
        let mut f = tcp6_syn(&[]);
        f[38..54].copy_from_slice(&vip);
        assert_eq!(m.classify(&f), Verdict::Other(Reason::PassNotOurs));
    }

    proptest! {
        /// Parsing never panics, and a balanceable frame's 5-tuple is the frame's own bytes.
        #[test]
        fn parse_is_total_and_reads_the_tuple(
            mut f in prop::collection::vec(any::<u8>(), 0..120),
            kind in 0u8..3,
        ) {
            if f.len() > 14 {
                match kind {
                    0 => f[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes()),
                    1 => f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes()),
                    _ => {}
                }
            }
            if let Ok(p) = parse(&f)
                && let Some((k, _)) = p.flow
            {
                let l4 = p.l4_off;
                prop_assert_eq!(k.sport, [f[l4], f[l4 + 1]]);
                prop_assert_eq!(k.dport, [f[l4 + 2], f[l4 + 3]]);
                prop_assert_eq!(k.src, p.src);
            }
        }

        /// The model's prefix match is the 128-bit one: the first `len` bits equal.
        #[test]
        fn prefix_eq_compares_the_first_len_bits(
            a in any::<u128>(),
            flip in 0u32..128,
            len in 0u8..=128,
        ) {
            let b = a ^ (1u128 << (127 - flip));
            let want = |x: u128, y: u128| len == 0 || (x ^ y) >> (128 - u32::from(len)) == 0;
            prop_assert_eq!(prefix_eq(&a.to_be_bytes(), &b.to_be_bytes(), len), want(a, b));
            prop_assert!(prefix_eq(&a.to_be_bytes(), &a.to_be_bytes(), len));
        }

        /// An ACL set answers its longest matching prefix, as the LPM map does: whatever the
        /// order the entries were read in.
        #[test]
        fn acl_takes_the_longest_matching_prefix(
            src in any::<u128>(),
            lens in prop::collection::vec(0u8..=128, 1..6),
            reversed in any::<bool>(),
        ) {
            let mut entries: Vec<ModelAclEntry> = lens
                .iter()
                .enumerate()
                .map(|(i, &len)| ModelAclEntry {
                    len,
                    // Each entry covers `src` at its own length.
                    addr: src.to_be_bytes(),
                    action: u32::try_from(i).expect("small") + 1,
                    rule: 0,
                })
                .collect();
            if reversed {
                entries.reverse();
            }
            let mut m = Model::default();
            m.acls.insert((7, true), entries.clone());
            let longest = entries.iter().map(|e| e.len).max().expect("one entry");
            let got = m.acl(7, true, &src.to_be_bytes()).expect("a match");
            prop_assert!(entries.iter().any(|e| e.len == longest && e.action == got));
            // Another set, or the other family's set of the same id, is not consulted.
            prop_assert_eq!(m.acl(8, true, &src.to_be_bytes()), None);
            prop_assert_eq!(m.acl(7, false, &src.to_be_bytes()), None);
        }
    }
}
