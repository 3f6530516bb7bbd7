//! A host model of the fast path's first stages (parse, classify, select), written from the
//! same rules the XDP program uses (the hash, the slot rule, the header checks, the flow-state
//! rules of [`crate::conn`], the verdict reasons). It is the oracle of the randomized
//! differential test and the subject of the fuzz target (`lb-common/fuzz`).
//!
//! Scope: load-balanced TCP/UDP services with conntrack (one forward entry per flow, replies
//! matched through the backends' reverse-service entries, reverse entries for shared backend
//! endpoints, TCP state), malformed and unusual frames. ACLs, internal VIPs, PIPs and ICMP have
//! fixtures of their own; [`Model::classify`] answers [`Verdict::OutOfScope`] for ICMP instead
//! of guessing. Closed flows are modelled as inside their close time (the differential test
//! runs the program with a close timeout far longer than itself; a fixture covers expiry).

use std::collections::{HashMap, HashSet};

use crate::{
    conn,
    flow::{FlowKey4, proto},
    hash::{dist, dist_hash},
    hdr::{ETH_P_8021Q, ETH_P_IPV4, IPV4_FRAG_MASK},
    maglev::slot,
    maps::{BackendId, REV_F_SHARED, REV_F_STATELESS, RevKey4, RevService4, ServiceKey4},
    verdict::Reason,
};

/// What the parser finds in a frame with a readable IPv4 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub l3_off: usize,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    pub ttl: u8,
    /// Why it cannot be balanced, if it cannot.
    pub problem: Option<Reason>,
    /// The 5-tuple and its TCP flags (0 for UDP), when balanceable.
    pub flow: Option<(FlowKey4, u8)>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parses a frame as `lb-ebpf/src/parse.rs` does. `Err` is the pass reason of a frame without
/// a readable IPv4 header.
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
    if ether_type != ETH_P_IPV4 {
        return Err(Reason::PassNotIpv4);
    }
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
        src: [ip[12], ip[13], ip[14], ip[15]],
        dst: [ip[16], ip[17], ip[18], ip[19]],
        proto: ip[9],
        ttl: ip[8],
        problem: None,
        flow: None,
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
    if p.problem.is_some() {
        return Ok(p);
    }
    let l4_off = off + 20;
    let l4_len = tot_len - 20;
    let (ports, flags);
    if p.proto == proto::TCP {
        if l4_off + 20 > len {
            p.problem = Some(Reason::DropMalformed);
            return Ok(p);
        }
        let t = &frame[l4_off..];
        let doff = usize::from(t[12] >> 4) * 4;
        if doff < 20 || doff > l4_len {
            p.problem = Some(Reason::DropMalformed);
            return Ok(p);
        }
        flags = t[13];
        ports = [t[0], t[1], t[2], t[3]];
    } else {
        if l4_off + 8 > len {
            p.problem = Some(Reason::DropMalformed);
            return Ok(p);
        }
        let u = &frame[l4_off..];
        let ulen = usize::from(be16(u, 4));
        if ulen < 8 || ulen > l4_len {
            p.problem = Some(Reason::DropMalformed);
            return Ok(p);
        }
        flags = 0;
        ports = [u[0], u[1], u[2], u[3]];
    }
    let key = FlowKey4::of(
        p.src,
        p.dst,
        [ports[0], ports[1]],
        [ports[2], ports[3]],
        p.proto,
    );
    p.flow = Some((key, flags));
    Ok(p)
}

/// A backend as the model knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelBackend {
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub active: bool,
}

/// The model's verdict on one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Client → VIP, sent to this backend.
    Forward(BackendId),
    /// Backend → client reply of a tracked flow, its source rewritten to this VIP and port.
    Reply([u8; 4], [u8; 2]),
    /// Every other outcome, by its reason.
    Other(Reason),
    /// Outside the model (ICMP).
    OutOfScope,
}

/// A tracked flow's forward entry as the model keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelFlow {
    pub backend: BackendId,
    /// The `conn::CT_*` state.
    pub tcp: u8,
}

/// The state the fast path reads, and the flows it has tracked so far.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub seed: u32,
    /// Each service's lookup table (slot → backend id, 0 for none).
    pub services: HashMap<ServiceKey4, Vec<BackendId>>,
    /// Each service's distribution mode (`crate::hash::dist`); absent: the 5-tuple.
    pub modes: HashMap<ServiceKey4, u32>,
    pub backends: HashMap<BackendId, ModelBackend>,
    pub vips: HashSet<[u8; 4]>,
    /// The backends' reverse-service entries (`LB_REVSVC4`).
    pub revs: HashMap<RevKey4, RevService4>,
    /// The LB host's own addresses (`LB_LOCAL4`).
    pub locals: HashSet<[u8; 4]>,
    /// Tracked client → VIP flows.
    pub flows: HashMap<FlowKey4, ModelFlow>,
    /// Reverse entries (flows to shared backend endpoints): reply 5-tuple → (VIP, VIP port,
    /// backend).
    pub replies: HashMap<FlowKey4, ([u8; 4], [u8; 2], BackendId)>,
}

impl Model {
    fn live(&self, id: BackendId) -> Option<ModelBackend> {
        self.backends
            .get(&id)
            .copied()
            .filter(|b| id != 0 && b.active)
    }

    /// What the fast path does with `frame`, tracking new flows as it does.
    pub fn classify(&mut self, frame: &[u8]) -> Verdict {
        let p = match parse(frame) {
            Ok(p) => p,
            Err(r) => return Verdict::Other(r),
        };
        let Some((flow, flags)) = p.flow else {
            if p.proto == proto::ICMP {
                return Verdict::OutOfScope;
            }
            return Verdict::Other(if self.vips.contains(&p.dst) {
                p.problem.unwrap_or(Reason::DropMalformed)
            } else {
                Reason::PassNotOurs
            });
        };
        let key = ServiceKey4::of(flow.dst, flow.dport, flow.proto);
        if self.services.contains_key(&key) {
            return self.forward(key, flow, flags, p.ttl);
        }
        let refused = match self.reply(&flow, flags) {
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
        Verdict::Other(if self.vips.contains(&flow.dst) {
            Reason::DropNoService
        } else if refused {
            Reason::PassNotReply
        } else {
            Reason::PassNotOurs
        })
    }

    fn forward(&mut self, key: ServiceKey4, flow: FlowKey4, flags: u8, ttl: u8) -> Verdict {
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
        let table = &self.services[&key];
        let len = u32::try_from(table.len()).expect("table fits u32");
        let mode = self.modes.get(&key).copied().unwrap_or(dist::FIVE_TUPLE);
        let Some(s) = slot(dist_hash(&flow, mode, self.seed), len) else {
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
        let addr = b.addr;
        if self
            .revs
            .get(&RevKey4::of(addr, b.port, flow.proto))
            .is_some_and(|r| r.flags & REV_F_SHARED != 0)
        {
            self.replies
                .insert(flow.reply_from(addr, b.port), (flow.dst, flow.dport, id));
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
        flow: &FlowKey4,
        flags: u8,
    ) -> Option<Result<([u8; 4], [u8; 2], Option<(u8, FlowKey4)>), ()>> {
        let rev = *self
            .revs
            .get(&RevKey4::of(flow.src, flow.sport, flow.proto))?;
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
        t[13] = crate::hdr::TCP_SYN;
        f
    }

    #[test]
    fn parses_a_syn_and_every_truncation_is_defined() {
        let f = tcp_syn();
        let p = parse(&f).unwrap();
        let (k, flags) = p.flow.unwrap();
        assert!(conn::is_syn(flags) && k.dport == 80u16.to_be_bytes() && p.problem.is_none());
        for len in 0..f.len() {
            let r = parse(&f[..len]);
            match len {
                0..34 => assert_eq!(r, Err(Reason::PassShort), "len {len}"),
                _ => assert_eq!(r.unwrap().problem, Some(Reason::DropMalformed), "len {len}"),
            }
        }
    }

    proptest! {
        /// Parsing never panics, and a balanceable frame's 5-tuple is the frame's own bytes.
        #[test]
        fn parse_is_total_and_reads_the_tuple(mut f in prop::collection::vec(any::<u8>(), 0..80), tcp in any::<bool>()) {
            if f.len() > 14 && tcp {
                f[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
            }
            if let Ok(p) = parse(&f)
                && let Some((k, _)) = p.flow
            {
                let l4 = p.l3_off + 20;
                prop_assert_eq!(k.sport, [f[l4], f[l4 + 1]]);
                prop_assert_eq!(k.dport, [f[l4 + 2], f[l4 + 3]]);
                prop_assert_eq!(k.src, p.src);
            }
        }
    }
}
