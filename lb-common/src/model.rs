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
//! unusual frames, IPv6 extension headers and neighbour discovery. Hairpin SNAT and ICMP have
//! fixtures of their own; [`Model::classify`] answers [`Verdict::OutOfScope`] for ICMP (and
//! ICMPv6 other than neighbour discovery), for a flow a VIP's hairpin SNAT would take, and for
//! a packet to such a VIP's SNAT port range (a hairpin reply, perhaps), instead of guessing. Closed flows are modelled as inside their close time (the
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
        ACL_HAIRPIN, ACL_PERMIT, BackendId, HAIRPIN_PORT_BASE, REV_F_SHARED, REV_F_STATELESS,
        RevKey, RevService, SVC_F_INTERNAL, ServiceKey, VIP_F_HA_PORTS, VIP_F_HAIRPIN_SNAT,
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
    /// Every other outcome, by its reason.
    Other(Reason),
    /// Outside the model (ICMP, ICMPv6 other than neighbour discovery).
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
        self.acls
            .get(&(id, v6))?
            .iter()
            .filter(|e| prefix_eq(&e.addr, src, e.len))
            .max_by_key(|e| e.len)
            .map(|e| e.action)
    }

    /// Admission of a new flow of service `key`, as `policy::admit`: an internal VIP's source
    /// set first, then the endpoint's ACL. `Err` is the verdict of a refused flow, or
    /// `OutOfScope` for a backend's own connection that hairpin SNAT takes.
    fn admit(&self, key: &ServiceKey, flow: &FlowKey6, v6: bool) -> Result<(), Verdict> {
        let adm = self.admission.get(key).copied().unwrap_or_default();
        if adm.flags & SVC_F_INTERNAL != 0
            && self.is_vip(&flow.dst, v6)
            && let Some(vip) = self.vip_policy.get(&flow.dst)
            && vip.ilb_id != 0
        {
            match self.acl(vip.ilb_id, v6, &flow.src) {
                Some(ACL_PERMIT) => {}
                Some(ACL_HAIRPIN) if vip.flags & VIP_F_HAIRPIN_SNAT != 0 => {
                    return Err(Verdict::OutOfScope);
                }
                Some(ACL_HAIRPIN) => return Err(Verdict::Other(Reason::DropHairpin)),
                _ => return Err(Verdict::Other(Reason::DropNotInternal)),
            }
        }
        if adm.acl_id != 0 && self.acl(adm.acl_id, v6, &flow.src) != Some(ACL_PERMIT) {
            return Err(Verdict::Other(Reason::DropAcl));
        }
        Ok(())
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
            if !v6 && p.proto == proto::ICMP {
                return Verdict::OutOfScope;
            }
            // ICMPv6 to a PIP or from its instance: translated with its checksum (and an
            // instance's error first offered to `lb_icmp6`): out of scope.
            if v6
                && p.proto == proto::ICMPV6
                && (self.pips.contains_key(&p.dst) || self.pip_rev.contains_key(&p.src))
            {
                return Verdict::OutOfScope;
            }
            if let Some(v) = self.pip(&p, v6) {
                return v;
            }
            // ICMPv6: errors go to `lb_icmp6` (to a VIP or not), echo requests are rate
            // limited; any other to a VIP is `drop_proto` below.
            if let Some((t, code, direct)) = p.icmp6
                && direct
                && ((1..=4).contains(&t) || ((t, code) == (128, 0) && self.is_vip(&p.dst, v6)))
            {
                return Verdict::OutOfScope;
            }
            return Verdict::Other(if self.is_vip(&p.dst, v6) {
                p.problem.unwrap_or(Reason::DropMalformed)
            } else {
                Reason::PassNotOurs
            });
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
        // To a hairpin-SNAT VIP at a port of the SNAT range (no service has it): perhaps a
        // hairpin flow's reply, which only the program's port choice knows. Out of scope.
        if self.is_vip(&flow.dst, v6)
            && self
                .vip_policy
                .get(&flow.dst)
                .is_some_and(|v| v.flags & VIP_F_HAIRPIN_SNAT != 0)
            && u16::from_be_bytes(flow.dport) >= HAIRPIN_PORT_BASE
        {
            return Verdict::OutOfScope;
        }
        let refused = match self.reply(&flow, flags, v6) {
            Some(Ok((vip, port, update))) => {
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
            Some(Err(())) => true,
            None => false,
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

    fn forward(
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
        if let Err(v) = self.admit(&key, &flow, v6) {
            return v;
        }
        let table = &self.services[&key];
        let len = u32::try_from(table.len()).expect("table fits u32");
        let mode = self.modes.get(&key).copied().unwrap_or(dist::FIVE_TUPLE);
        let Some(s) = slot(hash(&flow, v6, mode, self.seed), len) else {
            return Verdict::Other(Reason::DropNoBackend);
        };
        let id = table[s as usize];
        let Some(b) = self.live(id) else {
            return Verdict::Other(Reason::DropNoBackend);
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
        if self
            .revs
            .get(&RevKey::of(b.addr, b.port, flow.proto))
            .is_some_and(|r| r.flags & REV_F_SHARED != 0)
        {
            self.replies
                .insert(flow.reply_from(b.addr, b.port), (flow.dst, flow.dport, id));
        }
        Verdict::Forward(id)
    }

    /// A packet from a backend endpoint: `Some(Ok(vip, port, Some((new state, forward key))))`
    /// when it is the reply of a tracked flow (`None` for the flow of a stateless endpoint's
    /// reply, which has none to update), `Some(Err)` when a flow was found but refuses it (it
    /// names another backend, or the port was reused: the flow is marked stale), `None` when
    /// no flow was found or the packet goes to the LB itself from a stateless endpoint.
    #[expect(clippy::type_complexity, reason = "one private helper")]
    fn reply(
        &mut self,
        flow: &FlowKey6,
        flags: u8,
        v6: bool,
    ) -> Option<Result<(Addr, [u8; 2], Option<(u8, FlowKey6)>), ()>> {
        if !of_family(&flow.src, v6) {
            return None;
        }
        // An HA-ports backend's entry has port 0: it answers from every port, and its
        // replies come from the port the client sent to.
        let mut rev = *self
            .revs
            .get(&RevKey::of(flow.src, flow.sport, flow.proto))
            .or_else(|| self.revs.get(&RevKey::of(flow.src, [0; 2], flow.proto)))?;
        if rev.vport == [0; 2] {
            rev.vport = flow.sport;
        }
        if rev.flags & REV_F_STATELESS != 0 {
            if self.locals.contains(&flow.dst) {
                return None;
            }
            return Some(Ok((rev.vip, rev.vport, None)));
        }
        let own = (rev.flags & REV_F_SHARED != 0)
            .then(|| self.replies.get(flow).copied())
            .flatten();
        let (vip, vport, backend) = own.unwrap_or((rev.vip, rev.vport, rev.backend));
        let fwd = flow.forward_of_reply(vip, vport);
        let f = self.flows.get(&fwd).copied()?;
        if f.backend != backend || !conn::translates(f.tcp, 0, 0, 0) {
            return Some(Err(()));
        }
        let tcp = if flow.proto == proto::TCP { flags } else { 0 };
        match conn::after_reply(f.tcp, tcp) {
            Ok(n) => Some(Ok((vip, vport, Some((n, fwd))))),
            Err(stale) => {
                self.flows.insert(
                    fwd,
                    ModelFlow {
                        backend: f.backend,
                        tcp: stale,
                    },
                );
                Some(Err(()))
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
