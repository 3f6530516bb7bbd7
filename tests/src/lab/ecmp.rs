//! The lab router's ECMP: resilient next-hop groups fed by BIRD.
//!
//! BIRD 2.0 installs a learned multipath route as a plain multipath route. The kernel then
//! spreads flows by hash-threshold: every next hop owns one slice of the hash space, so when
//! one of N goes, the slices of the survivors are redrawn and some of their flows move to
//! another survivor too. A resilient group (`ip nexthop ... type resilient`, Linux ≥ 5.13;
//! <https://docs.kernel.org/networking/nexthop-group-resilient.html>) spreads flows over a
//! table of buckets instead. A replace that removes a member reassigns only that member's
//! buckets. A member that joins takes buckets only as they fall idle for the idle timer, so
//! flows in progress stay where they are; a bucket no packet has used since it was assigned
//! counts as idle at once, which is why a group built while the BGP sessions come up one by
//! one still ends balanced.
//!
//! BIRD cannot install next-hop objects, so the router's BIRD exports its learned routes
//! into [`LEARNED`], a table no rule looks up, and [`Mirror`] does what the FIB of a router
//! with resilient ECMP does: it follows that table through rtnetlink and keeps, per learned
//! prefix, one resilient group over its next hops, with the prefix's route in the main
//! table through the group. With [`Mirror::route_back`] it also routes the backends' replies
//! (the policy table 100) through the group of a VIP, over all the live nodes.
//!
//! It is lab glue, kept simple: it trusts that nothing else writes the router's next hops,
//! a failed `ip` stops it (the next wait for a route says why), and a prefix gone from
//! [`LEARNED`] loses its group at once (BIRD replaces a changed route in place; a delete and
//! re-add would rebuild the buckets).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use lb_userspace::{netlink::Watcher, reconcile::NetChange};

use crate::netns::Netns;

/// The kernel table the router's BIRD installs its learned routes into.
pub const LEARNED: u32 = 200;
/// Buckets per group: with up to 8 nodes, each owns 16 or more, so the spread stays within
/// one bucket's share (under 1 %) of even.
const BUCKETS: &str = "128";
/// Seconds a bucket must have been idle before it moves to a member that joined (the
/// kernel's default; a lost member's buckets move at once).
const IDLE_TIMER: &str = "120";
/// The clients' prefix, which the backends' replies go to (table 100, [`Mirror::route_back`]).
const CLIENTS: &str = "198.51.100.0/24";

/// A return-path request ([`Mirror::route_back`]), with where to answer.
type Ask = (Ipv4Addr, std::sync::mpsc::Sender<Result<(), String>>);

/// The mirror's thread; stopped and joined when dropped.
pub struct Mirror {
    stop: Arc<AtomicBool>,
    error: Arc<Mutex<Option<String>>>,
    asks: std::sync::mpsc::Sender<Ask>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Mirror {
    /// Starts mirroring [`LEARNED`] in `router` (a fresh namespace: no next hops of its
    /// own). The netlink subscription is made before the first read of the table, so no
    /// change can fall between the two; the first sync has been applied when this returns.
    ///
    /// # Errors
    /// The subscription or the first sync fails.
    pub fn start(router: &Netns, dev: &str) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let error = Arc::new(Mutex::new(None));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (asks, asks_rx) = std::sync::mpsc::channel::<Ask>();
        let (flag, errors, dev) = (stop.clone(), error.clone(), dev.to_owned());
        let thread = router.spawn_in(move || {
            // The tick bounds each wait, so that the thread sees the stop flag and the
            // return-path requests.
            let mut watch = match Watcher::open(Duration::from_millis(100)) {
                Ok(w) => w,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("netlink: {e}")));
                    return;
                }
            };
            let mut fib = Fib::new(dev);
            let _ = ready_tx.send(fib.sync().map_err(|e| format!("{e:#}")));
            while !flag.load(Ordering::Relaxed) {
                let synced = match watch.changes() {
                    // Routes only: neighbour and address churn says nothing about them.
                    Ok(c)
                        if c.iter()
                            .any(|c| matches!(c, NetChange::Route { .. } | NetChange::Overrun)) =>
                    {
                        fib.sync()
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.into()),
                };
                let synced = synced.and_then(|()| {
                    for (vip, answer) in asks_rx.try_iter() {
                        fib.back = Some(vip);
                        let r = fib.route_back();
                        let _ = answer.send(match &r {
                            Ok(()) => Ok(()),
                            Err(e) => Err(format!("{e:#}")),
                        });
                        r?;
                    }
                    Ok(())
                });
                if let Err(e) = synced {
                    *errors.lock().unwrap() = Some(format!("{e:#}"));
                    return;
                }
            }
        });
        // Built before the wait, so that a failed start still stops the thread (`Drop`).
        let mirror = Self {
            stop,
            error,
            asks,
            thread: Some(thread),
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the ECMP mirror did not start")?
            .map_err(|e| anyhow::anyhow!("the ECMP mirror's first sync: {e}"))?;
        Ok(mirror)
    }

    /// Routes what the policy table 100 gets (the backends' replies) to the clients through
    /// `vip`'s group, from now on (also once the group is made again after all nodes went).
    ///
    /// # Errors
    /// The mirror has stopped, or the route cannot be written.
    pub fn route_back(&self, vip: Ipv4Addr) -> anyhow::Result<()> {
        self.check()?;
        let (tx, rx) = std::sync::mpsc::channel();
        self.asks
            .send((vip, tx))
            .ok()
            .context("the ECMP mirror has stopped")?;
        rx.recv_timeout(Duration::from_secs(10))
            .context("the ECMP mirror did not answer")?
            .map_err(|e| anyhow::anyhow!("the return route: {e}"))
    }

    /// Fails if the mirror stopped on an error (a test that waits for a route then says why
    /// it never came).
    ///
    /// # Errors
    /// The mirror's error.
    pub fn check(&self) -> anyhow::Result<()> {
        match &*self.error.lock().unwrap() {
            Some(e) => bail!("the router's ECMP mirror failed: {e}"),
            None => Ok(()),
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the mirror has written, to write only differences: its own writes come back as
/// route events, and a sync that writes nothing ends that echo.
struct Fib {
    dev: String,
    /// The VIP whose group the return path follows ([`Mirror::route_back`]).
    back: Option<Ipv4Addr>,
    /// Next-hop object ids by gateway.
    members: BTreeMap<Ipv4Addr, u32>,
    /// Per learned prefix: its group's id and the gateways the group holds.
    groups: BTreeMap<String, (u32, BTreeSet<Ipv4Addr>)>,
    next_id: u32,
}

impl Fib {
    fn new(dev: String) -> Self {
        Self {
            dev,
            back: None,
            members: BTreeMap::new(),
            groups: BTreeMap::new(),
            next_id: 0,
        }
    }

    /// The return route through the group of [`Self::back`], if that group exists (it is
    /// written again whenever the group is made).
    fn route_back(&self) -> anyhow::Result<()> {
        let group = self
            .back
            .and_then(|b| self.groups.get(&b.to_string()))
            .map(|(g, _)| g.to_string());
        if let Some(g) = group {
            ip(&["route", "replace", CLIENTS, "table", "100", "nhid", &g])?;
        }
        Ok(())
    }

    fn id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// The next-hop object of gateway `hop`, made at its first use.
    fn member(&mut self, hop: Ipv4Addr) -> anyhow::Result<u32> {
        if let Some(id) = self.members.get(&hop) {
            return Ok(*id);
        }
        let id = self.id();
        let (id_s, hop_s) = (id.to_string(), hop.to_string());
        ip(&[
            "nexthop", "replace", "id", &id_s, "via", &hop_s, "dev", &self.dev,
        ])?;
        self.members.insert(hop, id);
        Ok(id)
    }

    /// Brings the groups and the main table's routes in line with [`LEARNED`].
    fn sync(&mut self) -> anyhow::Result<()> {
        let learned = learned()?;
        for (dst, hops) in &learned {
            if self.groups.get(dst).is_some_and(|(_, h)| h == hops) {
                continue;
            }
            let mut ids = Vec::new();
            for hop in hops {
                let id = self.member(*hop)?;
                ids.push(id.to_string());
            }
            let fresh = !self.groups.contains_key(dst);
            let group = match self.groups.get(dst) {
                Some((g, _)) => *g,
                None => self.id(),
            };
            let g = group.to_string();
            // A replace keeps the buckets of the members that stay: only a removed member's
            // buckets move.
            ip(&[
                "nexthop",
                "replace",
                "id",
                &g,
                "group",
                &ids.join("/"),
                "type",
                "resilient",
                "buckets",
                BUCKETS,
                "idle_timer",
                IDLE_TIMER,
            ])?;
            self.groups.insert(dst.clone(), (group, hops.clone()));
            if fresh {
                ip(&["route", "replace", dst, "nhid", &g])?;
                if self.back.is_some_and(|b| dst == &b.to_string()) {
                    self.route_back()?;
                }
            }
        }
        let gone: Vec<String> = self
            .groups
            .keys()
            .filter(|d| !learned.contains_key(*d))
            .cloned()
            .collect();
        for dst in gone {
            let (g, _) = self.groups.remove(&dst).expect("listed");
            // Deleting the group deletes the routes through it.
            ip(&["nexthop", "del", "id", &g.to_string()])?;
        }
        Ok(())
    }
}

/// The learned prefixes of [`LEARNED`] (as `ip` prints them) and their gateways.
fn learned() -> anyhow::Result<BTreeMap<String, BTreeSet<Ipv4Addr>>> {
    // All tables, filtered here: asking for table LEARNED alone fails until BIRD has put
    // a first route in it.
    let out = ip(&["-j", "route", "show", "table", "all"])?;
    let routes: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("ip -j route: {out}"))?;
    let table = LEARNED.to_string();
    let mut learned = BTreeMap::new();
    for r in routes.as_array().context("ip -j route: not a list")? {
        if r["table"].as_str() != Some(&table) {
            continue;
        }
        let dst = r["dst"].as_str().context("a route without dst")?.to_owned();
        let gateways: Vec<&str> = match r["nexthops"].as_array() {
            Some(hops) => hops.iter().filter_map(|h| h["gateway"].as_str()).collect(),
            None => r["gateway"].as_str().into_iter().collect(),
        };
        let hops: BTreeSet<Ipv4Addr> = gateways
            .into_iter()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("the gateways of {r}"))?;
        if !hops.is_empty() {
            learned.insert(dst, hops);
        }
    }
    Ok(learned)
}

/// `ip ARGS` in the calling thread's namespace.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    crate::netns::output(std::process::Command::new("ip").args(args))
}
