//! The flow sweeper: a thread of its own, with its own handle on the conntrack map, that
//! removes expired flows (`dataplane::sweep` decides which) and sends the RSTs of TCP reset on
//! idle. It never runs on the writer loop; the writer only publishes the policy it follows.
//!
//! A pass walks the whole table in batches of 4096 entries (one `BPF_MAP_LOOKUP_BATCH` each),
//! then deletes what expired in batches (`BPF_MAP_DELETE_BATCH`). Passes start every second,
//! or, on a table so large that a pass takes longer than a tenth of that, ten pass-lengths
//! apart, so the sweeper takes at most about a tenth of a core. A flow therefore goes between
//! its timeout and about two seconds after it on a table of ordinary size.
//!
//! Races, and why they are harmless: a packet that arrives between the walk and the delete
//! loses its entry, and the flow's next packet re-picks from the same consistent table (the
//! same backend, unless the set changed) and is tracked again. A flow to be reset is read
//! again just before its RSTs are sent, and spared if a packet refreshed it meanwhile.

use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use lb_common::{
    conn::Expiry,
    flow::{FlowKey4, FlowKey6},
    maps::{CONN_OUTBOUND, CONN_OUTBOUND_REV, ConnEntry4, ConnEntry6},
};
use tokio::sync::watch;

use crate::{
    dataplane::{
        SideMaps,
        sweep::{
            AgentTimeouts, Decision, Decision6, Hold, OutboundUsage, SweepCounters, SweepPolicy,
        },
    },
    error::MapOpError,
};

/// The shortest time between the starts of two passes.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

pub struct Sweeper {
    pub maps: SideMaps,
    pub timeouts: AgentTimeouts,
    /// `None` until the writer has applied the initial state: no pass runs before, so no
    /// flow is judged by timeouts its service does not have.
    pub policy: watch::Receiver<Option<Arc<SweepPolicy>>>,
    pub counters: Arc<SweepCounters>,
    /// Where each pass leaves the covered backends' outbound use.
    pub usage: Arc<OutboundUsage>,
    /// Where the holds a pass found no flow for are reported (a weak sender: the sweeper never
    /// keeps the writer's channel open).
    pub events: tokio::sync::mpsc::WeakSender<crate::reconcile::Event>,
}

impl Sweeper {
    /// Runs passes until the policy's sender (the writer) is gone.
    pub fn run(mut self) {
        let raw = raw_socket(libc::AF_INET)
            .inspect_err(|e| {
                tracing::error!(error = %e, "no raw socket: TCP reset on idle cannot send its RSTs (counted as reset errors)");
            })
            .ok();
        let raw6 = raw_socket(libc::AF_INET6)
            .inspect_err(|e| {
                tracing::error!(error = %e, "no raw IPv6 socket: TCP reset on idle cannot send the RSTs of IPv6 flows (counted as reset errors)");
            })
            .ok();
        let mut pause = SWEEP_INTERVAL;
        loop {
            std::thread::sleep(pause);
            if self.policy.has_changed().is_err() {
                return;
            }
            let Some(policy) = self.policy.borrow_and_update().clone() else {
                continue;
            };
            let started = Instant::now();
            match self.pass(&policy, (raw.as_ref(), raw6.as_ref())) {
                Ok(()) => self.counters.pass_done(true),
                Err(e) => {
                    self.counters.pass_done(false);
                    tracing::warn!(error = %e, "a flow sweep failed; the next one retries");
                }
            }
            pause = SWEEP_INTERVAL.max(started.elapsed() * 10);
        }
    }

    /// One pass over both tables; `raw` sends the RSTs of each family.
    fn pass(
        &mut self,
        p: &SweepPolicy,
        (raw, raw6): (Option<&OwnedFd>, Option<&OwnedFd>),
    ) -> Result<(), MapOpError> {
        let now = crate::dataplane::sweep::monotonic_s();
        let timeouts = self.timeouts;
        let mut doomed: Vec<FlowKey4> = Vec::new();
        let mut causes: Vec<Expiry> = Vec::new();
        let mut to_reset: Vec<(FlowKey4, ConnEntry4)> = Vec::new();
        let mut reverse: Vec<(FlowKey4, FlowKey4)> = Vec::new();
        let mut named: Vec<(FlowKey4, FlowKey4, [u8; 4], [u8; 2])> = Vec::new();
        let mut needed = vec![false; p.holds.len()];
        let mut out_needed = vec![false; p.out_holds.len()];
        let mut usage: HashMap<[u8; 4], (u64, u64)> = HashMap::new();
        let mut ports: HashSet<([u8; 4], [u8; 4], [u8; 2])> = HashSet::new();
        self.maps.walk_flow_batches(&mut |keys, values| {
            for (k, e) in keys.iter().zip(values) {
                for (n, h) in needed.iter_mut().zip(&p.holds) {
                    *n |= h.needed_by(k, e);
                }
                for (n, h) in out_needed.iter_mut().zip(&p.out_holds) {
                    *n |= h.needed_by(e);
                }
                // A returning entry is one outbound flow of backend `e.addr`, holding port
                // `k.dport` of frontend `k.dst` (towards one remote endpoint).
                if e.kind == CONN_OUTBOUND_REV {
                    let u = usage.entry(e.addr).or_default();
                    u.0 += 1;
                    if ports.insert((e.addr, k.dst, k.dport)) {
                        u.1 += 1;
                    }
                }
                match p.decide(timeouts, k, e, now) {
                    Decision::Keep => {}
                    Decision::Expire { reset: true, .. } => to_reset.push((*k, *e)),
                    Decision::Expire { cause, .. } => {
                        doomed.push(*k);
                        causes.push(cause);
                    }
                    Decision::UnlessForward(f) => reverse.push((*k, f)),
                    Decision::UnlessForwardNames(f, a, port) => named.push((*k, f, a, port)),
                }
            }
        })?;
        for (k, seen) in to_reset {
            // Read again: a packet since the walk keeps the flow.
            let Some(e) = self.maps.flow(&k)? else {
                continue;
            };
            if e.seen_s != seen.seen_s {
                continue;
            }
            self.send_resets(p.resets(&k, &e), |r| {
                raw.is_some_and(|fd| send(fd, r).is_ok())
            });
            doomed.push(k);
            causes.push(Expiry::Idle);
        }
        let gone: HashSet<FlowKey4> = doomed.iter().copied().collect();
        for (k, f) in reverse {
            if gone.contains(&f) || self.maps.flow(&f)?.is_none() {
                doomed.push(k);
            }
        }
        for (k, f, a, port) in named {
            let keep = !gone.contains(&f)
                && self
                    .maps
                    .flow(&f)?
                    .is_some_and(|e| e.kind == CONN_OUTBOUND && (e.addr, e.port) == (a, port));
            if !keep {
                doomed.push(k);
            }
        }
        self.maps.delete_flows(&doomed)?;
        self.pass6(p, now, (&mut needed, &mut causes), raw6)?;
        self.usage.record(&usage);
        for c in causes {
            self.counters.expired(c, 1);
        }
        // The whole table was walked under this policy: holds no flow needed can go.
        let released: Vec<Hold> = p
            .holds
            .iter()
            .zip(&needed)
            .filter(|(_, n)| !**n)
            .map(|(h, _)| *h)
            .collect();
        if !released.is_empty()
            && let Some(tx) = self.events.upgrade()
        {
            let _ = tx.blocking_send(crate::reconcile::Event::HoldsReleased(released));
        }
        let out_released: Vec<_> = p
            .out_holds
            .iter()
            .zip(&out_needed)
            .filter(|(_, n)| !**n)
            .map(|(h, _)| h.clone())
            .collect();
        if !out_released.is_empty()
            && let Some(tx) = self.events.upgrade()
        {
            let _ = tx.blocking_send(crate::reconcile::Event::OutboundReleased(out_released));
        }
        Ok(())
    }
}

impl Sweeper {
    /// Sends an idle flow's two RSTs of either family with `send` (whether it went), counting
    /// each; a flow that has none to send (its backend unknown) counts one failure.
    fn send_resets<const N: usize>(
        &self,
        rsts: Option<[[u8; N]; 2]>,
        send: impl Fn(&[u8; N]) -> bool,
    ) {
        match rsts {
            Some(rsts) => {
                for r in &rsts {
                    self.counters.reset_sent(send(r));
                }
            }
            None => self.counters.reset_sent(false),
        }
    }

    /// The IPv6 table's part of a pass: expired forward entries, and reverse entries whose
    /// forward one is gone; the VIP-swap holds its flows still need are marked in `needed`.
    fn pass6(
        &mut self,
        p: &SweepPolicy,
        now: u32,
        (needed, causes): (&mut [bool], &mut Vec<Expiry>),
        raw6: Option<&OwnedFd>,
    ) -> Result<(), MapOpError> {
        let mut doomed: Vec<FlowKey6> = Vec::new();
        let mut to_reset: Vec<(FlowKey6, ConnEntry6)> = Vec::new();
        let mut reverse: Vec<(FlowKey6, FlowKey6)> = Vec::new();
        let timeouts = self.timeouts;
        self.maps.walk_flow_batches6(&mut |keys, values| {
            for (k, e) in keys.iter().zip(values) {
                for (n, h) in needed.iter_mut().zip(&p.holds) {
                    *n |= h.needed_by6(k, e);
                }
                match p.decide6(timeouts, k, e, now) {
                    Decision6::Expire { reset: true, .. } => to_reset.push((*k, *e)),
                    Decision6::Expire { cause, .. } => {
                        doomed.push(*k);
                        causes.push(cause);
                    }
                    Decision6::Keep => {}
                    Decision6::UnlessForward(f) => reverse.push((*k, f)),
                }
            }
        })?;
        for (k, seen) in to_reset {
            // Read again: a packet since the walk keeps the flow.
            let Some(e) = self.maps.flow6(&k)? else {
                continue;
            };
            if e.seen_s != seen.seen_s {
                continue;
            }
            self.send_resets(p.resets6(&k, &e), |r| {
                raw6.is_some_and(|fd| send6(fd, r).is_ok())
            });
            doomed.push(k);
            causes.push(Expiry::Idle);
        }
        let gone: HashSet<FlowKey6> = doomed.iter().copied().collect();
        for (k, f) in reverse {
            if gone.contains(&f) || self.maps.flow6(&f)?.is_none() {
                doomed.push(k);
            }
        }
        self.maps.delete_flows6(&doomed)
    }
}

/// A raw socket of `family` (`AF_INET`, `AF_INET6`) that sends whole packets (IPPROTO_RAW
/// implies IP_HDRINCL, and IPV6_HDRINCL for IPv6): the RSTs carry source addresses that are
/// not the host's (the VIP, the client's).
fn raw_socket(family: libc::c_int) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends one IPv6 packet to its destination address (the kernel routes it).
fn send6(fd: &OwnedFd, pkt: &[u8; 60]) -> std::io::Result<()> {
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&pkt[24..40]);
    let dst = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: 0,
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr { s6_addr: addr },
        sin6_scope_id: 0,
    };
    send_to(fd, pkt, &dst)
}

/// Sends one IPv4 packet to its destination address (the kernel routes it).
fn send(fd: &OwnedFd, pkt: &[u8; 40]) -> std::io::Result<()> {
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([pkt[16], pkt[17], pkt[18], pkt[19]]),
        },
        sin_zero: [0; 8],
    };
    send_to(fd, pkt, &dst)
}

/// `sendto(2)` of `pkt` to `dst`, a `sockaddr_in` or `sockaddr_in6`.
fn send_to<A>(fd: &OwnedFd, pkt: &[u8], dst: &A) -> std::io::Result<()> {
    // SAFETY: `pkt` and `dst` are valid for the lengths given; `A` is a socket address type.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            std::ptr::from_ref(dst).cast(),
            u32::try_from(size_of::<A>()).expect("small"),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, "sending a TCP reset failed");
        return Err(e);
    }
    Ok(())
}
