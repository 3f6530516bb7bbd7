//! The verdict: what happens to a packet, with the reason it is counted under. The reason's
//! type is the action's class, so a drop can only be counted as a drop reason and a pass as a
//! pass reason; [`crate::lb_xdp`] counts it and returns the action, in one place.

use aya_ebpf::bindings::xdp_action;
use lb_common::verdict::{DropReason, PassReason, Reason, SendReason};

#[derive(Clone, Copy)]
pub enum Verdict {
    Drop(DropReason),
    Pass(PassReason),
    /// Sent by the program: `XDP_TX`, or the action `bpf_redirect` returned.
    Sent(u32, SendReason),
    /// Dropped (never forwarded), and answered: the frame now carries the program's refusal
    /// back to the sender (action as for `Sent`). Outbound port exhaustion answers a SYN with a
    /// RST this way, so the backend's `connect()` fails at once instead of retrying.
    Refused(u32, DropReason),
}

impl Verdict {
    /// The XDP action.
    #[inline(always)]
    pub fn action(self) -> u32 {
        match self {
            Self::Drop(_) => xdp_action::XDP_DROP,
            Self::Pass(_) => xdp_action::XDP_PASS,
            Self::Sent(a, _) | Self::Refused(a, _) => a,
        }
    }

    /// The reason it is counted under.
    #[inline(always)]
    pub fn reason(self) -> Reason {
        match self {
            Self::Drop(r) | Self::Refused(_, r) => r.reason(),
            Self::Pass(r) => r.reason(),
            Self::Sent(_, r) => r.reason(),
        }
    }
}
