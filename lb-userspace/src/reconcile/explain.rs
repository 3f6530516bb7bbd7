//! `lb explain CLIENT:PORT VIP:PORT/PROTO`: how the fast path would handle a new flow, from the
//! maps' mirror (`Live`: the very entries the program reads) and the rules both sides share
//! (`lb_common::hash`, `maglev::slot`, `acl::lpm`): the service it reaches (an exact one, or
//! the VIP's HA ports), the internal-VIP and ACL decisions with the deciding entry, the
//! distribution mode's hash input, the slot, the backend and its next hop. A reader then adds
//! whether the flow is tracked already (`Pending::Explain`).

use std::net::{IpAddr, SocketAddr};

use lb_common::{
    acl,
    addr::{self, as_v4},
    flow::{FlowKey4, FlowKey6},
    hash, maglev,
    maps::{SVC_F_INTERNAL, VIP_F_HA_PORTS, VIP_F_HAIRPIN_SNAT},
};

use super::views::{Source, mac};
use crate::{
    api::{ExplainView, NextHopView},
    error::ChangeError,
    spec::{Proto, ServiceSpec},
};

/// The flow `lb explain` asks about, in its family's key (a reader looks it up in that
/// family's conntrack).
#[derive(Clone, Copy, Debug)]
pub enum ExplainKey {
    V4(FlowKey4),
    V6(FlowKey6),
}

impl ExplainKey {
    /// The key of `client` → `vip`, of the family both share.
    fn of(client: SocketAddr, vip: SocketAddr, proto: u8) -> Option<Self> {
        let (sport, dport) = (client.port().to_be_bytes(), vip.port().to_be_bytes());
        match (client.ip(), vip.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Some(Self::V4(FlowKey4::of(
                s.octets(),
                d.octets(),
                sport,
                dport,
                proto,
            ))),
            (IpAddr::V6(s), IpAddr::V6(d)) => Some(Self::V6(FlowKey6::of(
                s.octets(),
                d.octets(),
                sport,
                dport,
                proto,
            ))),
            _ => None,
        }
    }

    /// The distribution mode's hash input, as text, and the slot hash, as the family's fast
    /// path computes them.
    fn hash(&self, mode: u32, seed: u32) -> (String, u32) {
        let text = |s: SocketAddr, d: SocketAddr, p: u8| format!("{s} -> {d} proto {p}");
        let port = u16::from_be_bytes;
        match self {
            Self::V4(k) => {
                let i = hash::hash_input(k, mode);
                (
                    text(
                        SocketAddr::from((i.src, port(i.sport))),
                        SocketAddr::from((i.dst, port(i.dport))),
                        i.proto,
                    ),
                    hash::dist_hash(k, mode, seed),
                )
            }
            Self::V6(k) => {
                let i = hash::hash_input6(k, mode);
                (
                    text(
                        SocketAddr::from((i.src, port(i.sport))),
                        SocketAddr::from((i.dst, port(i.dport))),
                        i.proto,
                    ),
                    hash::dist_hash6(k, mode, seed),
                )
            }
        }
    }
}

impl Source<'_> {
    /// How a new flow from `client` to `service` would be handled.
    ///
    /// # Errors
    /// A client of another family than the VIP's, a service without a protocol, or no
    /// service (exact or HA ports) at that VIP and port.
    pub fn explain(
        &self,
        client: SocketAddr,
        service: ServiceSpec,
    ) -> Result<(ExplainView, ExplainKey), ChangeError> {
        if service.proto == Proto::Any {
            return Err(ChangeError::Invalid(
                "explain: name the protocol of the flow, tcp or udp".into(),
            ));
        }
        let flow =
            ExplainKey::of(client, service.vip, service.proto.number()).ok_or_else(|| {
                ChangeError::Invalid(format!(
                    "explain: the client {client} and the VIP {} are of different address \
                     families",
                    service.vip.ip()
                ))
            })?;
        let vip = service.vip.ip();
        let vip_info = self.live.vips.get(&vip).copied();
        // The exact service first; else the VIP's HA ports (classify does the same).
        let ha = ServiceSpec {
            vip: SocketAddr::new(vip, 0),
            proto: Proto::Any,
        };
        let (spec, info) = match self.live.services.get(&service) {
            Some(i) => (service, *i),
            None => match (vip_info, self.live.services.get(&ha)) {
                (Some(v), Some(i)) if v.flags & VIP_F_HA_PORTS != 0 => (ha, *i),
                _ => {
                    return Err(ChangeError::NotFound(format!(
                        "service {service}{}",
                        if vip_info.is_some() {
                            " (the VIP has no such port)"
                        } else {
                            ""
                        }
                    )));
                }
            },
        };
        let mut v = ExplainView {
            client: client.to_string(),
            service: service.to_string(),
            taken_by: spec.to_string(),
            ..ExplainView::default()
        };
        let src_addr = addr::from_ip(client.ip());
        // Admission, as `policy::admit`: the internal VIP's source set, then the ACL.
        if info.flags & SVC_F_INTERNAL != 0
            && let Some(vi) = vip_info
            && vi.ilb_id != 0
        {
            let entry = self
                .live
                .acl
                .get(&vi.ilb_id)
                .and_then(|e| acl::lpm(e, &src_addr));
            let (word, out) = match entry.map(|e| e.action) {
                Some(acl::Action::Permit) => ("in an internal prefix", None),
                Some(acl::Action::Hairpin) if vi.flags & VIP_F_HAIRPIN_SNAT != 0 => {
                    ("a backend of this internal VIP", Some("hairpin_snat"))
                }
                Some(acl::Action::Hairpin) => {
                    ("a backend of this internal VIP", Some("drop_hairpin"))
                }
                _ => ("outside the internal prefixes", Some("drop_not_internal")),
            };
            v.internal = Some(format!(
                "{word}{}",
                entry.map_or_else(String::new, |e| format!(
                    " (entry {})",
                    prefix_text(&e.prefix)
                ))
            ));
            if let Some(out) = out {
                v.verdict = out.into();
                return Ok((v, flow));
            }
        }
        if info.acl_id != 0 {
            let entry = self
                .live
                .acl
                .get(&info.acl_id)
                .and_then(|e| acl::lpm(e, &src_addr));
            let permit = entry.is_some_and(|e| e.action == acl::Action::Permit);
            v.acl = Some(match entry {
                Some(e) => format!(
                    "{} by {} ({})",
                    if permit { "permitted" } else { "denied" },
                    e.rule
                        .map_or_else(|| "the default".to_owned(), |o| format!("rule {o}")),
                    prefix_text(&e.prefix)
                ),
                None => "denied: no entry".into(),
            });
            if !permit {
                v.verdict = "drop_acl".into();
                return Ok((v, flow));
            }
        }
        // Selection, as `select::from_table`.
        let mode = info.distribution();
        let (input, h) = flow.hash(mode, self.info.hash_seed);
        v.distribution = match mode {
            hash::dist::SOURCE_IP => "source-ip",
            hash::dist::SOURCE_IP_PROTOCOL => "source-ip-protocol",
            _ => "5-tuple",
        }
        .into();
        v.hash_input = input;
        v.hash = h;
        v.table_size = info.table_len;
        let Some(slot) = maglev::slot(h, info.table_len) else {
            v.verdict = "drop_no_backend".into();
            return Ok((v, flow));
        };
        v.slot = Some(slot);
        let id = self
            .live
            .table(&spec)
            .and_then(|(_, slots)| slots.get(slot as usize).copied())
            .unwrap_or(0);
        let Some(b) = self.live.backends.get(&id).filter(|_| id != 0) else {
            v.verdict = "drop_no_backend".into();
            return Ok((v, flow));
        };
        let at = super::live::backend_addr(b);
        // An HA-ports backend keeps the port the client sent to (`select::backend_port`).
        let at = if at.port() == 0 {
            SocketAddr::new(at.ip(), service.vip.port())
        } else {
            at
        };
        v.verdict = "forward".into();
        v.backend = Some(at.to_string());
        v.backend_id = id;
        v.next_hop = b.nh.is_resolved().then(|| NextHopView {
            ifindex: b.nh.ifindex,
            smac: mac(b.nh.smac),
            dmac: mac(b.nh.dmac),
        });
        if v.next_hop.is_none() {
            v.verdict = "forward_fib".into();
        }
        Ok((v, flow))
    }
}

/// A map-form prefix as text (`198.51.100.0/24`).
fn prefix_text(p: &acl::Prefix) -> String {
    match as_v4(&p.addr) {
        Some(a) => format!(
            "{}/{}",
            std::net::Ipv4Addr::from(a),
            p.len.saturating_sub(96)
        ),
        None => format!("{}/{}", std::net::Ipv6Addr::from(p.addr), p.len),
    }
}
