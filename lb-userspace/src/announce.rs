//! Announcing VIPs: the agent keeps one host route per VIP address to announce in a routing
//! table of its own (`agent.announce_table`, `crate::netlink` `announce.rs`), and a routing
//! daemon (BIRD, FRR) exports that table over BGP. The agent never speaks BGP.
//!
//! What to announce is the reconciler's rule (`HealthBook::announced`: a VIP with a backend in
//! rotation in any of its services, and every PIP). The writer sends each new set here; this
//! thread, the table's only writer, puts in and takes out routes until the table holds exactly
//! that set. A failed write is logged and retried every [`RETRY`] until it goes through.
//!
//! At start the table's routes of the agent's protocol are taken as announced (a previous
//! agent's, killed or upgraded): the first set removes those no longer wanted, and keeps
//! the rest without a gap. Its routes in any other table (`announce_table` changed, or
//! turned off) are removed at once ([`clear_other_tables`]). On a plain stop
//! [`Announcer::withdraw_all`] removes them all before the drain; `kill -9` and
//! `--keep-attached` leave them, since the data plane keeps serving the VIPs.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::mpsc::{Receiver, RecvTimeoutError, Sender},
    time::Duration,
};

use crate::netlink::Netlink;

/// How often a failed write is tried again.
pub const RETRY: Duration = Duration::from_secs(1);

/// What the announcer is told.
#[derive(Debug)]
pub enum Order {
    /// Announce exactly these addresses.
    Want(BTreeSet<IpAddr>),
    /// Withdraw everything and take no more orders; answers with how many routes went.
    WithdrawAll(Sender<usize>),
}

/// Removes the agent's routes (protocol 76) from every table but `keep` (0: from every
/// table): a previous agent's, left in the table it was configured with, when
/// `announce_table` changed between two runs or was turned off. Each removal is logged, and
/// so is one that fails (the start goes on).
///
/// # Errors
/// The tables cannot be read.
pub fn clear_other_tables(nl: &mut Netlink, keep: u32) -> Result<(), crate::netlink::NetlinkError> {
    for (table, ip) in nl.announced_anywhere()? {
        if table == keep {
            continue;
        }
        match nl.withdraw(table, ip) {
            Ok(()) => tracing::info!(
                vip = %ip,
                table,
                announce_table = keep,
                "VIP withdrawn from a table no longer configured"
            ),
            Err(e) => tracing::warn!(
                vip = %ip,
                table,
                error = %anyhow::Error::from(e),
                "withdrawing a VIP from a table no longer configured failed"
            ),
        }
    }
    Ok(())
}

/// The announce table's writer.
pub struct Announcer {
    table: u32,
    nl: Netlink,
    /// What the table holds, as far as this writer knows.
    installed: BTreeSet<IpAddr>,
    /// What it should hold.
    want: BTreeSet<IpAddr>,
}

impl Announcer {
    /// Opens netlink and reads what the table holds.
    ///
    /// # Errors
    /// Netlink cannot be opened, or the table cannot be read.
    pub fn new(table: u32) -> Result<Self, crate::netlink::NetlinkError> {
        let mut nl = Netlink::open()?;
        clear_other_tables(&mut nl, table)?;
        let installed = nl.announced(table)?;
        Ok(Self {
            table,
            nl,
            want: installed.clone(),
            installed,
        })
    }

    /// Runs until the sender is gone or a [`Order::WithdrawAll`].
    pub fn run(mut self, orders: &Receiver<Order>) {
        loop {
            let order = if self.installed == self.want {
                orders.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                orders.recv_timeout(RETRY)
            };
            let first = match order {
                Ok(o) => Some(o),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            // Only the latest set counts.
            for o in first.into_iter().chain(orders.try_iter()) {
                match o {
                    Order::Want(w) => self.want = w,
                    Order::WithdrawAll(done) => {
                        let n = self.withdraw_all();
                        let _ = done.send(n);
                        return;
                    }
                }
            }
            self.apply();
        }
    }

    /// Withdraws first (a VIP that can no longer be served leaves the routers soonest), then
    /// announces.
    fn apply(&mut self) {
        let gone: Vec<IpAddr> = self.installed.difference(&self.want).copied().collect();
        for ip in gone {
            match self.nl.withdraw(self.table, ip) {
                Ok(()) => {
                    self.installed.remove(&ip);
                    tracing::info!(vip = %ip, table = self.table, "VIP withdrawn: no backend in rotation");
                }
                Err(e) => {
                    tracing::warn!(vip = %ip, error = %anyhow::Error::from(e), "withdrawing a VIP failed; retrying");
                }
            }
        }
        let new: Vec<IpAddr> = self.want.difference(&self.installed).copied().collect();
        for ip in new {
            match self.nl.announce(self.table, ip) {
                Ok(()) => {
                    self.installed.insert(ip);
                    tracing::info!(vip = %ip, table = self.table, "VIP announced");
                }
                Err(e) => {
                    tracing::warn!(vip = %ip, error = %anyhow::Error::from(e), "announcing a VIP failed; retrying");
                }
            }
        }
    }

    /// Removes every route this writer knows of, and any other of the agent's in the table.
    fn withdraw_all(&mut self) -> usize {
        if let Ok(there) = self.nl.announced(self.table) {
            self.installed.extend(there);
        }
        self.want.clear();
        let before = self.installed.len();
        self.apply();
        before - self.installed.len()
    }
}
