//! Counting frames the kernel lost after the program sent them (`lb_common::xmit`): four
//! tracepoint programs on the kernel's `xdp` tracepoints, attached by the agent. They count
//! only for interfaces with an entry in `LB_XMIT_FAILS` (the agent makes one per interface it
//! serves), so other devices' and other programs' events cost a lookup and nothing else.

use aya_ebpf::{EbpfContext as _, macros::tracepoint, programs::TracePointContext};
use lb_common::xmit::{self, Field, off};

use crate::maps::LB_XMIT_FAILS;

/// Adds `n` to counter `f` of interface `ifindex`, if the agent serves it.
#[inline(always)]
fn add(ifindex: u32, f: Field, n: u64) {
    if let Some(c) = LB_XMIT_FAILS.get_ptr_mut(ifindex) {
        // SAFETY: a per-CPU value of a preallocated hash map; the agent never deletes an entry
        // while it runs, and nothing else writes this CPU's copy during the program's run.
        unsafe {
            match f {
                Field::Redirect => (*c).redirect += n,
                Field::Tx => (*c).tx += n,
                Field::Aborted => (*c).aborted += n,
            }
        }
    }
}

/// Reads a 32-bit field of the tracepoint's record. A direct load, not aya's `read_at`
/// (`bpf_probe_read_kernel`): a tracepoint program may read its record in place, the verifier
/// checks the offset against the record's size and alignment, and `xdp_devmap_xmit` fires on
/// every redirect flush, so a helper call there would cost every redirected packet.
#[inline(always)]
fn field(ctx: &TracePointContext, at: usize) -> u32 {
    let p = ctx.as_ptr().cast::<u8>().wrapping_add(at);
    #[expect(
        clippy::cast_ptr_alignment,
        reason = "the record is 8-aligned and every offset read is a multiple of 4"
    )]
    let p = p.cast::<u32>();
    // SAFETY: `at` is a 4-aligned offset inside the tracepoint's record
    // (`lb_common::xmit::off`), which the kernel hands the program.
    unsafe { core::ptr::read_volatile(p) }
}

#[inline(always)]
fn served(ifindex: u32) -> bool {
    LB_XMIT_FAILS.get_ptr(ifindex).is_some()
}

/// `xdp:xdp_exception`: an `XDP_ABORTED` verdict, or an `XDP_TX` frame the driver could not
/// queue.
#[tracepoint]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[tracepoint] entry point takes its context by value"
)]
pub fn lb_tp_exception(ctx: TracePointContext) -> u32 {
    if let Some(f) = xmit::exception_field(field(&ctx, off::EXCEPTION_ACT)) {
        add(field(&ctx, off::EXCEPTION_IFINDEX), f, 1);
    }
    0
}

/// `xdp:xdp_redirect_err`: `xdp_do_redirect` refused a redirect (no such device, down, or no
/// `ndo_xdp_xmit`).
#[tracepoint]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[tracepoint] entry point takes its context by value"
)]
pub fn lb_tp_redirect_err(ctx: TracePointContext) -> u32 {
    let to = field(&ctx, off::REDIRECT_ERR_TO);
    let from = field(&ctx, off::REDIRECT_ERR_IFINDEX);
    if let Some(i) = xmit::redirect_owner(to, from, served) {
        add(i, Field::Redirect, 1);
    }
    0
}

/// `xdp:xdp_bulk_tx`: a driver flushed its `XDP_TX` queue; `drops` frames did not go (veth:
/// the peer cannot receive).
#[tracepoint]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[tracepoint] entry point takes its context by value"
)]
pub fn lb_tp_bulk_tx(ctx: TracePointContext) -> u32 {
    let n = xmit::drops(field(&ctx, off::BULK_TX_DROPS) as i32);
    if n > 0 {
        add(field(&ctx, off::BULK_TX_IFINDEX), Field::Tx, n);
    }
    0
}

/// `xdp:xdp_devmap_xmit`: redirected frames were handed to the target's `ndo_xdp_xmit`;
/// `drops` of them it refused (veth: the peer has no NAPI).
#[tracepoint]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[tracepoint] entry point takes its context by value"
)]
pub fn lb_tp_devmap_xmit(ctx: TracePointContext) -> u32 {
    let n = xmit::drops(field(&ctx, off::DEVMAP_DROPS) as i32);
    if n > 0 {
        let to = field(&ctx, off::DEVMAP_TO);
        let from = field(&ctx, off::DEVMAP_FROM);
        if let Some(i) = xmit::redirect_owner(to, from, served) {
            add(i, Field::Redirect, n);
        }
    }
    0
}
