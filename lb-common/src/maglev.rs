//! Per-service lookup tables: the slot rule (both sides) and Maglev table construction (agent).
//!
//! The fast path picks `table[slot(flow_hash, table_len)]`. The agent fills tables with Maglev
//! (Eisenbud et al., NSDI 2016): every backend has a preference permutation of the slots, and
//! backends take turns claiming their most preferred free slot. Turns are weighted as katran
//! does: in each round every backend earns its weight in credit and claims one slot per
//! `max_weight` of credit, so slot shares follow weights. A backend's permutation depends only
//! on its address and port, and backends are visited in address order, so two agents given the
//! same backends build the same table, whatever ids or insertion order they use.
//!
//! # Why the permutation is not the paper's `offset + j·skip`
//! With linear permutations, two backends' preference lists are affine images of each other
//! (`p_b = c + (skip_b / skip_a)·p_a mod M`). For some address pairs the lists are then strongly
//! correlated, and adding or removing one backend cascades through the fill: the property tests
//! found 2 → 3 backends moving 8 % of the table beyond the new backend's fair share. Here
//! `p(j) = offset + skip·(j + shift)^e mod M`, with `e` odd and coprime to `M − 1`, so `x ↦ x^e`
//! is a bijection of `Z_M` (M prime) and `p` is still a permutation, but a non-linear one: the
//! correlation is gone and disruption stays within 1 % beyond the fair share.

/// The slot a flow hash selects in a table of `table_len` slots (`None` for an empty table).
#[inline(always)]
#[must_use]
pub const fn slot(hash: u32, table_len: u32) -> Option<u32> {
    // verifier: the explicit zero check keeps a division by zero out of the program.
    if table_len == 0 {
        None
    } else {
        Some(hash % table_len)
    }
}

/// Whether `n` is prime (table sizes must be, so every `skip` generates a full permutation).
#[must_use]
pub const fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// A service's table fingerprint: FNV-1a (64 bits) over the flow-hash seed, the slot count
/// and each slot's backend address (IPv4-mapped for IPv4) and port, in slot order. Two nodes
/// whose fingerprints agree send every flow of the service to the same backend: the slot a
/// flow takes depends only on the seed and the table length, and the backend in it only on
/// this content (backend ids are each node's own, so they are left out).
#[must_use]
pub fn fingerprint(
    seed: u32,
    slots: impl ExactSizeIterator<Item = (crate::addr::Addr, u16)>,
) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    eat(&seed.to_be_bytes());
    #[expect(
        clippy::cast_possible_truncation,
        reason = "tables hold at most 2^28 slots"
    )]
    eat(&(slots.len() as u32).to_be_bytes());
    for (addr, port) in slots {
        eat(&addr);
        eat(&port.to_be_bytes());
    }
    h
}

#[cfg(feature = "std")]
pub use build::{TableBackend, build_table};

#[cfg(feature = "std")]
mod build {
    use crate::{addr::Addr, hash::murmur3, maps::BackendId};

    const OFFSET_SEED: u32 = 0x6d61_676c; // "magl"
    const SKIP_SEED: u32 = 0x6576_3031; // "ev01"
    const SHIFT_SEED: u32 = 0x7368_6674; // "shft"

    /// One eligible backend as the table builder sees it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct TableBackend {
        /// What the slots hold. Not an input to the permutation.
        pub id: BackendId,
        pub addr: Addr,
        pub port: u16,
        /// Relative share of slots; 0 means "no slots".
        pub weight: u32,
    }

    impl TableBackend {
        fn words(&self) -> [u32; 5] {
            let a = &self.addr;
            let w = |i: usize| u32::from_le_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
            [w(0), w(4), w(8), w(12), u32::from(self.port)]
        }
    }

    /// Builds a table of `size` slots (a prime) over `backends`. Backends with weight 0 get no
    /// slot; with no eligible backend every slot is 0 ("none").
    ///
    /// # Panics
    /// If `size` is not prime: the caller validates sizes (config and CLI errors name them).
    #[must_use]
    pub fn build_table(backends: &[TableBackend], size: u32) -> Vec<BackendId> {
        assert!(super::is_prime(size), "table size {size} is not prime");
        let m = u64::from(size);
        let mut bs: Vec<&TableBackend> = backends.iter().filter(|b| b.weight > 0).collect();
        bs.sort_by_key(|b| (b.addr, b.port));
        bs.dedup_by_key(|b| (b.addr, b.port));
        let mut table = vec![0; size as usize];
        let Some(max_w) = bs.iter().map(|b| u64::from(b.weight)).max() else {
            return table;
        };
        let mut filled = vec![false; size as usize];
        let e = permutation_exponent(m);
        let prefs: Vec<(u64, u64, u64)> = bs
            .iter()
            .map(|b| {
                let w = b.words();
                let offset = u64::from(murmur3(&w, OFFSET_SEED)) % m;
                let skip = u64::from(murmur3(&w, SKIP_SEED)) % (m - 1) + 1;
                let shift = u64::from(murmur3(&w, SHIFT_SEED)) % m;
                (offset, skip, shift)
            })
            .collect();
        // Backend i's preferred slots, in order: each backend walks its own permutation one
        // step at a time, so `Walk` produces them without a division per step.
        let mut walks: Vec<Walk> = prefs.iter().map(|&p| Walk::new(p, e, m)).collect();
        let mut credit = vec![0u64; bs.len()];
        let mut n = 0u32;
        loop {
            for (i, b) in bs.iter().enumerate() {
                credit[i] += u64::from(b.weight);
                if credit[i] < max_w {
                    continue;
                }
                credit[i] -= max_w;
                let mut c = walks[i].next();
                while filled[c] {
                    c = walks[i].next();
                }
                filled[c] = true;
                table[c] = b.id;
                n += 1;
                if n == size {
                    return table;
                }
            }
        }
    }

    /// The largest exponent [`permutation_exponent`] can return for a table size up to
    /// 2^32: the product of the odd primes below 29 exceeds 2^32, so one of them is coprime to
    /// `m − 1`.
    const MAX_E: usize = 29;

    /// One backend's preference list `p(j) = offset + skip·(j + shift)^e mod m` for
    /// j = 0, 1, 2, ...: a polynomial of degree `e` in `j`, walked with forward differences
    /// (`e` additions per step, no division), which gives exactly the values of evaluating
    /// `p(j)` directly.
    struct Walk {
        d: [u64; MAX_E + 1],
        e: usize,
        m: u64,
    }

    impl Walk {
        fn new((offset, skip, shift): (u64, u64, u64), e: u64, m: u64) -> Self {
            let p = |j: u64| -> u64 {
                let x = (j + shift) % m;
                let mut v = x;
                for _ in 1..e {
                    v = v * x % m;
                }
                (offset + skip * v) % m
            };
            let e = usize::try_from(e).expect("small");
            assert!(e <= MAX_E, "exponent {e} out of range");
            // d[k] = Δ^k p(0), from p(0..=e).
            let mut d = [0u64; MAX_E + 1];
            let mut row: Vec<u64> = (0..=e as u64).map(p).collect();
            for dk in d.iter_mut().take(e + 1) {
                *dk = row[0];
                for i in 0..row.len() - 1 {
                    row[i] = (row[i + 1] + m - row[i]) % m;
                }
                row.pop();
            }
            Self { d, e, m }
        }

        /// The next preferred slot.
        fn next(&mut self) -> usize {
            let v = self.d[0];
            for k in 0..self.e {
                let s = self.d[k] + self.d[k + 1];
                self.d[k] = if s >= self.m { s - self.m } else { s };
            }
            usize::try_from(v).expect("a slot index")
        }
    }

    /// The smallest odd `e ≥ 3` coprime to `m − 1`: then `x ↦ x^e mod m` permutes `Z_m`.
    fn permutation_exponent(m: u64) -> u64 {
        const fn gcd(mut a: u64, mut b: u64) -> u64 {
            while b != 0 {
                (a, b) = (b, a % b);
            }
            a
        }
        let mut e = 3;
        while gcd(e, m - 1) != 1 {
            e += 2;
        }
        e
    }

    #[cfg(test)]
    mod tests {
        use proptest::prelude::*;

        use super::{Walk, permutation_exponent};

        proptest! {
            /// The walk equals direct evaluation of the permutation, for table sizes whose
            /// exponent is 3, 5, 7, 11 or 13 (m − 1 divisible by the smaller odd primes).
            #[test]
            fn walk_equals_direct_evaluation(
                m in prop::sample::select(vec![7u64, 31, 211, 251, 2311, 30_031, 65_537]),
                seed in any::<(u64, u64, u64)>(),
            ) {
                let e = permutation_exponent(m);
                let (offset, skip, shift) = (seed.0 % m, seed.1 % (m - 1) + 1, seed.2 % m);
                let mut w = Walk::new((offset, skip, shift), e, m);
                for j in 0..3 * m.min(1000) {
                    let x = (j + shift) % m;
                    let mut v = x;
                    for _ in 1..e {
                        v = v * x % m;
                    }
                    let direct = usize::try_from((offset + skip * v) % m).unwrap();
                    prop_assert_eq!(w.next(), direct, "m {} e {} j {}", m, e, j);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::addr::v4_mapped;

    proptest::proptest! {
        /// The fingerprint is a function of the seed and the slots' contents, and any one
        /// change among them changes it: a backend moved into another slot, another seed,
        /// one slot more.
        #[test]
        fn fingerprints_follow_the_table_content(
            seed in proptest::prelude::any::<u32>(),
            slots in proptest::collection::vec((0u8..8, 80u16..82), 1..64),
            at in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let table: Vec<(crate::addr::Addr, u16)> =
                slots.iter().map(|(l, p)| (v4_mapped([192, 0, 2, *l]), *p)).collect();
            let f = fingerprint(seed, table.iter().copied());
            proptest::prop_assert_eq!(f, fingerprint(seed, table.clone().into_iter()));
            proptest::prop_assert_ne!(f, fingerprint(seed ^ 1, table.iter().copied()));
            let mut other = table.clone();
            let i = at.index(other.len());
            other[i].0[15] ^= 0x80;
            proptest::prop_assert_ne!(f, fingerprint(seed, other.iter().copied()));
            let mut longer = table.clone();
            longer.push(table[0]);
            proptest::prop_assert_ne!(f, fingerprint(seed, longer.iter().copied()));
        }
    }

    fn be(id: u32, last: u8, weight: u32) -> TableBackend {
        TableBackend {
            id,
            addr: v4_mapped([192, 0, 2, last]),
            port: 80,
            weight,
        }
    }

    #[test]
    fn slot_rule() {
        assert_eq!(slot(10, 0), None);
        assert_eq!(slot(10, 7), Some(3));
        assert_eq!(slot(u32::MAX, 65_537), Some(u32::MAX % 65_537));
    }

    #[test]
    fn primes() {
        assert!(is_prime(65_537) && is_prime(2) && is_prime(251));
        assert!(!is_prime(0) && !is_prime(1) && !is_prime(65_536) && !is_prime(1_000_001));
    }

    #[test]
    fn empty_and_single() {
        assert!(build_table(&[], 251).iter().all(|&s| s == 0));
        assert!(build_table(&[be(1, 11, 0)], 251).iter().all(|&s| s == 0));
        assert!(build_table(&[be(7, 11, 1)], 251).iter().all(|&s| s == 7));
    }

    #[test]
    fn even_spread_and_no_holes() {
        let bs = [be(1, 11, 1), be(2, 12, 1), be(3, 13, 1)];
        let t = build_table(&bs, 65_537);
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for s in &t {
            *counts.entry(*s).or_default() += 1;
        }
        assert!(!counts.contains_key(&0), "a slot was left empty");
        for id in 1..=3 {
            let c = counts[&id];
            assert!(c.abs_diff(65_537 / 3) <= 1, "backend {id} has {c} slots");
        }
    }

    #[test]
    fn independent_of_ids_and_order() {
        let a = build_table(&[be(1, 11, 1), be(2, 12, 1), be(3, 13, 1)], 4093);
        let b = build_table(&[be(30, 13, 1), be(10, 11, 1), be(20, 12, 1)], 4093);
        let by_addr =
            |t: &[u32], ids: &HashMap<u32, u8>| -> Vec<u8> { t.iter().map(|i| ids[i]).collect() };
        let ia = HashMap::from([(1, 11), (2, 12), (3, 13)]);
        let ib = HashMap::from([(10, 11), (20, 12), (30, 13)]);
        assert_eq!(by_addr(&a, &ia), by_addr(&b, &ib));
    }

    mod props {
        use proptest::prelude::*;

        use super::super::*;
        use crate::addr::v4_mapped;

        const M: u32 = 65_537;

        /// Up to `n` backends with distinct addresses in 192.0.2.0/24 and 198.51.100.0/24.
        fn backends(
            n: std::ops::RangeInclusive<usize>,
            weights: std::ops::RangeInclusive<u32>,
        ) -> impl Strategy<Value = Vec<TableBackend>> {
            proptest::collection::btree_set(0u16..512, n)
                .prop_flat_map(move |addrs| {
                    let len = addrs.len();
                    (Just(addrs), proptest::collection::vec(weights.clone(), len))
                })
                .prop_map(|(addrs, ws)| {
                    addrs
                        .into_iter()
                        .zip(ws)
                        .enumerate()
                        .map(|(i, (a, w))| {
                            let net = if a < 256 { [192, 0, 2] } else { [198, 51, 100] };
                            #[expect(clippy::cast_possible_truncation, reason = "a % 256 fits")]
                            let host = (a % 256) as u8;
                            TableBackend {
                                id: i as u32 + 1,
                                addr: v4_mapped([net[0], net[1], net[2], host]),
                                port: 80,
                                weight: w,
                            }
                        })
                        .collect()
                })
        }

        fn counts(t: &[u32]) -> std::collections::HashMap<u32, u32> {
            let mut m = std::collections::HashMap::new();
            for s in t {
                *m.entry(*s).or_default() += 1;
            }
            m
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(24))]

            /// No hole while any backend is eligible, and each backend's share of slots is
            /// within 1 % of its share of the total weight.
            #[test]
            fn full_and_weighted(bs in backends(1..=40, 1..=5)) {
                let t = build_table(&bs, M);
                prop_assert!(t.iter().all(|&s| s != 0), "a slot is empty");
                let total: u32 = bs.iter().map(|b| b.weight).sum();
                let c = counts(&t);
                for b in &bs {
                    let got = f64::from(c.get(&b.id).copied().unwrap_or(0)) / f64::from(M);
                    let want = f64::from(b.weight) / f64::from(total);
                    prop_assert!((got - want).abs() <= 0.01, "backend {} has {got:.4} of the slots, weight share {want:.4}", b.id);
                }
            }

            /// Removing one of N backends moves only its slots, plus at most 1 % of the rest.
            #[test]
            fn removal_is_minimally_disruptive(bs in backends(2..=40, 1..=1), pick in any::<prop::sample::Index>()) {
                let gone = bs[pick.index(bs.len())].id;
                let before = build_table(&bs, M);
                let rest: Vec<TableBackend> = bs.iter().copied().filter(|b| b.id != gone).collect();
                let after = build_table(&rest, M);
                let others = before.iter().filter(|&&s| s != gone).count();
                let moved = before.iter().zip(&after).filter(|(b, a)| **b != gone && b != a).count();
                prop_assert!(moved as f64 <= 0.01 * others as f64, "{moved} of {others} other slots moved");
                prop_assert!(after.iter().all(|&s| s != gone && s != 0));
            }

            /// Adding a backend moves at most its fair share of slots plus 1 %.
            #[test]
            fn addition_moves_at_most_a_fair_share(bs in backends(2..=40, 1..=1)) {
                let (new, old) = bs.split_last().expect("at least two");
                let before = build_table(old, M);
                let after = build_table(&bs, M);
                let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
                let fair = f64::from(M) / bs.len() as f64;
                prop_assert!(moved as f64 <= fair + 0.01 * f64::from(M), "{moved} slots moved, fair share {fair:.0}");
                prop_assert!(after.contains(&new.id));
            }

            /// Same backends (any order, any ids): the same table, by address.
            #[test]
            fn same_inputs_same_table(bs in backends(1..=20, 1..=3), seed in any::<u64>()) {
                let mut shuffled = bs.clone();
                // A cheap deterministic shuffle and a renumbering of the ids.
                let n = shuffled.len();
                for i in (1..n).rev() {
                    shuffled.swap(i, (seed as usize).wrapping_mul(i + 7) % (i + 1));
                }
                for (i, b) in shuffled.iter_mut().enumerate() {
                    b.id = 1000 + i as u32;
                }
                let addr_of = |t: &[u32], bs: &[TableBackend]| -> Vec<[u8; 16]> {
                    let m: std::collections::HashMap<u32, [u8; 16]> = bs.iter().map(|b| (b.id, b.addr)).collect();
                    t.iter().map(|id| m[id]).collect()
                };
                prop_assert_eq!(addr_of(&build_table(&bs, 4093), &bs), addr_of(&build_table(&shuffled, 4093), &shuffled));
            }
        }
    }
}
