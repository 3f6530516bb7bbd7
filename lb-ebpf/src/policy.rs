//! Admission, for new flows only (established flows are not re-checked): an internal VIP's
//! source set first (its internal prefixes, its own backends marked hairpin), then the
//! endpoint's ACL. Each is one LPM lookup in `LB_ACL4`, made only where the service has one
//! (`SVC_F_INTERNAL`, a non-zero `acl_id`): a public service without rules checks nothing.

use lb_common::{
    flow::FlowKey4,
    maps::{
        ACL_HAIRPIN, ACL_PERMIT, AclValue, SVC_F_INTERNAL, ServiceInfo, VIP_F_HAIRPIN_SNAT,
        acl_key4,
    },
    verdict::DropReason,
};

use crate::maps::{LB_ACL4, LB_VIPS4};

/// A new flow that may go on.
pub enum Admitted {
    /// To the service's table.
    Balance,
    /// A backend of an internal VIP with hairpin SNAT, connecting to its own VIP: the hairpin
    /// program takes it.
    Hairpin,
}

/// Admits a new flow to `svc`, or says why not.
///
/// # Errors
/// The drop reason: outside an internal VIP's prefixes, a hairpin the VIP drops, or the ACL.
#[inline(always)]
pub fn admit(flow: &FlowKey4, svc: &ServiceInfo) -> Result<Admitted, DropReason> {
    let src = flow.src;
    if svc.flags & SVC_F_INTERNAL != 0
        && let Some(vip) = LB_VIPS4.get_ptr(flow.dst)
    {
        // SAFETY: read at once; the value is plain data.
        let (ilb_id, flags) = unsafe { ((*vip).ilb_id, (*vip).flags) };
        if ilb_id != 0 {
            match acl_lookup(ilb_id, src) {
                Some(ACL_PERMIT) => {}
                Some(ACL_HAIRPIN) if flags & VIP_F_HAIRPIN_SNAT != 0 => {
                    return Ok(Admitted::Hairpin);
                }
                Some(ACL_HAIRPIN) => return Err(DropReason::Hairpin),
                _ => return Err(DropReason::NotInternal),
            }
        }
    }
    if !acl_permits(svc, src) {
        return Err(DropReason::Acl);
    }
    Ok(Admitted::Balance)
}

/// Whether a new flow's source passes the endpoint's ACL (counted per service when not).
#[inline(always)]
pub fn acl_permits(svc: &ServiceInfo, src: [u8; 4]) -> bool {
    if svc.acl_id != 0 && acl_lookup(svc.acl_id, src) != Some(ACL_PERMIT) {
        crate::stats::count_acl_drop(svc.id);
        return false;
    }
    true
}

/// A source's verdict in an `LB_ACL4` set: one LPM lookup. The agent always installs a default
/// entry, so a miss cannot happen for a live set; callers treat it as a deny anyway.
#[inline(always)]
pub fn acl_lookup(acl_id: u32, src: [u8; 4]) -> Option<u32> {
    acl_entry(acl_id, src).map(|v| v.action)
}

/// A source's entry in an `LB_ACL4` set (verdict and deciding rule).
#[inline(always)]
pub fn acl_entry(acl_id: u32, src: [u8; 4]) -> Option<AclValue> {
    LB_ACL4
        .get(aya_ebpf::maps::lpm_trie::Key::new(
            32 + 32,
            acl_key4(acl_id, src),
        ))
        .copied()
}
