//! Part 3: scale curves. The per-packet cost (`BPF_PROG_TEST_RUN`, single runs) of one class
//! while one dimension grows, each point in a freshly loaded program:
//!
//! * services (1 → 10k; 2 backends each) and backends per service (2 → 10k): an established
//!   TCP flow;
//! * tracked flows (1 → 1M, planted in conntrack): an established TCP flow;
//! * ACL rules per endpoint: a new flow (ACLs are checked for new flows only). Rules must use
//!   documentation prefixes, which give 1533 distinct IPv4 prefixes (every /24../32 inside the
//!   three documentation /24s); 9 of them contain the measured client, so this curve stops at
//!   1525 rules (1524 denies and the client's permit).

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use aya::maps::{HashMap, Map, MapData};
use lb_common::{
    consts::map_names,
    flow::{FlowKey4, proto},
    maps::ConnEntry4,
    verdict::Reason,
};
use serde_json::{Value, json};

use super::{
    Stats,
    cost::{self, CLIENT, Class, VIP, XDP_TX},
    progress,
};
use crate::{
    fixture::{Harness, in_fresh_ns, pin_dir},
    packet::{Frame, TCP_ACK, TCP_SYN},
};

/// One point of a curve.
#[derive(Clone, Debug)]
pub struct Point {
    pub x: u64,
    pub stats: Stats,
    /// How long provisioning this point's config took.
    pub provision: Duration,
}

/// One curve.
#[derive(Clone, Debug)]
pub struct Curve {
    pub name: &'static str,
    /// What is measured at each point.
    pub measures: &'static str,
    pub points: Vec<Point>,
}

impl Curve {
    /// Cost at the largest point over cost at the smallest (medians).
    #[must_use]
    pub fn ratio(&self) -> Option<f64> {
        let (a, b) = (self.points.first()?, self.points.last()?);
        (a.stats.p50_ns > 0.0).then(|| b.stats.p50_ns / a.stats.p50_ns)
    }

    #[must_use]
    pub fn json(&self) -> Value {
        let pts: Vec<Value> = self
            .points
            .iter()
            .map(|p| {
                let mut v = p.stats.json();
                v["x"] = json!(p.x);
                v["provision_ms"] = json!(p.provision.as_millis());
                v
            })
            .collect();
        json!({"curve": self.name, "measures": self.measures, "points": pts, "largest_over_smallest": self.ratio()})
    }
}

const AGENT: &str = "[agent]\nring_slots = {ring}\nconntrack_flows = {flows}\n";

fn agent(ring: u64, flows: u64) -> String {
    AGENT
        .replace("{ring}", &ring.to_string())
        .replace("{flows}", &flows.to_string())
}

/// `n` services on 250 VIP addresses (203.0.113.1..250, ports from 1000), 2 backends each;
/// the measured flow goes to the first.
fn services_config(n: u64) -> String {
    let mut s = agent((n * 251 + 4096).next_power_of_two(), 65_536);
    for i in 0..n {
        let ip = Ipv4Addr::new(203, 0, 113, 10 + u8::try_from(i % 240).expect("small"));
        let port = 80 + i / 240;
        let _ = writeln!(
            s,
            "[[service]]\nvip = \"{ip}:{port}/tcp\"\nbackends = [\"192.0.2.11\", \"192.0.2.12\"]\ntable_size = 251\n"
        );
    }
    s
}

/// One service with `n` backends (192.0.2.11..210, ports from 10000).
fn backends_config(n: u64) -> String {
    let mut s = agent(1 << 18, 65_536);
    s.push_str("[[service]]\nvip = \"203.0.113.10:80/tcp\"\ntable_size = 65537\nbackends = [\n");
    for i in 0..n {
        let ip = Ipv4Addr::new(192, 0, 2, 11 + u8::try_from(i % 200).expect("small"));
        let _ = writeln!(s, "  \"{ip}:{}\",", 10_000 + i / 200);
    }
    s.push_str("]\n");
    s
}

/// Every distinct IPv4 prefix inside the documentation /24s, /32s first.
fn doc_prefixes() -> Vec<String> {
    let mut v = Vec::new();
    for len in (24..=32u32).rev() {
        for base in [[192, 0, 2], [198, 51, 100], [203, 0, 113]] {
            let step = 1u32 << (32 - len);
            let mut host = 0u32;
            while host < 256 {
                v.push(format!(
                    "{}.{}.{}.{}/{len}",
                    base[0], base[1], base[2], host
                ));
                host += step;
            }
        }
    }
    v
}

/// Whether a documentation prefix ("a.b.c.d/len") contains the measured client.
fn covers_client(p: &str) -> bool {
    let (a, len) = p.split_once('/').expect("a prefix");
    let a: Ipv4Addr = a.parse().expect("an address");
    let len: u32 = len.parse().expect("a length");
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(a) & mask == u32::from(*CLIENT.ip()) & mask
}

/// The measured endpoint with `n` ACL rules: `n - 1` deny rules for documentation prefixes
/// that do not contain the client, then a permit for the client's /32 (so the measured SYN is
/// forwarded after the trie lookup).
fn acl_config(n: u64, prefixes: &[String]) -> String {
    let mut s = agent(4096, 65_536);
    s.push_str("[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.11\"]\ntable_size = 251\nacl = [\n");
    let client = format!("{}/32", CLIENT.ip());
    let mut k = 0;
    for p in prefixes.iter().filter(|p| !covers_client(p)) {
        if k + 1 >= n {
            break;
        }
        let _ = writeln!(
            s,
            "  {{ order = {}, action = \"deny\", prefix = \"{p}\" }},",
            k + 10
        );
        k += 1;
    }
    let _ = writeln!(
        s,
        "  {{ order = {}, action = \"permit\", prefix = \"{client}\" }},",
        k + 10
    );
    s.push_str("]\n");
    s
}

/// Loads `config`, optionally plants `planted` conntrack flows, and measures `class`.
fn point(x: u64, config: String, planted: u64, syn: bool, runs: u32) -> anyhow::Result<Point> {
    in_fresh_ns("bench-scale", move |ns| -> anyhow::Result<Point> {
        super::pin(0, super::measured_cpu());
        let mut h = Harness::load(ns, &config, cost::resolver())?;
        let provision = h.provision_time;
        let vip = SocketAddrV4::new(VIP, 80);
        if planted > 0 {
            plant(ns, planted)?;
        }
        let class = if syn {
            Class {
                name: "new TCP flow",
                frame: Frame::tcp(CLIENT, vip, TCP_SYN).build(),
                action: XDP_TX,
                reason: Reason::Forward,
                fresh_tuple: false,
                fresh_dport: false,
            }
        } else {
            let (a, _, _) = h.run(&Frame::tcp(CLIENT, vip, TCP_SYN).build());
            ensure!(a == XDP_TX, "the set-up SYN was not forwarded");
            Class {
                name: "established TCP",
                frame: Frame::tcp(CLIENT, vip, TCP_ACK).build(),
                action: XDP_TX,
                reason: Reason::Forward,
                fresh_tuple: false,
                fresh_dport: false,
            }
        };
        let stats = cost::measure(&mut h, &class, runs / 10, runs)?;
        Ok(Point {
            x,
            stats,
            provision,
        })
    })
}

/// Plants `n` forward conntrack entries of other clients (198.51.100.0/24 × ports) in the
/// pinned conntrack map, as a busy LB would hold.
fn plant(ns: &crate::netns::Netns, n: u64) -> anyhow::Result<()> {
    let data = MapData::from_pin(pin_dir(ns).join(map_names::CONNTRACK))
        .context("open the pinned conntrack map")?;
    let mut ct: HashMap<_, FlowKey4, ConnEntry4> = HashMap::try_from(Map::LruHashMap(data))?;
    let entry = ConnEntry4::forward(1, 0, 0, 0, crate::coarse_now_s(), (0, 0));
    for i in 0..n {
        let host = u8::try_from(100 + i % 150).expect("small");
        let port = u16::try_from(1024 + i / 150).expect("below 65536 for n ≤ 9.6M");
        let key = FlowKey4::of(
            [198, 51, 100, host],
            VIP.octets(),
            port.to_be_bytes(),
            80u16.to_be_bytes(),
            proto::TCP,
        );
        ct.insert(key, entry, 0)?;
    }
    Ok(())
}

/// Runs part 3.
///
/// # Errors
/// A point fails to load or to measure.
pub fn run(quick: bool) -> anyhow::Result<Vec<Curve>> {
    let runs = if quick { 1_000 } else { 20_000 };
    // One curve: for each size `n`, `setup(n)` gives (config, flows to plant, measure a SYN).
    let curve = |name: &'static str,
                 full: &[u64],
                 setup: &dyn Fn(u64) -> (String, u64, bool)|
     -> anyhow::Result<Curve> {
        let sizes = if quick { &full[..2] } else { full };
        let mut c = Curve {
            name,
            measures: if setup(1).2 {
                "new TCP flow"
            } else {
                "established TCP"
            },
            points: Vec::new(),
        };
        for &n in sizes {
            progress(&format!("scale: {name}: {n}"));
            let (cfg, planted, syn) = setup(n);
            c.points.push(point(n, cfg, planted, syn, runs)?);
        }
        Ok(c)
    };
    let prefixes = doc_prefixes();
    // Deny rules for every prefix that does not contain the client, plus its permit.
    let all = u64::try_from(prefixes.iter().filter(|p| !covers_client(p)).count())? + 1;
    Ok(vec![
        curve("services", &[1, 100, 1_000, 10_000], &|n| {
            (services_config(n), 0, false)
        })?,
        curve("backends per service", &[2, 100, 1_000, 10_000], &|n| {
            (backends_config(n), 0, false)
        })?,
        curve("tracked flows", &[1, 10_000, 100_000, 1_000_000], &|n| {
            let mut cfg = agent(4096, (n + 1024).next_power_of_two());
            cfg.push_str("[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.11\", \"192.0.2.12\"]\ntable_size = 251\n");
            (cfg, n.saturating_sub(1), false)
        })?,
        curve("ACL rules per endpoint", &[1, 10, 100, 1_000, all], &|n| {
            (acl_config(n, &prefixes), 0, true)
        })?,
    ])
}
