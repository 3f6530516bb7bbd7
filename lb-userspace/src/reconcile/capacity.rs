//! Every capacity check, made before any write: a desired state that cannot fit the maps is
//! refused with the map and its limit named, and nothing changes.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    acl,
    consts::{MAX_ACL_ENTRIES, MAX_BACKENDS, MAX_PIPS, MAX_SERVICES},
};

use super::{
    alloc::Alloc,
    live::{Live, vip_range},
    plan::acl_rules,
};
use crate::{error::ChangeError, state::State};

/// Refuses `next` if it cannot fit next to what is live. `changed` services are counted twice
/// where a change needs room for the new copy while the old one is still live (their table and
/// ACL set, and their VIP's source set).
///
/// # Errors
/// [`ChangeError::Capacity`] naming the map and its limit.
pub fn check(
    next: &State,
    live: &Live,
    alloc: &Alloc,
    ring_slots: u32,
    changed: Option<&crate::spec::ServiceSpec>,
) -> Result<(), ChangeError> {
    let new_services = next
        .services
        .keys()
        .filter(|s| !live.services.contains_key(*s))
        .count();
    if new_services > alloc.services.free_count() {
        return Err(ChangeError::Capacity(format!(
            "the service map is full ({MAX_SERVICES} services)"
        )));
    }
    let new_backends: usize = next
        .services
        .iter()
        .map(|(s, st)| {
            let mut live_backends = live.backends_of_spec(s).map(|(a, _)| *a).peekable();
            if live_backends.peek().is_none() {
                return st.backends.len();
            }
            let have: BTreeSet<SocketAddr> = live_backends.collect();
            st.backends.keys().filter(|a| !have.contains(*a)).count()
        })
        .sum();
    if new_backends > alloc.backends.free_count() {
        return Err(ChangeError::Capacity(format!(
            "the backend map is full ({} backends)",
            MAX_BACKENDS - 1
        )));
    }
    if next.pips.len() > MAX_PIPS as usize {
        return Err(ChangeError::Capacity(format!(
            "the PIP maps are full ({MAX_PIPS} PIPs)"
        )));
    }
    // Every endpoint's compiled ACL, plus the changed one's new set while it is swapped in;
    // every internal VIP's source set (its prefixes, one host entry per backend address, the
    // default deny; an upper bound), plus the changed VIP's again.
    let ilb_set = |ip: IpAddr| -> usize {
        let Some((_, first)) = next.services.range(vip_range(ip)).next() else {
            return 0;
        };
        if first.settings.internal.is_empty() {
            return 0;
        }
        let hosts: BTreeSet<IpAddr> = next
            .services
            .range(vip_range(ip))
            .flat_map(|(_, s)| s.backends.keys().map(SocketAddr::ip))
            .collect();
        first.settings.internal.len() + hosts.len() + 1
    };
    let vips: BTreeSet<IpAddr> = next.services.keys().map(|s| s.vip.ip()).collect();
    let acl_need: usize = next
        .services
        .values()
        .map(|s| acl::compile(&acl_rules(s)).len())
        .sum::<usize>()
        + changed
            .and_then(|c| next.services.get(c))
            .map_or(0, |s| acl::compile(&acl_rules(s)).len())
        + vips.iter().map(|ip| ilb_set(*ip)).sum::<usize>()
        + changed.map_or(0, |c| ilb_set(c.vip.ip()));
    if acl_need > MAX_ACL_ENTRIES as usize {
        return Err(ChangeError::Capacity(format!(
            "the ACLs would need {acl_need} LPM entries; the map holds {MAX_ACL_ENTRIES}"
        )));
    }
    // Every service's table plus, while it is swapped, one new table for a changed one.
    let need: u64 = next
        .services
        .values()
        .map(|s| u64::from(s.settings.table_size))
        .sum::<u64>()
        + changed
            .and_then(|c| next.services.get(c))
            .map_or(0, |s| u64::from(s.settings.table_size));
    if need > u64::from(ring_slots) {
        return Err(ChangeError::Capacity(format!(
            "the lookup tables need {need} slots but the agent has {ring_slots} (raise agent.ring_slots or use smaller --table-size)"
        )));
    }
    Ok(())
}
