//! Outbound NAT (`[[outbound]]` rules): a covered backend's own connection to an address outside
//! the rule's inside prefixes leaves with a frontend address as its source, and a source port
//! from the backend's **block** on that frontend.
//!
//! The blocks are what Ananta's manager hands out: each covered backend owns `ports_per_backend`
//! consecutive ports of one frontend address, so a returning packet's port alone names the
//! backend. [`allocate`] computes them as a pure function of the rule's frontends (with their
//! reserved ports), its backends and the blocks still held by backends that left, so every
//! node of a scale-out deployment that has the same rules and backends computes the same
//! blocks. The fast path picks a flow's port inside its backend's block ([`candidate`]).
//!
//! The allocation, in short: the usable blocks of the frontends, in order, are the **slots**.
//! Backends are placed one at a time in the order of a hash of their address (their
//! *priority*), each into the first free slot at or after its own home slot (a second hash),
//! wrapping around. Held slots are taken before anyone is placed. So:
//! * adding a backend moves only the backends it displaces (a chain of lower-priority backends
//!   whose probe reached its slot), and with slots to spare that chain is short and usually
//!   empty;
//! * removing a backend moves nobody while its block is held; once released, only backends
//!   whose probe passed over that slot move back into it.

use bytemuck::{Pod, Zeroable};

use crate::maps::NextHop;

/// The lowest port a block may use: the well-known ports are never handed out.
pub const OUT_PORT_FIRST: u16 = 1024;
/// Ports of one frontend address that blocks are cut from: `OUT_PORT_FIRST..=65535`.
pub const OUT_PORTS: u32 = 65_536 - OUT_PORT_FIRST as u32;
/// `ports_per_backend` is a multiple of this (the reference's rule).
pub const OUT_BLOCK_ALIGN: u16 = 8;
/// Candidate ports tried for one new outbound flow before it is dropped
/// (`drop_snat_exhausted`). A bounded, unrolled loop for the verifier. It equals the smallest
/// block, so a block of 8 is searched exhaustively.
pub const OUT_PORT_TRIES: u32 = 8;
/// Outbound flows' conntrack entries carry `OUT_SERVICE_FLAG | rule` as their service id, so
/// the sweeper finds the rule's idle timeouts, and no service id (below `MAX_SERVICES`) is
/// ever mistaken for one.
pub const OUT_SERVICE_FLAG: u32 = 1 << 31;

/// [`OutboundEntry4::flags`]: TCP flows are translated.
pub const OUT_F_TCP: u32 = 1;
/// [`OutboundEntry4::flags`]: UDP flows are translated.
pub const OUT_F_UDP: u32 = 2;
/// [`OutboundEntry4::flags`]: TCP reset on idle. New TCP flows record their sequence
/// numbers, so that the sweeper can reset both sides of one that expires idle
/// (`conn::outbound_idle_resets`).
pub const OUT_F_TCP_RESET: u32 = 8;
/// [`OutboundEntry4::flags`] and [`OutFront4::flags`]: the rule is stateless. Its backends'
/// own ephemeral ports are their blocks, so only the address is rewritten, no flow is tracked,
/// and a returning packet's port alone names its backend ([`OutBlockKey4`]): any node of a
/// scale-out deployment translates it.
pub const OUT_F_STATELESS: u32 = 4;

/// `LB_OUTBOUND4` value, keyed by a covered backend's 4-byte address: its block, its rule, and
/// the next hop towards it (for returning packets). Written by the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct OutboundEntry4 {
    /// The address the backend's outbound flows leave with.
    pub frontend: [u8; 4],
    /// The block's first port and its length, host order.
    pub base: u16,
    pub ports: u16,
    /// The rule's id (its conntrack entries' service id is `OUT_SERVICE_FLAG | rule`).
    pub rule: u32,
    /// `OUT_F_*`.
    pub flags: u32,
    /// Towards the backend: where a returning packet is sent.
    pub nh: NextHop,
}
const _: () = assert!(size_of::<OutboundEntry4>() == 32);

impl OutboundEntry4 {
    /// Whether flows of IP protocol `proto` are translated.
    #[inline(always)]
    #[must_use]
    pub const fn covers(&self, proto: u8) -> bool {
        let bit = match proto {
            crate::flow::proto::TCP => OUT_F_TCP,
            crate::flow::proto::UDP => OUT_F_UDP,
            _ => 0,
        };
        self.flags & bit != 0
    }
}

/// `LB_OUT_FRONTS4` value, keyed by a frontend address: which rule it belongs to. Its presence
/// is what tells a packet to a frontend port apart from one to nothing (the fast path looks up
/// the returning flow only then).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct OutFront4 {
    pub rule: u32,
    /// The rule's block size, and `OUT_F_STATELESS` (the only flag here).
    pub ports: u16,
    pub flags: u16,
}

impl OutFront4 {
    /// Whether the rule is stateless.
    #[inline(always)]
    #[must_use]
    pub const fn stateless(&self) -> bool {
        self.flags as u32 & OUT_F_STATELESS != 0
    }
}

/// `LB_OUT_BLOCKS4` key: a frontend address and a block's index on it (stateless rules only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Pod, Zeroable)]
#[repr(C)]
pub struct OutBlockKey4 {
    pub frontend: [u8; 4],
    pub index: u32,
}

impl OutBlockKey4 {
    /// The key of the block that holds `port` on `frontend`, for blocks of `ports` ports;
    /// `None` below the first block, or for a block size of 0.
    #[inline(always)]
    #[must_use]
    pub const fn of(frontend: [u8; 4], port: u16, ports: u16) -> Option<Self> {
        if port < OUT_PORT_FIRST || ports == 0 {
            return None;
        }
        Some(Self {
            frontend,
            index: (port - OUT_PORT_FIRST) as u32 / ports as u32,
        })
    }
}

crate::impl_user_pod!(OutboundEntry4, OutFront4, OutBlockKey4);

/// The `attempt`th candidate source port of a new outbound flow with flow hash `hash`, in the
/// block `base..base + ports`. Consecutive attempts are a fixed prime stride apart, so the
/// first [`OUT_PORT_TRIES`] candidates are distinct in any block of at least that many ports
/// (property-tested); the start uses the hash's upper half, as hairpin SNAT does.
#[inline(always)]
#[must_use]
pub const fn candidate(base: u16, ports: u16, hash: u32, attempt: u32) -> u16 {
    if ports == 0 {
        return base;
    }
    let h = hash.rotate_left(16);
    let off = h.wrapping_add(attempt.wrapping_mul(7_919)) % ports as u32;
    #[expect(clippy::cast_possible_truncation, reason = "off < ports <= u16::MAX")]
    let off = off as u16;
    base.wrapping_add(off)
}

/// The RST that refuses a TCP segment: its sequence number, acknowledgement and flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
}

/// The RST that refuses a new outbound connection whose SYN (flags `flags`) found no free
/// port, RFC 9293's reset for a segment without ACK: sequence 0, acknowledging everything the
/// SYN carried (`next`: its sequence number plus its length, SYN included, host order), RST
/// and ACK set. The sender's stack, in SYN-SENT, accepts it and fails the `connect()` at once.
/// `None` for anything but a bare SYN (a flow's later segments are only dropped).
#[inline(always)]
#[must_use]
pub const fn refusal(flags: u8, next: u32) -> Option<Refusal> {
    use crate::hdr::{TCP_ACK, TCP_RST};
    if !crate::conn::is_syn(flags) {
        return None;
    }
    Some(Refusal {
        seq: 0,
        ack: next,
        flags: TCP_RST | TCP_ACK,
    })
}

#[cfg(feature = "std")]
pub use self::alloc::*;

#[cfg(feature = "std")]
mod alloc {
    use std::{
        collections::{BTreeMap, BTreeSet},
        ops::RangeInclusive,
    };

    use super::{OUT_BLOCK_ALIGN, OUT_PORT_FIRST, OUT_PORTS};

    /// `ports_per_backend` as configured: a multiple of 8, from 8 to the whole port space.
    ///
    /// # Errors
    /// Why not, with the numbers.
    pub fn check_ports_per_backend(ppb: u32) -> Result<u16, String> {
        if ppb == 0 || !ppb.is_multiple_of(u32::from(OUT_BLOCK_ALIGN)) || ppb > OUT_PORTS {
            return Err(format!(
                "ports_per_backend {ppb}: must be a multiple of {OUT_BLOCK_ALIGN} from {OUT_BLOCK_ALIGN} to {OUT_PORTS} (the ports {OUT_PORT_FIRST}-65535 of one frontend address)"
            ));
        }
        #[expect(clippy::cast_possible_truncation, reason = "<= OUT_PORTS")]
        Ok(ppb as u16)
    }

    /// One frontend address of a rule, and the ports on it no block may contain: the ports of
    /// its services, and the hairpin SNAT range where the address is an internal VIP with
    /// hairpin SNAT.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Frontend {
        pub addr: [u8; 4],
        pub reserved: Vec<RangeInclusive<u16>>,
    }

    /// One block: a frontend address and its first port (its length is the rule's
    /// `ports_per_backend`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct Slot {
        pub frontend: [u8; 4],
        pub base: u16,
    }

    /// Why a rule's backends do not fit: the numbers.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Shortfall {
        /// Backends to place, and blocks still held by backends that left.
        pub backends: usize,
        pub held: usize,
        /// Blocks of `ports_per_backend` ports the frontends offer in all, and how many of the
        /// cuts reserved ports ruled out.
        pub blocks: usize,
        pub reserved_out: usize,
        pub ports_per_backend: u16,
    }

    impl std::fmt::Display for Shortfall {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "{} backends{} need {} blocks of {} ports, but the frontends offer {} ({} ports each \
                 from {OUT_PORT_FIRST}, less {} blocks that hold service or hairpin ports)",
                self.backends,
                if self.held > 0 {
                    format!(" and {} held blocks of backends that left", self.held)
                } else {
                    String::new()
                },
                self.backends + self.held,
                self.ports_per_backend,
                self.blocks,
                OUT_PORTS,
                self.reserved_out,
            )
        }
    }

    /// The first ports of the usable blocks of `f` for blocks of `ppb` ports (aligned cuts of
    /// `OUT_PORT_FIRST..=65535`, less those that contain a reserved port), and how many cuts were
    /// ruled out.
    #[must_use]
    pub fn usable_bases(f: &Frontend, ppb: u16) -> (Vec<u16>, usize) {
        let mut out = Vec::new();
        let mut ruled_out = 0;
        if ppb == 0 {
            return (out, 0);
        }
        let cuts = OUT_PORTS / u32::from(ppb);
        for k in 0..cuts {
            let lo = u32::from(OUT_PORT_FIRST) + k * u32::from(ppb);
            let hi = lo + u32::from(ppb) - 1;
            let clash = f
                .reserved
                .iter()
                .any(|r| u32::from(*r.start()) <= hi && u32::from(*r.end()) >= lo);
            if clash {
                ruled_out += 1;
            } else {
                #[expect(clippy::cast_possible_truncation, reason = "lo <= 65535 - ppb + 1")]
                out.push(lo as u16);
            }
        }
        (out, ruled_out)
    }

    /// A 32-bit mix of an address and a salt (`splitmix`'s finaliser): priorities and home
    /// slots, fixed, so they depend on nothing but the address (not on the flow-hash seed).
    fn mix(a: [u8; 4], salt: u32) -> u64 {
        let mut z = u64::from(u32::from_be_bytes(a)) << 32 | u64::from(salt);
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Every backend's block: see the module's description of the placement. `held` are
    /// blocks that stay taken (their backend left, and its flows have not all expired). Slots
    /// are the frontends' usable blocks in the order given, so the caller passes frontends in
    /// a fixed order (the rule's, as configured).
    ///
    /// # Errors
    /// More backends than free slots: the numbers, to show the operator.
    pub fn allocate(
        frontends: &[Frontend],
        ppb: u16,
        backends: &BTreeSet<[u8; 4]>,
        held: &BTreeSet<Slot>,
    ) -> Result<BTreeMap<[u8; 4], Slot>, Shortfall> {
        // Every aligned cut of every frontend, usable or not: a backend's home is a cut, so
        // a port reserved (or freed) later changes the usability of one cut and moves only the
        // backends that were in it or probed past it, not every home.
        let mut cuts: Vec<(Slot, bool)> = Vec::new();
        let mut ruled_out = 0;
        for f in frontends {
            let (bases, out) = usable_bases(f, ppb);
            ruled_out += out;
            let all = if ppb == 0 {
                0
            } else {
                OUT_PORTS / u32::from(ppb)
            };
            for k in 0..all {
                #[expect(clippy::cast_possible_truncation, reason = "a port")]
                let base = (u32::from(OUT_PORT_FIRST) + k * u32::from(ppb)) as u16;
                let slot = Slot {
                    frontend: f.addr,
                    base,
                };
                cuts.push((slot, bases.binary_search(&base).is_ok()));
            }
        }
        let usable = cuts.iter().filter(|(_, u)| *u).count();
        // A cut is free when it is usable, not held, and not taken yet.
        let mut taken: Vec<bool> = cuts.iter().map(|(s, u)| !u || held.contains(s)).collect();
        let held_here = cuts.iter().filter(|(s, u)| *u && held.contains(s)).count();
        if backends.len() + held_here > usable {
            return Err(Shortfall {
                backends: backends.len(),
                held: held_here,
                blocks: usable,
                reserved_out: ruled_out,
                ports_per_backend: ppb,
            });
        }
        let mut order: Vec<[u8; 4]> = backends.iter().copied().collect();
        order.sort_by_key(|a| (mix(*a, 0x6f75_7462), *a));
        let n = cuts.len();
        let mut out = BTreeMap::new();
        for b in order {
            #[expect(clippy::cast_possible_truncation, reason = "< n, a usize")]
            let home = (mix(b, 0x626c_6f63) % n as u64) as usize;
            // There is a free cut: the count was checked above.
            let i = (0..n)
                .map(|d| (home + d) % n)
                .find(|i| !taken[*i])
                .expect("a free cut exists");
            taken[i] = true;
            out.insert(b, cuts[i].0);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    fn frontends(n: usize, reserved: &[u16]) -> Vec<Frontend> {
        (0..n)
            .map(|i| Frontend {
                #[expect(clippy::cast_possible_truncation, reason = "small test counts")]
                addr: [203, 0, 113, 10 + i as u8],
                reserved: reserved.iter().map(|p| *p..=*p).collect(),
            })
            .collect()
    }

    fn addrs(v: &[u16]) -> BTreeSet<[u8; 4]> {
        v.iter()
            .map(|x| {
                let [hi, lo] = x.to_be_bytes();
                [198, 51, hi, lo]
            })
            .collect()
    }

    /// Backends whose block differs between two allocations.
    fn moved(a: &BTreeMap<[u8; 4], Slot>, b: &BTreeMap<[u8; 4], Slot>) -> Vec<[u8; 4]> {
        a.iter()
            .filter(|(k, s)| b.get(*k).is_some_and(|t| t != *s))
            .map(|(k, _)| *k)
            .collect()
    }

    fn ppb_strategy() -> impl Strategy<Value = u16> {
        prop_oneof![
            Just(8u16),
            Just(64),
            Just(1024),
            (1u16..=200).prop_map(|k| k * 8)
        ]
    }

    proptest! {
        /// No two backends share a block, no block leaves the frontend's port space or
        /// contains a reserved port, and the same input gives the same answer.
        #[test]
        fn blocks_are_disjoint_and_clear(
            ppb in ppb_strategy(),
            nf in 1usize..3,
            reserved in proptest::collection::vec(1u16.., 0..6),
            bs in proptest::collection::btree_set(any::<u16>(), 0..40),
        ) {
            let fs = frontends(nf, &reserved);
            let backends = addrs(&bs.into_iter().collect::<Vec<_>>());
            let Ok(a) = allocate(&fs, ppb, &backends, &BTreeSet::new()) else {
                // Only when they really do not fit.
                let total: usize = fs.iter().map(|f| usable_bases(f, ppb).0.len()).sum();
                prop_assert!(backends.len() > total);
                return Ok(());
            };
            prop_assert_eq!(a.len(), backends.len());
            let slots: BTreeSet<Slot> = a.values().copied().collect();
            prop_assert_eq!(slots.len(), a.len(), "two backends share a block");
            for s in a.values() {
                prop_assert!(s.base >= OUT_PORT_FIRST);
                prop_assert!(u32::from(s.base) + u32::from(ppb) <= 65_536);
                prop_assert_eq!((s.base - OUT_PORT_FIRST) % ppb, 0);
                for p in &reserved {
                    prop_assert!(!(s.base..=s.base + (ppb - 1)).contains(p), "block {s:?} holds service port {p}");
                }
            }
            prop_assert_eq!(allocate(&fs, ppb, &backends, &BTreeSet::new()), Ok(a));
        }

        /// Adding a backend moves only backends that were displaced: each one that moved finds
        /// its old block taken by another (so none moves unless it must), and with slots to
        /// spare few move.
        #[test]
        fn adding_moves_only_the_displaced(
            bs in proptest::collection::btree_set(any::<u16>(), 1..60),
            extra in any::<u16>(),
        ) {
            let fs = frontends(1, &[80, 443]);
            let before = addrs(&bs.iter().copied().collect::<Vec<_>>());
            let mut after = before.clone();
            after.extend(addrs(&[extra]));
            let a = allocate(&fs, 64, &before, &BTreeSet::new()).unwrap();
            let b = allocate(&fs, 64, &after, &BTreeSet::new()).unwrap();
            let m = moved(&a, &b);
            let owner: BTreeMap<Slot, [u8; 4]> = b.iter().map(|(k, s)| (*s, *k)).collect();
            for k in &m {
                let taker = owner.get(&a[k]);
                prop_assert!(taker.is_some_and(|t| t != k), "{k:?} moved from a block nobody took");
            }
            // 1000 slots, at most 61 backends: a displacement chain is rare and short.
            prop_assert!(m.len() <= 3, "{} moved", m.len());
        }

        /// Reserving one more port (a service added on the frontend) moves the backend whose
        /// block held it, and those it displaces, never the rest: homes do not depend on which
        /// cuts are usable.
        #[test]
        fn reserving_a_port_moves_only_the_block_that_held_it(
            bs in proptest::collection::btree_set(any::<u16>(), 1..60),
            port in 1024u16..,
        ) {
            let before = addrs(&bs.iter().copied().collect::<Vec<_>>());
            let a = allocate(&frontends(1, &[80]), 64, &before, &BTreeSet::new()).unwrap();
            let b = allocate(&frontends(1, &[80, port]), 64, &before, &BTreeSet::new()).unwrap();
            let m = moved(&a, &b);
            prop_assert!(m.len() <= 3, "{} moved", m.len());
            let hit = a.iter().find(|(_, s)| (s.base..=s.base + 63).contains(&port)).map(|(k, _)| *k);
            for k in &m {
                prop_assert!(Some(*k) == hit || b.values().any(|s| *s == a[k]), "{k:?} moved for nothing");
            }
        }

        /// Removing a backend whose block stays held moves nobody, and nobody gets the held
        /// block.
        #[test]
        fn removing_with_hold_moves_nobody(
            bs in proptest::collection::btree_set(any::<u16>(), 2..60),
            pick in any::<prop::sample::Index>(),
        ) {
            let fs = frontends(2, &[80]);
            let before = addrs(&bs.iter().copied().collect::<Vec<_>>());
            let a = allocate(&fs, 512, &before, &BTreeSet::new()).unwrap();
            let gone = *pick.get(&before.iter().copied().collect::<Vec<_>>());
            let mut after = before.clone();
            after.remove(&gone);
            let held = BTreeSet::from([a[&gone]]);
            let b = allocate(&fs, 512, &after, &held).unwrap();
            prop_assert!(moved(&a, &b).is_empty());
            prop_assert!(!b.values().any(|s| held.contains(s)));
        }

        /// The first `OUT_PORT_TRIES` candidates are distinct and inside the block.
        #[test]
        fn candidates_are_distinct_and_inside(ppb in ppb_strategy(), hash in any::<u32>(), k in 0u16..4) {
            let base = OUT_PORT_FIRST + k * ppb;
            let c: BTreeSet<u16> = (0..OUT_PORT_TRIES).map(|i| candidate(base, ppb, hash, i)).collect();
            prop_assert_eq!(c.len(), OUT_PORT_TRIES as usize);
            for p in c {
                prop_assert!(p >= base && u32::from(p) < u32::from(base) + u32::from(ppb));
            }
        }
    }

    #[test]
    fn only_a_syn_is_refused_with_a_reset_that_acknowledges_it() {
        use crate::hdr::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
        let r = refusal(TCP_SYN, 1001).unwrap();
        assert_eq!(
            r,
            Refusal {
                seq: 0,
                ack: 1001,
                flags: TCP_RST | TCP_ACK
            }
        );
        for f in [TCP_ACK, TCP_SYN | TCP_ACK, TCP_FIN | TCP_ACK, TCP_RST] {
            assert_eq!(refusal(f, 1), None, "{f:#x}");
        }
    }

    proptest! {
        /// Every port of a block maps to that block's key, and no other block's.
        #[test]
        fn a_port_names_its_block(ppb in ppb_strategy(), k in 0u16..8, off in any::<u16>()) {
            let base = OUT_PORT_FIRST + k * ppb;
            prop_assume!(u32::from(base) + u32::from(ppb) <= 65_536);
            let port = base + off % ppb;
            let key = OutBlockKey4::of([203, 0, 113, 10], port, ppb).unwrap();
            prop_assert_eq!(key.index, u32::from(k));
            prop_assert_eq!(OutBlockKey4::of([203, 0, 113, 10], 1023, ppb), None);
        }
    }

    /// A block of 8 is searched exhaustively: 8 flows to one destination find 8 ports.
    #[test]
    fn a_block_of_eight_is_searched_whole() {
        for hash in [0, 1, 0xdead_beef, u32::MAX] {
            let c: BTreeSet<u16> = (0..OUT_PORT_TRIES)
                .map(|i| candidate(2048, 8, hash, i))
                .collect();
            assert_eq!(c, (2048..2056).collect());
        }
    }

    #[test]
    fn ports_per_backend_is_checked() {
        assert_eq!(check_ports_per_backend(8), Ok(8));
        assert_eq!(check_ports_per_backend(64_512), Ok(64_512));
        for bad in [0, 4, 12, 64_520, 100_000] {
            let e = check_ports_per_backend(bad).unwrap_err();
            assert!(
                e.contains(&bad.to_string()) && e.contains("multiple of 8"),
                "{e}"
            );
        }
    }

    /// The error names the numbers.
    #[test]
    fn shortfall_names_the_numbers() {
        let fs = frontends(1, &[80]);
        let e = allocate(&fs, 32_768, &addrs(&[1, 2]), &BTreeSet::new()).unwrap_err();
        assert_eq!(e.blocks, 1);
        assert_eq!(e.reserved_out, 0);
        let s = e.to_string();
        assert!(s.contains("2 backends need 2 blocks of 32768 ports"), "{s}");
        assert!(s.contains("offer 1"), "{s}");
        // Port 80 is below 1024: no block holds it. A port inside one rules it out.
        let fs = frontends(1, &[2000]);
        let (bases, out) = usable_bases(&fs[0], 32_256);
        assert_eq!((bases, out), (vec![33_280], 1));
    }
}
