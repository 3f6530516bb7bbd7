//! Outbound rules in the maps: each rule's id, the blocks held for backends that left, and the
//! writes that make `LB_OUTBOUND4`, `LB_OUT_FRONTS4` and `LB_OUT_INSIDE4` match the rules.
//! Every backend's block comes from [`crate::outbound::blocks`] (the pure allocation); this room
//! adds the ids, the next hops and the holds, and plans the writes (pure, like `plan.rs`).
//!
//! Holds: when a backend leaves a rule, its block stays taken ([`OutboundBook::held`]) until
//! the sweeper has walked the whole table and found no flow of the rule's frontend using a port
//! of it (`Event::OutboundReleased`); only then may the allocation give it to another backend.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::outbound::{OUT_F_STATELESS, OutBlockKey4, OutFront4, OutboundEntry4, Slot};

use super::{hops::Hops, live::Live, plan::Step};
use crate::{
    api::{OutboundBackendView, OutboundView},
    dataplane::sweep::OutboundUse,
    outbound,
    spec::format_duration,
    state::State,
};

/// What the reconciler keeps about outbound rules besides the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboundBook {
    /// Rule name → its id: the fast path's `rule`, and `OUT_SERVICE_FLAG | id` is the service
    /// id of its flows' conntrack entries.
    pub ids: BTreeMap<String, u32>,
    /// Rule name → blocks of backends that left, held until none of their flows is left.
    pub held: BTreeMap<String, BTreeSet<Slot>>,
}

/// A held block, as the sweeper checks it: a flow of frontend `slot.frontend` whose port is
/// in `slot.base..slot.base + ports` still needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutHold {
    pub rule: String,
    pub slot: Slot,
    pub ports: u16,
}

impl OutHold {
    /// Whether this conntrack entry is a flow that still uses the held block.
    #[must_use]
    pub fn needed_by(&self, e: &lb_common::maps::ConnEntry4) -> bool {
        let p = u16::from_be_bytes(e.port);
        e.kind == lb_common::maps::CONN_OUTBOUND
            && e.addr == self.slot.frontend
            && p >= self.slot.base
            && u32::from(p) < u32::from(self.slot.base) + u32::from(self.ports)
    }
}

/// The outbound maps as the rules want them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub entries: BTreeMap<[u8; 4], OutboundEntry4>,
    pub fronts: BTreeMap<[u8; 4], OutFront4>,
    /// Stateless rules' block owners.
    pub blocks: BTreeMap<OutBlockKey4, [u8; 4]>,
    pub inside: BTreeSet<(u32, [u8; 4], u8)>,
    /// The holds once these are written: the book's, and the blocks of backends leaving now.
    pub held: BTreeMap<String, BTreeSet<Slot>>,
}

fn v4(a: IpAddr) -> Option<[u8; 4]> {
    match a {
        IpAddr::V4(v) => Some(v.octets()),
        IpAddr::V6(_) => None,
    }
}

impl OutboundBook {
    /// Gives every rule of `state` an id and forgets the ids of rules gone: a rule keeps its
    /// id; a new one takes the id a live frontend entry of it names (an earlier agent's),
    /// else the lowest free one.
    pub fn assign(&mut self, state: &State, live: &Live) {
        self.ids.retain(|n, _| state.outbound.contains_key(n));
        self.held.retain(|n, _| state.outbound.contains_key(n));
        for r in state.outbound.values() {
            if self.ids.contains_key(&r.name) {
                continue;
            }
            let taken: BTreeSet<u32> = self.ids.values().copied().collect();
            let adopted = r
                .frontends
                .iter()
                .filter_map(|f| v4(*f))
                .find_map(|a| live.out_fronts.get(&a).map(|f| f.rule))
                .filter(|id| !taken.contains(id));
            // At most `MAX_OUTBOUND_FRONTENDS` rules (one frontend each at least), so a free
            // id exists below that.
            let id = adopted.unwrap_or_else(|| {
                (1..=lb_common::consts::MAX_OUTBOUND_FRONTENDS + 1)
                    .find(|i| !taken.contains(i))
                    .unwrap_or(0)
            });
            self.ids.insert(r.name.clone(), id);
        }
    }

    /// The holds, as the sweeper checks them.
    #[must_use]
    pub fn holds(&self, state: &State) -> Vec<OutHold> {
        let mut v = Vec::new();
        for (name, slots) in &self.held {
            let Some(r) = state.outbound.get(name) else {
                continue;
            };
            let ports = u16::try_from(r.ports_per_backend).unwrap_or(u16::MAX);
            v.extend(slots.iter().map(|s| OutHold {
                rule: name.clone(),
                slot: *s,
                ports,
            }));
        }
        v
    }

    /// Releases holds the sweeper found no flow for; whether any was held.
    pub fn release(&mut self, released: &[OutHold]) -> bool {
        let mut any = false;
        for h in released {
            if let Some(s) = self.held.get_mut(&h.rule) {
                any |= s.remove(&h.slot);
                if s.is_empty() {
                    self.held.remove(&h.rule);
                }
            }
        }
        any
    }
}

/// What the rules of `state` want in the outbound maps (ids from `book`, which
/// [`OutboundBook::assign`] filled), with next hops from `hops`.
///
/// # Errors
/// A rule whose backends do not fit (the state's checks make that unlikely: a change that
/// does not fit is refused before it gets here).
pub fn desired(
    state: &State,
    live: &Live,
    hops: &Hops,
    book: &OutboundBook,
) -> Result<Desired, String> {
    let names: BTreeMap<u32, &String> = book.ids.iter().map(|(n, i)| (*i, n)).collect();
    let mut held = book.held.clone();
    // A backend leaving its rule now: its block is held (when the rule still cuts blocks of
    // that size from that frontend; otherwise every block moves anyway).
    for (dip, e) in &live.outbound {
        let Some(r) = names.get(&e.rule).and_then(|n| state.outbound.get(*n)) else {
            continue;
        };
        if u32::from(e.ports) == r.ports_per_backend
            && r.frontends.contains(&IpAddr::from(e.frontend))
            && !outbound::covered(r, state).contains(dip)
        {
            held.entry(r.name.clone()).or_default().insert(Slot {
                frontend: e.frontend,
                base: e.base,
            });
        }
    }
    let (blocks, dropped) = outbound::blocks(state, &held)?;
    for n in dropped {
        tracing::warn!(rule = %n, "the blocks held for an outbound rule's departed backends no longer leave room for its backends: released early (the fast path still never reuses a port a live flow holds)");
        held.remove(&n);
    }
    let mut d = Desired {
        held,
        ..Desired::default()
    };
    for (name, placed) in blocks {
        let (Some(r), Some(&id)) = (state.outbound.get(&name), book.ids.get(&name)) else {
            continue;
        };
        let ports = u16::try_from(r.ports_per_backend).map_err(|e| e.to_string())?;
        let stateless = r.flags() & OUT_F_STATELESS != 0;
        for (dip, slot) in placed {
            if stateless && let Some(k) = OutBlockKey4::of(slot.frontend, slot.base, ports) {
                d.blocks.insert(k, dip);
            }
            d.entries.insert(
                dip,
                OutboundEntry4 {
                    frontend: slot.frontend,
                    base: slot.base,
                    ports,
                    rule: id,
                    flags: r.flags(),
                    nh: hops.next_hop(IpAddr::from(dip)),
                },
            );
        }
        let front = OutFront4 {
            rule: id,
            ports,
            // The mode bit only (`OUT_F_STATELESS` fits 16 bits).
            flags: u16::try_from(r.flags() & OUT_F_STATELESS).unwrap_or(0),
        };
        for f in r.frontends.iter().filter_map(|f| v4(*f)) {
            d.fronts.insert(f, front);
        }
        for (ip, len) in &r.inside {
            if let Some(a) = v4(*ip) {
                d.inside.insert((id, a, *len));
            }
        }
    }
    Ok(d)
}

/// The writes that make the outbound maps hold `d`: new inside prefixes first (a backend's
/// entry never exists without its rule's inside set); stateless block owners that go, before
/// the backend entries they name; the backend entries; the new block owners, after the entries
/// they name; frontends; and last the inside prefixes no rule has any more.
#[must_use]
pub fn plan(d: &Desired, live: &Live) -> Vec<Step> {
    let mut steps: Vec<Step> = d
        .inside
        .difference(&live.out_inside)
        .map(|(r, a, l)| Step::PutOutInside(*r, *a, *l))
        .collect();
    steps.extend(
        live.out_blocks
            .iter()
            .filter(|(k, v)| d.blocks.get(*k) != Some(v))
            .map(|(k, _)| Step::DelOutBlock(*k)),
    );
    steps.extend(
        live.outbound
            .keys()
            .filter(|k| !d.entries.contains_key(*k))
            .map(|k| Step::DelOutbound(*k)),
    );
    steps.extend(
        d.entries
            .iter()
            .filter(|(k, e)| live.outbound.get(*k) != Some(e))
            .map(|(k, e)| Step::PutOutbound(*k, *e)),
    );
    steps.extend(
        d.blocks
            .iter()
            .filter(|(k, v)| live.out_blocks.get(*k) != Some(v))
            .map(|(k, v)| Step::PutOutBlock(*k, *v)),
    );
    steps.extend(
        d.fronts
            .iter()
            .filter(|(k, r)| live.out_fronts.get(*k) != Some(r))
            .map(|(k, r)| Step::PutOutFront(*k, *r)),
    );
    steps.extend(
        live.out_fronts
            .keys()
            .filter(|k| !d.fronts.contains_key(*k))
            .map(|k| Step::DelOutFront(*k)),
    );
    steps.extend(
        live.out_inside
            .difference(&d.inside)
            .map(|(r, a, l)| Step::DelOutInside(*r, *a, *l)),
    );
    steps
}

/// `lb outbound list` as the writer knows it: every rule, and each covered backend's block
/// from the maps (the reader adds the use, [`add_usage`]).
#[must_use]
pub fn views(state: &State, live: &Live, book: &OutboundBook) -> Vec<OutboundView> {
    let secs = |s: u32| format_duration(std::time::Duration::from_secs(s.into()));
    state
        .outbound
        .values()
        .map(|r| {
            let id = book.ids.get(&r.name).copied();
            let (tcp, udp) = r.idle_s();
            let ppb = u16::try_from(r.ports_per_backend).unwrap_or(u16::MAX);
            let backends = outbound::covered(r, state)
                .into_iter()
                .map(|dip| {
                    let e = live.outbound.get(&dip).filter(|e| Some(e.rule) == id);
                    let (first, last) = e.map_or((0, 0), |e| (e.base, e.base + (e.ports - 1)));
                    OutboundBackendView {
                        backend: IpAddr::from(dip).to_string(),
                        frontend: e.map(|e| IpAddr::from(e.frontend).to_string()),
                        first_port: first,
                        last_port: last,
                        ports_in_use: 0,
                        flows: 0,
                        peak: 0,
                        via_pip: state
                            .pips
                            .iter()
                            .find(|(_, d)| **d == IpAddr::from(dip))
                            .map(|(p, _)| p.to_string()),
                    }
                })
                .collect();
            OutboundView {
                name: r.name.clone(),
                frontends: r.frontends.iter().map(ToString::to_string).collect(),
                ports_per_backend: r.ports_per_backend,
                protocols: r.protocols.clone(),
                mode: r.mode.to_string(),
                inside: r.inside.iter().map(|(a, l)| format!("{a}/{l}")).collect(),
                idle_timeout_tcp: secs(tcp),
                idle_timeout_udp: secs(udp),
                backends,
                held: book
                    .held
                    .get(&r.name)
                    .into_iter()
                    .flatten()
                    .map(|s| {
                        format!(
                            "{}:{}-{}",
                            IpAddr::from(s.frontend),
                            s.base,
                            u32::from(s.base) + u32::from(ppb) - 1
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Adds each backend's use, as the sweeper last counted it.
pub fn add_usage(rules: &mut [OutboundView], usage: &BTreeMap<[u8; 4], OutboundUse>) {
    for r in rules {
        for b in &mut r.backends {
            let Ok(IpAddr::V4(a)) = b.backend.parse::<IpAddr>() else {
                continue;
            };
            if let Some(u) = usage.get(&a.octets()) {
                b.ports_in_use = u.ports;
                b.flows = u.flows;
                b.peak = u.peak;
            }
        }
    }
}
