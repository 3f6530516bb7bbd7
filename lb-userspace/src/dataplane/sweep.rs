//! The flow sweeper's rules: which conntrack entries a pass removes, and which of them are
//! reset first (TCP reset on idle). Pure, so it is tested without a kernel; the agent's sweeper
//! thread (`agent::sweeper`) walks the map and carries the decisions out.
//!
//! A forward entry expires by `lb_common::conn::expiry`, with its service's idle timeout (the
//! protocol's default for an id no live service has: a flow of a service just removed, whose
//! purge has not run yet). A reverse entry (a shared endpoint's, or a hairpin reply's) has no
//! time of its own: it goes when its forward entry is gone.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use lb_common::{
    conn::{self, Expiry, Timeouts},
    flow::{FlowKey4, FlowKey6, proto},
    maps::{
        BackendId, CONN_FORWARD, CONN_HAIRPIN_REV, CONN_OUTBOUND_REV, CONN_REVERSE, ConnEntry4,
        ConnEntry6, RevKey, RevService,
    },
};

/// Seconds of CLOCK_MONOTONIC_COARSE: the clock the fast path stamps flows with
/// (`bpf_ktime_get_coarse_ns`), which the sweeper and `lb flows` age them by.
#[must_use]
pub fn monotonic_s() -> u32 {
    // SAFETY: all-zero is a valid timespec, and clock_gettime writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    u32::try_from(ts.tv_sec).unwrap_or(u32::MAX)
}

/// What the sweeper needs from the desired state: each live service's idle timeout and TCP
/// reset, and the address of every backend whose flows may be reset. The writer publishes a
/// new one whenever the state changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepPolicy {
    /// Service id → (idle timeout of its TCP flows, of its UDP flows, in seconds; TCP reset on
    /// idle).
    pub services: HashMap<u32, (u32, u32, bool)>,
    /// The backends of services with TCP reset on: id → address (the RST to the backend's
    /// side goes there).
    pub backends: HashMap<BackendId, SocketAddr>,
    /// The VIP-swap holds (`reconcile::Live::holds`), each with the VIP and port its endpoint
    /// would name without it.
    pub holds: Vec<Hold>,
    /// Outbound blocks held for backends that left (`reconcile::OutHold`).
    pub out_holds: Vec<crate::reconcile::OutHold>,
}

/// A reverse-service entry held through a VIP swap: needed while a forward flow names its
/// backend but is addressed to another VIP (or port) than the one the endpoint would name
/// unheld, since such a flow may have no reverse entry of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    pub ep: RevKey,
    pub held: RevService,
    pub want: (lb_common::addr::Addr, [u8; 2]),
}

impl Hold {
    /// Whether this forward flow still needs the hold.
    #[must_use]
    pub fn needed_by(&self, k: &FlowKey4, e: &ConnEntry4) -> bool {
        e.kind == CONN_FORWARD
            && e.backend == self.held.backend
            && (lb_common::addr::v4_mapped(k.dst), k.dport) != self.want
    }

    /// [`Self::needed_by`] for an IPv6 flow.
    #[must_use]
    pub fn needed_by6(&self, k: &FlowKey6, e: &ConnEntry6) -> bool {
        e.kind == CONN_FORWARD && e.backend == self.held.backend && (k.dst, k.dport) != self.want
    }
}

/// The agent's own timeouts (`agent.tcp_close_timeout`, `agent.tcp_syn_timeout`), seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentTimeouts {
    pub close_s: u32,
    pub syn_s: u32,
}

impl Default for AgentTimeouts {
    fn default() -> Self {
        Self {
            close_s: conn::CLOSE_TIMEOUT_S,
            syn_s: conn::SYN_TIMEOUT_S,
        }
    }
}

/// What a pass does with one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Keep,
    /// Remove it, for this reason; with `reset`, first send both sides a RST.
    Expire {
        cause: Expiry,
        reset: bool,
    },
    /// A reverse entry: remove it if this forward entry is gone.
    UnlessForward(FlowKey4),
    /// An outbound flow's returning entry: remove it if this forward entry is gone or no
    /// longer names this frontend address and port (its flow took another port since).
    UnlessForwardNames(FlowKey4, [u8; 4], [u8; 2]),
}

/// What a pass does with one IPv6 entry (see [`Decision`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision6 {
    Keep,
    /// Remove it, for this reason; with `reset`, first send both sides a RST.
    Expire {
        cause: Expiry,
        reset: bool,
    },
    UnlessForward(FlowKey6),
}

impl SweepPolicy {
    /// The decision for entry `e` of key `k` at `now_s` (seconds of CLOCK_MONOTONIC).
    #[must_use]
    pub fn decide(&self, a: AgentTimeouts, k: &FlowKey4, e: &ConnEntry4, now_s: u32) -> Decision {
        match e.kind {
            CONN_REVERSE => return Decision::UnlessForward(k.forward_of_reply(e.addr, e.port)),
            CONN_OUTBOUND_REV => {
                return Decision::UnlessForwardNames(
                    FlowKey4::of(e.addr, k.src, e.port, k.sport, k.proto),
                    k.dst,
                    k.dport,
                );
            }
            CONN_HAIRPIN_REV => {
                return Decision::UnlessForward(FlowKey4::of(
                    e.addr, k.dst, e.port, e.vport, k.proto,
                ));
            }
            _ => {}
        }
        self.expiry(a, (k.proto, e.service), (e.tcp, e.seen_s, e.flags), now_s)
    }

    /// Whether a forward entry of `(protocol, service)` with `(TCP state, last seen, flags)`
    /// expires at `now_s`, and is reset first: both families' rule.
    fn expiry(
        &self,
        a: AgentTimeouts,
        (proto_, service): (u8, u32),
        (tcp, seen_s, flags): (u8, u32, u8),
        now_s: u32,
    ) -> Decision {
        let (tcp_s, udp_s, reset) = self.services.get(&service).copied().unwrap_or((
            conn::IDLE_TIMEOUT_TCP_S,
            conn::IDLE_TIMEOUT_UDP_S,
            false,
        ));
        let idle_s = if proto_ == proto::TCP { tcp_s } else { udp_s };
        let t = Timeouts {
            idle_s,
            close_s: a.close_s,
            syn_s: a.syn_s,
        };
        match conn::expiry(proto_, tcp, seen_s, now_s, t) {
            None => Decision::Keep,
            Some(cause) => Decision::Expire {
                cause,
                reset: reset && cause == Expiry::Idle && flags & conn::CT_F_SEQ != 0,
            },
        }
    }

    /// The decision for an IPv6 entry: a reverse entry (a shared endpoint's, a hairpin
    /// reply's) goes with its forward one, a forward one by [`Self::decide`]'s rule (TCP reset
    /// on idle included).
    #[must_use]
    pub fn decide6(&self, a: AgentTimeouts, k: &FlowKey6, e: &ConnEntry6, now_s: u32) -> Decision6 {
        match e.kind {
            CONN_REVERSE => return Decision6::UnlessForward(k.forward_of_reply(e.addr, e.port)),
            CONN_HAIRPIN_REV => {
                return Decision6::UnlessForward(FlowKey6::of(
                    e.addr, k.dst, e.port, e.vport, k.proto,
                ));
            }
            _ => {}
        }
        match self.expiry(a, (k.proto, e.service), (e.tcp, e.seen_s, e.flags), now_s) {
            Decision::Expire { cause, reset } => Decision6::Expire { cause, reset },
            _ => Decision6::Keep,
        }
    }

    /// The two RSTs of an idle flow `k` with TCP reset on, if its backend is known and the
    /// entry has the numbers (`lb_common::conn::idle_resets`).
    #[must_use]
    pub fn resets(&self, k: &FlowKey4, e: &ConnEntry4) -> Option<[conn::Rst4; 2]> {
        // An outbound flow's entry names both sides itself.
        if e.kind == lb_common::maps::CONN_OUTBOUND {
            return conn::outbound_idle_resets(k, e);
        }
        let SocketAddr::V4(b) = self.backends.get(&e.backend)? else {
            return None;
        };
        conn::idle_resets(k, (b.ip().octets(), b.port().to_be_bytes()), e)
    }

    /// [`Self::resets`] for an IPv6 flow.
    #[must_use]
    pub fn resets6(&self, k: &FlowKey6, e: &ConnEntry6) -> Option<[conn::Rst6; 2]> {
        let SocketAddr::V6(b) = self.backends.get(&e.backend)? else {
            return None;
        };
        conn::idle_resets6(k, (b.ip().octets(), b.port().to_be_bytes()), e)
    }
}

/// The sweeper's counters, shared with the readers (status, stats, metrics). They count since
/// the agent started.
/// One covered backend's outbound use, as the last sweep found it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboundUse {
    /// Tracked outbound flows, and the distinct frontend ports they hold.
    pub flows: u64,
    pub ports: u64,
    /// The most ports seen in use at once since the agent started.
    pub peak: u64,
}

/// Every covered backend's outbound use (by address), written by the sweeper once per pass,
/// read by status, `lb outbound list` and the metrics.
#[derive(Debug, Default)]
pub struct OutboundUsage(std::sync::Mutex<BTreeMap<[u8; 4], OutboundUse>>);

impl OutboundUsage {
    /// Takes in one pass's counts: (flows, distinct ports) per backend. Peaks are kept.
    pub fn record(&self, now: &HashMap<[u8; 4], (u64, u64)>) {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for u in m.values_mut() {
            u.flows = 0;
            u.ports = 0;
        }
        for (a, (flows, ports)) in now {
            let u = m.entry(*a).or_default();
            u.flows = *flows;
            u.ports = *ports;
            u.peak = u.peak.max(*ports);
        }
    }

    /// A copy of the last pass's counts.
    #[must_use]
    pub fn get(&self) -> BTreeMap<[u8; 4], OutboundUse> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[derive(Debug, Default)]
pub struct SweepCounters {
    idle: AtomicU64,
    closed: AtomicU64,
    syn: AtomicU64,
    /// RST segments sent, and sends that failed.
    resets: AtomicU64,
    reset_errors: AtomicU64,
    /// Whole passes over the table, and passes that failed.
    passes: AtomicU64,
    pass_errors: AtomicU64,
}

/// A copy of [`SweepCounters`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepTotals {
    /// Flows removed, by cause (`idle`, `closed`, `syn`).
    pub expired: BTreeMap<String, u64>,
    pub resets: u64,
    pub reset_errors: u64,
    pub passes: u64,
    pub pass_errors: u64,
}

impl SweepCounters {
    pub fn expired(&self, cause: Expiry, n: u64) {
        match cause {
            Expiry::Idle => &self.idle,
            Expiry::Closed => &self.closed,
            Expiry::Syn => &self.syn,
        }
        .fetch_add(n, Ordering::Relaxed);
    }

    pub fn reset_sent(&self, ok: bool) {
        if ok { &self.resets } else { &self.reset_errors }.fetch_add(1, Ordering::Relaxed);
    }

    pub fn pass_done(&self, ok: bool) {
        if ok { &self.passes } else { &self.pass_errors }.fetch_add(1, Ordering::Relaxed);
    }

    #[must_use]
    pub fn totals(&self) -> SweepTotals {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SweepTotals {
            expired: Expiry::ALL
                .iter()
                .map(|c| {
                    let n = match c {
                        Expiry::Idle => &self.idle,
                        Expiry::Closed => &self.closed,
                        Expiry::Syn => &self.syn,
                    };
                    (c.name().to_owned(), get(n))
                })
                .collect(),
            resets: get(&self.resets),
            reset_errors: get(&self.reset_errors),
            passes: get(&self.passes),
            pass_errors: get(&self.pass_errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use lb_common::conn::{CLOSE_TIMEOUT_S, CT_F_SEQ, CT_RST, CT_SYN};

    use super::*;

    const A: AgentTimeouts = AgentTimeouts {
        close_s: CLOSE_TIMEOUT_S,
        syn_s: conn::SYN_TIMEOUT_S,
    };

    fn key(p: u8) -> FlowKey4 {
        FlowKey4::of(
            [198, 51, 100, 7],
            [203, 0, 113, 10],
            [0x9c, 0x40],
            [0, 80],
            p,
        )
    }

    fn policy() -> SweepPolicy {
        SweepPolicy {
            services: HashMap::from([(1, (4, 4, true)), (2, (30, 30, false))]),
            backends: HashMap::from([(3, "192.0.2.11:8080".parse().unwrap())]),
            holds: Vec::new(),
            out_holds: Vec::new(),
        }
    }

    #[test]
    fn a_hold_is_needed_only_by_forward_flows_of_its_backend_to_another_vip() {
        let h = Hold {
            ep: RevKey::of(lb_common::addr::v4_mapped([192, 0, 2, 11]), [0, 80], 6),
            held: RevService {
                vip: lb_common::addr::v4_mapped([203, 0, 113, 10]),
                vport: [0, 80],
                flags: lb_common::maps::REV_F_SHARED,
                service: 1,
                backend: 3,
            },
            want: (lb_common::addr::v4_mapped([203, 0, 113, 11]), [0, 80]),
        };
        let to = |vip: [u8; 4]| FlowKey4::of([198, 51, 100, 7], vip, [0x9c, 0x40], [0, 80], 6);
        let fwd = |backend| ConnEntry4::forward(backend, 1, 0, 0, 0, (0, 0));
        // A flow from before the swap: to the VIP the entry still names.
        assert!(h.needed_by(&to([203, 0, 113, 10]), &fwd(3)));
        // Flows to the VIP it will name, or of another backend, or not forward entries.
        assert!(!h.needed_by(&to([203, 0, 113, 11]), &fwd(3)));
        assert!(!h.needed_by(&to([203, 0, 113, 10]), &fwd(4)));
        let rev = ConnEntry4::new(
            3,
            1,
            CONN_REVERSE,
            0,
            [0, 80],
            [203, 0, 113, 10],
            [0; 2],
            0,
            0,
        );
        assert!(!h.needed_by(&to([203, 0, 113, 10]), &rev));
    }

    /// An outbound flow expires by its rule's idle timeout; its returning entry goes with
    /// its forward entry, or when that entry names another frontend port (the flow took a
    /// new one); a held block is needed by a flow on a port of it.
    #[test]
    fn outbound_flows_follow_their_rule_and_their_forward_entry() {
        use lb_common::{
            maps::{CONN_OUTBOUND, CONN_OUTBOUND_REV},
            outbound::{OUT_SERVICE_FLAG, Slot},
        };
        let mut p = policy();
        p.services.insert(OUT_SERVICE_FLAG | 1, (30, 30, false));
        let (dip, remote, front) = ([192, 0, 2, 11], [198, 51, 100, 77], [203, 0, 113, 10]);
        let fwd_key = FlowKey4::of(dip, remote, [0x9c, 0x40], [1, 187], 6);
        let fwd = ConnEntry4::new(
            0,
            OUT_SERVICE_FLAG | 1,
            CONN_OUTBOUND,
            0,
            [8, 1],
            front,
            [0; 2],
            0,
            100,
        );
        assert_eq!(p.decide(A, &fwd_key, &fwd, 130), Decision::Keep);
        assert!(matches!(
            p.decide(A, &fwd_key, &fwd, 131),
            Decision::Expire {
                cause: Expiry::Idle,
                ..
            }
        ));
        let rev_key = FlowKey4::of(remote, front, [1, 187], [8, 1], 6);
        let rev = ConnEntry4::new(
            0,
            OUT_SERVICE_FLAG | 1,
            CONN_OUTBOUND_REV,
            0,
            [0x9c, 0x40],
            dip,
            [0; 2],
            0,
            100,
        );
        assert_eq!(
            p.decide(A, &rev_key, &rev, 1000),
            Decision::UnlessForwardNames(fwd_key, front, [8, 1])
        );
        let hold = crate::reconcile::OutHold {
            rule: "web".into(),
            slot: Slot {
                frontend: front,
                base: 2048,
            },
            ports: 8,
        };
        assert!(hold.needed_by(&fwd), "port 2049 is in 2048..2056");
        let other = ConnEntry4::new(0, 0, CONN_OUTBOUND, 0, [8, 8], front, [0; 2], 0, 100);
        assert!(!hold.needed_by(&other), "port 2056 is past it");
        assert!(!hold.needed_by(&rev), "only forward entries name the port");
        // TCP reset on idle: the rule's flag in the policy, and both RSTs from the entry
        // alone (an outbound flow names no backend id).
        p.services.insert(OUT_SERVICE_FLAG | 2, (30, 30, true));
        let mut e = ConnEntry4::new(
            0,
            OUT_SERVICE_FLAG | 2,
            CONN_OUTBOUND,
            0,
            [8, 1],
            front,
            [0; 2],
            0,
            100,
        );
        e.flags = CT_F_SEQ;
        assert_eq!(
            p.decide(A, &fwd_key, &e, 131),
            Decision::Expire {
                cause: Expiry::Idle,
                reset: true
            }
        );
        let [to_backend, to_remote] = p.resets(&fwd_key, &e).expect("both sides");
        assert_eq!(&to_backend[16..20], &dip);
        assert_eq!(&to_remote[12..16], &front);
    }

    #[test]
    fn each_service_has_its_own_idle_timeout_and_unknown_ones_the_default() {
        let p = policy();
        let e = |service| ConnEntry4::forward(3, service, 0, 0, 100, (0, 0));
        assert_eq!(p.decide(A, &key(6), &e(1), 104), Decision::Keep);
        assert_eq!(
            p.decide(A, &key(6), &e(1), 105),
            Decision::Expire {
                cause: Expiry::Idle,
                reset: false
            }
        );
        assert_eq!(p.decide(A, &key(6), &e(2), 130), Decision::Keep);
        assert!(matches!(
            p.decide(A, &key(6), &e(2), 131),
            Decision::Expire { .. }
        ));
        // No such service: the protocol's default.
        let tcp = conn::IDLE_TIMEOUT_TCP_S;
        let udp = conn::IDLE_TIMEOUT_UDP_S;
        assert_eq!(p.decide(A, &key(6), &e(9), 100 + tcp), Decision::Keep);
        assert!(matches!(
            p.decide(A, &key(6), &e(9), 101 + tcp),
            Decision::Expire { .. }
        ));
        assert_eq!(p.decide(A, &key(17), &e(9), 100 + udp), Decision::Keep);
        assert!(matches!(
            p.decide(A, &key(17), &e(9), 101 + udp),
            Decision::Expire { .. }
        ));
    }

    #[test]
    fn only_an_idle_flow_that_recorded_its_numbers_is_reset() {
        let p = policy();
        let rec = ConnEntry4::forward(3, 1, 0, CT_F_SEQ, 100, (7, 9));
        assert_eq!(
            p.decide(A, &key(6), &rec, 105),
            Decision::Expire {
                cause: Expiry::Idle,
                reset: true
            }
        );
        let [c, b] = p.resets(&key(6), &rec).expect("a known backend");
        assert_eq!(&c[24..28], &9u32.to_be_bytes());
        assert_eq!(&b[16..20], &[192, 0, 2, 11]);
        assert_eq!(&b[22..24], &8080u16.to_be_bytes());
        // Closed, or never past the SYN: removed without a reset.
        let closed = ConnEntry4::forward(3, 1, CT_RST, CT_F_SEQ, 100, (7, 9));
        assert_eq!(
            p.decide(A, &key(6), &closed, 101 + CLOSE_TIMEOUT_S),
            Decision::Expire {
                cause: Expiry::Closed,
                reset: false
            }
        );
        let syn = ConnEntry4::forward(3, 1, CT_SYN, CT_F_SEQ, 100, (7, 9));
        assert_eq!(
            p.decide(A, &key(6), &syn, 101 + conn::SYN_TIMEOUT_S),
            Decision::Expire {
                cause: Expiry::Syn,
                reset: false
            }
        );
        // A flow that began before reset was turned on has no numbers.
        let before = ConnEntry4::forward(3, 1, 0, 0, 100, (0, 0));
        assert_eq!(
            p.decide(A, &key(6), &before, 105),
            Decision::Expire {
                cause: Expiry::Idle,
                reset: false
            }
        );
    }

    /// IPv6 flows expire by the same rule, their reverse entries follow their forward one, and
    /// an idle one of a service with TCP reset on is reset, with RSTs to its IPv6 backend.
    #[test]
    fn ipv6_flows_expire_and_are_reset_by_the_same_rule() {
        let mut p = policy();
        let a: [u8; 16] = "2001:db8:1::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let vip: [u8; 16] = "2001:db8:3::10"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let k = FlowKey6::of(a, vip, [0x9c, 0x40], [0, 80], 6);
        let e = ConnEntry6::forward(3, 1, 0, CT_F_SEQ, 100, (7, 9));
        assert_eq!(p.decide6(A, &k, &e, 104), Decision6::Keep);
        assert_eq!(
            p.decide6(A, &k, &e, 105),
            Decision6::Expire {
                cause: Expiry::Idle,
                reset: true
            }
        );
        // The RSTs need the backend's IPv6 address: id 3 is an IPv4 one.
        assert_eq!(p.resets6(&k, &e), None);
        p.backends
            .insert(3, "[2001:db8:2::11]:8080".parse().unwrap());
        let [to_client, to_backend] = p.resets6(&k, &e).expect("two RSTs");
        assert_eq!(&to_client[24..40], &a);
        assert_eq!(&to_backend[24..28], &[0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(&to_backend[42..44], &[0x1f, 0x90]);
        // Service 2 has TCP reset off.
        let off = ConnEntry6::forward(3, 2, 0, CT_F_SEQ, 100, (7, 9));
        assert_eq!(
            p.decide6(A, &k, &off, 131),
            Decision6::Expire {
                cause: Expiry::Idle,
                reset: false
            }
        );
        let closed = ConnEntry6::forward(3, 2, CT_RST, 0, 100, (0, 0));
        assert_eq!(
            p.decide6(A, &k, &closed, 101 + CLOSE_TIMEOUT_S),
            Decision6::Expire {
                cause: Expiry::Closed,
                reset: false
            }
        );
        let reply = k.reply_from(a, [0x1f, 0x90]);
        let rev = ConnEntry6::reverse(3, 1, k.dport, k.dst, 0);
        assert_eq!(
            p.decide6(A, &reply, &rev, 1_000_000),
            Decision6::UnlessForward(k)
        );
        // A hairpin reply's: chosen backend → VIP:SNAT port, naming the connecting backend.
        let mut connecting = a;
        connecting[15] = 12;
        let conn_be = FlowKey6::of(connecting, k.dst, [0x9c, 0x41], [0, 80], 6);
        let hrev_key = FlowKey6::of(a, k.dst, [0, 80], [0xc0, 0x01], 6);
        let hrev = ConnEntry6::hairpin(
            3,
            1,
            CONN_HAIRPIN_REV,
            conn_be.sport,
            conn_be.src,
            conn_be.dport,
            4,
            0,
        );
        assert_eq!(
            p.decide6(A, &hrev_key, &hrev, 1_000_000),
            Decision6::UnlessForward(conn_be)
        );
    }

    #[test]
    fn reverse_entries_follow_their_forward_entry() {
        let p = policy();
        let k = key(6);
        // A shared endpoint's reverse entry, keyed by the reply: backend → client.
        let reply = k.reply_from([192, 0, 2, 11], [0x1f, 0x90]);
        let rev = ConnEntry4::new(3, 1, CONN_REVERSE, 0, k.dport, k.dst, [0; 2], 0, 0);
        assert_eq!(
            p.decide(A, &reply, &rev, 1_000_000),
            Decision::UnlessForward(k)
        );
        // A hairpin reply's: chosen backend → VIP:SNAT port, naming the connecting backend.
        let conn_be = FlowKey4::of([192, 0, 2, 12], [203, 0, 113, 10], [0x9c, 0x41], [0, 80], 6);
        let hrev_key = FlowKey4::of([192, 0, 2, 11], [203, 0, 113, 10], [0, 80], [0xc0, 0x01], 6);
        let hrev = ConnEntry4::new(
            3,
            1,
            CONN_HAIRPIN_REV,
            0,
            conn_be.sport,
            conn_be.src,
            conn_be.dport,
            4,
            0,
        );
        assert_eq!(
            p.decide(A, &hrev_key, &hrev, 1_000_000),
            Decision::UnlessForward(conn_be)
        );
    }

    #[test]
    fn totals_name_every_cause() {
        let c = SweepCounters::default();
        c.expired(Expiry::Idle, 3);
        c.expired(Expiry::Syn, 1);
        c.reset_sent(true);
        c.reset_sent(false);
        let t = c.totals();
        assert_eq!(t.expired["idle"], 3);
        assert_eq!(t.expired["closed"], 0);
        assert_eq!(t.expired["syn"], 1);
        assert_eq!((t.resets, t.reset_errors), (1, 1));
    }
}
