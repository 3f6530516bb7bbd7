//! Endpoint ACLs: ordered permit/deny rules by remote prefix, first match wins, compiled into
//! longest-prefix-match entries so the fast path does one LPM lookup instead of walking rules.
//!
//! # Semantics (the reference's)
//! * Rules are evaluated by their order number, lowest first; the first rule whose prefix
//!   contains the source decides.
//! * No rules: everyone is permitted.
//! * Once any permit rule exists, a source that matches no rule is denied; with only deny
//!   rules, such a source is permitted.
//!
//! # Compilation
//! Prefixes are nested or disjoint. A rule is emitted as an LPM entry unless an earlier rule's
//! prefix contains its own (then no address ever reaches it: it is shadowed), and a default
//! entry over the family's whole space ([`Prefix::family_space`]) carries the no-match verdict. For any address, the first matching rule is
//! never shadowed (an earlier rule containing it would match first), and every longer emitted
//! prefix containing the address would belong to a later rule inside an earlier one's prefix,
//! which is exactly what is not emitted. So the longest match is the first match; the
//! property test below checks it on random rule sets.

use crate::addr::Addr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Permit,
    Deny,
    /// Internal-VIP sets only (never from rules): a backend of the VIP as the source.
    Hairpin,
}

/// A prefix in map form: a 16-byte address and a length over those 128 bits (an IPv4 /p has
/// length `96 + p`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: Addr,
    pub len: u32,
}

impl Prefix {
    /// Whether `a` lies in this prefix.
    #[must_use]
    pub fn contains(&self, a: &Addr) -> bool {
        let full = (self.len / 8) as usize;
        let rest = self.len % 8;
        if self.addr[..full] != a[..full] {
            return false;
        }
        if rest == 0 {
            return true;
        }
        let mask = 0xffu8 << (8 - rest);
        (self.addr[full] & mask) == (a[full] & mask)
    }

    /// Whether `other` lies entirely in this prefix.
    #[must_use]
    pub fn covers(&self, other: &Self) -> bool {
        self.len <= other.len && self.contains(&other.addr)
    }

    /// The whole address space of this prefix's family: `::ffff:0:0/96` for an IPv4 prefix,
    /// `::/0` otherwise. A set's default entry is this, not always `::/0`: the IPv4 maps hold
    /// IPv4 prefixes only (`0.0.0.0/0` is the IPv4 `/96`), so a rule for `0.0.0.0/0` and a
    /// `::/0` default would be one key there, and the later write would win.
    #[must_use]
    pub fn family_space(&self) -> Self {
        match crate::addr::prefix_v4(&self.addr, self.len) {
            Some(_) => Self {
                addr: crate::addr::v4_mapped([0; 4]),
                len: crate::addr::V4_MAPPED_PREFIX_LEN,
            },
            None => Self {
                addr: [0; 16],
                len: 0,
            },
        }
    }
}

/// One rule as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub order: u32,
    pub action: Action,
    pub prefix: Prefix,
}

/// One LPM entry: the verdict for the prefix, and which rule gave it (`None`: the default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub prefix: Prefix,
    pub action: Action,
    pub rule: Option<u32>,
}

/// The verdict for a source that matches no rule.
#[must_use]
pub fn default_action(rules: &[Rule]) -> Action {
    if rules.iter().any(|r| r.action == Action::Permit) {
        Action::Deny
    } else {
        Action::Permit
    }
}

/// First match in order: the reference semantics, as a plain walk (the model).
#[must_use]
pub fn first_match(rules: &[Rule], a: &Addr) -> (Action, Option<u32>) {
    let mut sorted: Vec<&Rule> = rules.iter().collect();
    sorted.sort_by_key(|r| r.order);
    sorted
        .iter()
        .find(|r| r.prefix.contains(a))
        .map_or((default_action(rules), None), |r| (r.action, Some(r.order)))
}

/// Compiles rules into LPM entries (see the module doc). Empty input gives no entries: the
/// fast path then skips the lookup (everyone is permitted).
#[must_use]
pub fn compile(rules: &[Rule]) -> Vec<Entry> {
    if rules.is_empty() {
        return Vec::new();
    }
    let mut sorted: Vec<&Rule> = rules.iter().collect();
    sorted.sort_by_key(|r| r.order);
    let mut out: Vec<Entry> = Vec::new();
    for (i, r) in sorted.iter().enumerate() {
        if sorted[..i].iter().any(|e| e.prefix.covers(&r.prefix)) {
            continue; // shadowed: an earlier rule decides every address it has
        }
        out.push(Entry {
            prefix: r.prefix,
            action: r.action,
            rule: Some(r.order),
        });
    }
    // A service's rules are all of its family (the agent checks), so the first one's space
    // is the set's.
    let space = sorted[0].prefix.family_space();
    if !out.iter().any(|e| e.prefix.covers(&space)) {
        out.push(Entry {
            prefix: space,
            action: default_action(rules),
            rule: None,
        });
    }
    out
}

/// Longest-prefix match over entries (what the kernel's LPM trie does).
#[must_use]
pub fn lpm<'a>(entries: &'a [Entry], a: &Addr) -> Option<&'a Entry> {
    entries
        .iter()
        .filter(|e| e.prefix.contains(a))
        .max_by_key(|e| e.prefix.len)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::addr::{V4_MAPPED_PREFIX_LEN, v4_mapped};

    fn v4(a: [u8; 4], p: u32) -> Prefix {
        let bits = u32::from_be_bytes(a) & if p == 0 { 0 } else { u32::MAX << (32 - p) };
        Prefix {
            addr: v4_mapped(bits.to_be_bytes()),
            len: V4_MAPPED_PREFIX_LEN + p,
        }
    }

    #[test]
    fn reference_semantics() {
        let a = v4_mapped([198, 51, 100, 2]);
        assert_eq!(first_match(&[], &a).0, Action::Permit);
        assert!(compile(&[]).is_empty());
        let deny_only = [Rule {
            order: 10,
            action: Action::Deny,
            prefix: v4([203, 0, 113, 0], 24),
        }];
        assert_eq!(
            first_match(&deny_only, &a),
            (Action::Permit, None),
            "only denies: others pass"
        );
        let permit = [Rule {
            order: 10,
            action: Action::Permit,
            prefix: v4([203, 0, 113, 0], 24),
        }];
        assert_eq!(
            first_match(&permit, &a),
            (Action::Deny, None),
            "a permit exists: others are denied"
        );
        // Lower order wins regardless of prefix length.
        let rules = [
            Rule {
                order: 20,
                action: Action::Permit,
                prefix: v4([198, 51, 100, 0], 26),
            },
            Rule {
                order: 10,
                action: Action::Deny,
                prefix: v4([198, 51, 100, 0], 24),
            },
        ];
        assert_eq!(first_match(&rules, &a), (Action::Deny, Some(10)));
        let e = compile(&rules);
        assert_eq!(
            lpm(&e, &a).map(|e| (e.action, e.rule)),
            Some((Action::Deny, Some(10)))
        );
        assert_eq!(e.len(), 2, "the shadowed /26 is not emitted: {e:?}");
    }

    /// Rules and addresses drawn from a small space, so prefixes nest and overlap often.
    fn rule() -> impl Strategy<Value = Rule> {
        (
            0u32..50,
            any::<bool>(),
            0u8..4,
            0u8..=255,
            prop_oneof![Just(0u32), 16u32..=32],
        )
            .prop_map(|(order, permit, c, d, p)| Rule {
                order,
                action: if permit { Action::Permit } else { Action::Deny },
                prefix: v4([198, 51, 100 + c, d], p),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// For every source, the compiled LPM entries give the first-match-in-order verdict.
        #[test]
        fn lpm_equals_first_match(
            rules in proptest::collection::vec(rule(), 0..12),
            addrs in proptest::collection::vec((0u8..5, any::<u8>()), 32),
        ) {
            // Orders are unique, as the CLI enforces.
            let mut seen = std::collections::BTreeSet::new();
            let rules: Vec<Rule> = rules.into_iter().filter(|r| seen.insert(r.order)).collect();
            let entries = compile(&rules);
            // Every entry is an IPv4 prefix, and no two share one: each is its own key in the
            // IPv4 map (a `::/0` default beside a `0.0.0.0/0` rule would be one key there).
            let keys: std::collections::BTreeSet<_> = entries
                .iter()
                .map(|e| crate::addr::prefix_v4(&e.prefix.addr, e.prefix.len))
                .collect();
            prop_assert!(!keys.contains(&None), "{:?}", entries);
            prop_assert_eq!(keys.len(), entries.len());
            for (c, d) in addrs {
                let a = v4_mapped([198, 51, 100 + c, d]);
                let want = first_match(&rules, &a);
                let got = lpm(&entries, &a).map_or((Action::Permit, None), |e| (e.action, e.rule));
                prop_assert_eq!(got, want, "address {:?}", &a[12..]);
            }
        }
    }
}
