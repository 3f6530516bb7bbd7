//! Frames the program sent that the kernel lost afterwards: the rules of the failure counters.
//!
//! An `XDP_REDIRECT` or `XDP_TX` verdict is counted as sent (`forward`, `reply`, ...) when the
//! program returns it, but the driver transmits the frame later, and may drop it: a veth whose
//! peer has no NAPI (no XDP program, GRO off) drops every frame sent into it, and the program
//! cannot see that. The kernel reports those losses only in its `xdp` tracepoints, so `lb-ebpf`
//! attaches small programs to them (`xmit.rs`) that count, per served interface, into
//! `LB_XMIT_FAILS`. The agent pre-creates one entry per interface it serves, so events of
//! other interfaces and other programs find no entry and are not counted.
//!
//! Offsets are those of the tracepoints' `format` files (`/sys/kernel/tracing/events/xdp/*/format`),
//! stable kernel ABI since 4.18 (`xdp_devmap_xmit` took its present form in 5.6).

use bytemuck::{Pod, Zeroable};

use crate::impl_user_pod;

/// `LB_XMIT_FAILS` value (per CPU): frames lost after the program sent them, per interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct XmitFails {
    /// Redirected frames the kernel failed or dropped (`xdp_redirect_err`, and the drops of
    /// `xdp_devmap_xmit`: the target's `ndo_xdp_xmit` refused them).
    pub redirect: u64,
    /// `XDP_TX` frames the driver dropped (`xdp_bulk_tx` drops, `xdp_exception` with `TX`).
    pub tx: u64,
    /// `XDP_ABORTED` verdicts (`xdp_exception` with `ABORTED`): a program error.
    pub aborted: u64,
}
const _: () = assert!(size_of::<XmitFails>() == 24);
impl_user_pod!(XmitFails);

impl XmitFails {
    /// The per-CPU values summed.
    #[must_use]
    pub fn sum(values: &[Self]) -> Self {
        values.iter().fold(Self::default(), |a, v| Self {
            redirect: a.redirect + v.redirect,
            tx: a.tx + v.tx,
            aborted: a.aborted + v.aborted,
        })
    }

    /// Whether any frame was lost.
    #[must_use]
    pub const fn any(&self) -> bool {
        self.redirect != 0 || self.tx != 0 || self.aborted != 0
    }
}

/// Capacity of `LB_XMIT_FAILS`: the interfaces one agent serves.
pub const MAX_IFACES: u32 = 256;

/// The XDP actions as the tracepoints report them.
pub const ACT_ABORTED: u32 = 0;
pub const ACT_TX: u32 = 3;

/// Field offsets in the tracepoints' records (after the 8-byte common header).
pub mod off {
    /// `xdp:xdp_exception`: `int prog_id; u32 act; int ifindex;`
    pub const EXCEPTION_ACT: usize = 12;
    pub const EXCEPTION_IFINDEX: usize = 16;
    /// `xdp:xdp_redirect_err`: `... int ifindex; int err; int to_ifindex;`
    pub const REDIRECT_ERR_IFINDEX: usize = 16;
    pub const REDIRECT_ERR_TO: usize = 24;
    /// `xdp:xdp_bulk_tx`: `int ifindex; u32 act; int drops;`
    pub const BULK_TX_IFINDEX: usize = 8;
    pub const BULK_TX_DROPS: usize = 16;
    /// `xdp:xdp_devmap_xmit`: `int from_ifindex; u32 act; int to_ifindex; int drops;`
    pub const DEVMAP_FROM: usize = 8;
    pub const DEVMAP_TO: usize = 16;
    pub const DEVMAP_DROPS: usize = 20;
}

/// Which counter an `xdp_exception` of action `act` adds to, if any. A failed redirect is
/// left out: the kernel's `xdp_do_redirect` reports it as `xdp_redirect_err` as well, and
/// it is counted there once.
#[must_use]
pub const fn exception_field(act: u32) -> Option<Field> {
    match act {
        ACT_ABORTED => Some(Field::Aborted),
        ACT_TX => Some(Field::Tx),
        _ => None,
    }
}

/// The counters of [`XmitFails`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Redirect,
    Tx,
    Aborted,
}

/// The interface a lost redirect is counted under: the target (where the fix applies: the
/// device that cannot take the frame) when the agent serves it, else the ingress device.
#[must_use]
pub fn redirect_owner(to: u32, from: u32, served: impl Fn(u32) -> bool) -> Option<u32> {
    if served(to) {
        Some(to)
    } else if served(from) {
        Some(from)
    } else {
        None
    }
}

/// How many frames a `drops` field stands for: the kernel's field is signed; a negative or
/// zero count adds nothing.
#[must_use]
pub const fn drops(raw: i32) -> u64 {
    if raw > 0 { raw as u64 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exceptions_count_aborted_and_tx_only() {
        assert_eq!(exception_field(ACT_ABORTED), Some(Field::Aborted));
        assert_eq!(exception_field(ACT_TX), Some(Field::Tx));
        // DROP, PASS and REDIRECT (counted by xdp_redirect_err) add nothing.
        for act in [1, 2, 4, 5, u32::MAX] {
            assert_eq!(exception_field(act), None, "act {act}");
        }
    }

    #[test]
    fn a_lost_redirect_belongs_to_the_served_target_first() {
        let served = |i: u32| i == 3 || i == 7;
        assert_eq!(redirect_owner(3, 7, served), Some(3));
        assert_eq!(redirect_owner(9, 7, served), Some(7));
        assert_eq!(redirect_owner(9, 8, served), None);
    }

    #[test]
    fn drops_are_never_negative() {
        assert_eq!(drops(-22), 0);
        assert_eq!(drops(0), 0);
        assert_eq!(drops(5), 5);
    }

    #[test]
    fn sums_over_cpus() {
        let v = [
            XmitFails {
                redirect: 1,
                tx: 2,
                aborted: 3,
            },
            XmitFails {
                redirect: 10,
                tx: 0,
                aborted: 1,
            },
        ];
        let s = XmitFails::sum(&v);
        assert_eq!((s.redirect, s.tx, s.aborted), (11, 2, 4));
        assert!(s.any());
        assert!(!XmitFails::default().any());
    }
}
