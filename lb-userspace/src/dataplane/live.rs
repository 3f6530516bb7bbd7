//! Adoption's read of the pinned maps (`MapOps::read_live`): every entry an earlier agent
//! left, both families, in the agent's family-agnostic form.

use lb_common::{
    addr::{Addr, prefix_from_v4, v4_mapped},
    consts::map_names,
    maps::{
        AclValue, Backend, BackendId, Counters, RevKey, RevKey4, RevKey6, RevService, ServiceKey,
        ServiceKey4, ServiceKey6, VipKey,
    },
};

use super::{
    LiveMaps,
    maps::{Maps, op_err, read_array},
};
use crate::error::MapOpError;

impl Maps {
    /// Everything an earlier agent left in the pinned maps (`MapOps::read_live`).
    pub(super) fn live(&self) -> Result<LiveMaps, MapOpError> {
        let mut services = Vec::new();
        let mut ha_seen = std::collections::HashSet::new();
        for item in &self.services {
            let (k, v) = item.map_err(op_err(map_names::SERVICES4, "walk"))?;
            // An HA-ports endpoint is one entry per protocol: one service (protocol 0).
            let k = match k.port {
                [0, 0] => ServiceKey4 { proto: 0, ..k },
                _ => k,
            };
            if k.proto != 0 || ha_seen.insert(k) {
                services.push((ServiceKey::from_v4(&k), v));
            }
        }
        let mut ha_seen6 = std::collections::HashSet::new();
        for item in &self.services6 {
            let (k, v) = item.map_err(op_err(map_names::SERVICES6, "walk"))?;
            let k = match k.port {
                [0, 0] => ServiceKey6 { proto: 0, ..k },
                _ => k,
            };
            if k.proto != 0 || ha_seen6.insert(k) {
                services.push((ServiceKey::from_v6(&k), v));
            }
        }
        let mut vips = Vec::new();
        for item in &self.vips {
            let (k, v) = item.map_err(op_err(map_names::VIPS4, "walk"))?;
            vips.push((VipKey { vip: v4_mapped(k) }, v));
        }
        for item in &self.vips6 {
            let (k, v) = item.map_err(op_err(map_names::VIPS6, "walk"))?;
            vips.push((VipKey { vip: k }, v));
        }
        let mut backends: Vec<(BackendId, Backend)> = (0..)
            .zip(read_array(
                &self.backends,
                map_names::BACKENDS4,
                0,
                self.backends.len(),
            )?)
            .filter(|(_, b)| b.is_active())
            .map(|(id, b)| (id, Backend::from_v4(&b)))
            .collect();
        backends.extend(
            (0..)
                .zip(read_array(
                    &self.backends6,
                    map_names::BACKENDS6,
                    0,
                    self.backends6.len(),
                )?)
                .filter(|(_, b)| b.is_active())
                .map(|(id, b)| (id, Backend::from_v6(&b))),
        );
        backends.sort_by_key(|(id, _)| *id);
        let mut acl = Vec::new();
        let mut items: Vec<(u32, u32, Addr, AclValue)> = Vec::new();
        for item in &self.acl {
            let (k, v) = item.map_err(op_err(map_names::ACL4, "walk"))?;
            let data = k.data();
            let (id, a) = data.split_at(4);
            let (len, addr) = prefix_from_v4(
                k.prefix_len().saturating_sub(32),
                a.try_into().expect("4 bytes"),
            );
            items.push((
                u32::from_be_bytes(id.try_into().expect("4 bytes")),
                len,
                addr,
                v,
            ));
        }
        for item in &self.acl6 {
            let (k, v) = item.map_err(op_err(map_names::ACL6, "walk"))?;
            let data = k.data();
            let (id, a) = data.split_at(4);
            items.push((
                u32::from_be_bytes(id.try_into().expect("4 bytes")),
                k.prefix_len().saturating_sub(32),
                a.try_into().expect("16 bytes"),
                v,
            ));
        }
        for (id, len, addr, v) in items {
            let action = match v.action {
                lb_common::maps::ACL_PERMIT => lb_common::acl::Action::Permit,
                lb_common::maps::ACL_HAIRPIN => lb_common::acl::Action::Hairpin,
                // ACL_DENY, and anything unknown: such a set never equals a wanted one, so it
                // is replaced, and its entries are deleted by prefix all the same.
                _ => lb_common::acl::Action::Deny,
            };
            acl.push((
                id,
                lb_common::acl::Entry {
                    prefix: lb_common::acl::Prefix { addr, len },
                    action,
                    rule: (v.rule != u32::MAX).then_some(v.rule),
                },
            ));
        }
        let mut pips = Vec::new();
        for item in &self.pips {
            let (k, v) = item.map_err(op_err(map_names::PIPS4, "walk"))?;
            pips.push((v4_mapped(k), v4_mapped(v.addr), v.nh));
        }
        for item in &self.pips6 {
            let (k, v) = item.map_err(op_err(map_names::PIPS6, "walk"))?;
            pips.push((k, v.addr, v.nh));
        }
        let mut pip_revs = Vec::new();
        for item in &self.pip_rev6 {
            let (k, v) = item.map_err(op_err(map_names::PIP_REV6, "walk"))?;
            pip_revs.push((k, v.addr));
        }
        for item in &self.pip_rev {
            let (k, v) = item.map_err(op_err(map_names::PIP_REV4, "walk"))?;
            pip_revs.push((v4_mapped(k), v4_mapped(v.addr)));
        }
        let mut routes = Vec::new();
        for item in &self.routes {
            let (k, nh) = item.map_err(op_err(map_names::ROUTES4, "walk"))?;
            let (len, a) = prefix_from_v4(k.prefix_len(), k.data());
            routes.push((len, a, nh));
        }
        for item in &self.routes6 {
            let (k, nh) = item.map_err(op_err(map_names::ROUTES6, "walk"))?;
            routes.push((k.prefix_len(), k.data(), nh));
        }
        let mut revs: Vec<(RevKey, RevService)> = Vec::new();
        let mut ha_seen = std::collections::HashSet::new();
        for item in &self.revsvc {
            let (k, v) = item.map_err(op_err(map_names::REVSVC, "walk"))?;
            // An HA-ports backend's entry is one per protocol: one endpoint (protocol 0).
            let k = match k.port {
                [0, 0] => RevKey4 { proto: 0, ..k },
                _ => k,
            };
            if k.proto != 0 || ha_seen.insert(RevKey::from_v4(&k)) {
                revs.push((RevKey::from_v4(&k), RevService::from_v4(&v)));
            }
        }
        for item in &self.revsvc6 {
            let (k, v) = item.map_err(op_err(map_names::REVSVC6, "walk"))?;
            let k = match k.port {
                [0, 0] => RevKey6 { proto: 0, ..k },
                _ => k,
            };
            if k.proto != 0 || ha_seen.insert(RevKey::from_v6(&k)) {
                revs.push((RevKey::from_v6(&k), RevService::from_v6(&v)));
            }
        }
        let ours = (0..)
            .zip(read_array(&self.ours, map_names::OURS, 0, self.ours.len())?)
            .filter(|(_, w)| *w != 0)
            .collect();
        let mut locals = Vec::new();
        for k in self.locals.keys() {
            locals.push(v4_mapped(k.map_err(op_err(map_names::LOCALS, "walk"))?));
        }
        for k in self.locals6.keys() {
            locals.push(k.map_err(op_err(map_names::LOCALS6, "walk"))?);
        }
        let retired = (0..)
            .zip(read_array(
                &self.retired,
                map_names::RETIRED_STATS,
                0,
                self.retired.len(),
            )?)
            .filter(|(_, c)| *c != Counters::default())
            .collect();
        let mut outbound = Vec::new();
        for item in &self.outbound {
            outbound.push(item.map_err(op_err(map_names::OUTBOUND4, "walk"))?);
        }
        let mut out_fronts = Vec::new();
        for item in &self.out_fronts {
            out_fronts.push(item.map_err(op_err(map_names::OUT_FRONTS4, "walk"))?);
        }
        let mut out_blocks = Vec::new();
        for item in &self.out_blocks {
            out_blocks.push(item.map_err(op_err(map_names::OUT_BLOCKS4, "walk"))?);
        }
        let mut out_inside = Vec::new();
        for k in self.out_inside.keys() {
            let k = k.map_err(op_err(map_names::OUT_INSIDE4, "walk"))?;
            let [r0, r1, r2, r3, a0, a1, a2, a3] = k.data();
            // The key's data is (rule id big-endian, address); its length counts the id's 32
            // bits.
            #[expect(clippy::cast_possible_truncation, reason = "at most 32 + 32")]
            let len = k.prefix_len().saturating_sub(32) as u8;
            out_inside.push((u32::from_be_bytes([r0, r1, r2, r3]), [a0, a1, a2, a3], len));
        }
        Ok(LiveMaps {
            services,
            vips,
            backends,
            acl,
            pips,
            pip_revs,
            routes,
            revs,
            ours,
            locals,
            retired,
            outbound,
            out_fronts,
            out_blocks,
            out_inside,
        })
    }
}
