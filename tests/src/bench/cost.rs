//! Part 1: the cost of one packet in the kernel, per traffic class, with `BPF_PROG_TEST_RUN`
//! on the real object, next to the harness floor (`xdp_pass`) and the minimal forwarder
//! (`xdp_fwd`) measured the same way in the same run.
//!
//! Every measured run is a single run (`repeat = 1`) of a fresh copy of the frame: the program
//! rewrites the frame in place, so a repeated run would measure a different path from the
//! second iteration on. Each run's verdict is checked, and afterwards the class's verdict
//! counter must have moved by exactly the number of runs.

use std::{
    net::{Ipv4Addr, SocketAddrV4, SocketAddrV6},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use lb_common::{maps::NextHop, verdict::Reason};

use super::{Stats, progress};
pub use crate::fixture::{XDP_DROP, XDP_PASS, XDP_TX};
use crate::{
    fixture::{FixedResolver, Harness, LO, in_fresh_ns, nh, run_once},
    packet::{Frame, Frame6, TCP_ACK, TCP_SYN},
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 40000);
pub const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];

/// The services the classes need: a TCP and a UDP endpoint with two backends each, an endpoint
/// whose ACL denies the client's subnet, and a PIP.
pub const CONFIG: &str = r#"
[agent]
ring_slots = 4096
conntrack_flows = 65536
# The flood guard off: a run of SYNs here is far above any real per-CPU rate, and the classes
# measure the tracked path ("SYN under flood" measures the guard's).
new_flow_rate = 0
# Floating IP's outer sources and GUE port.
encap_source4 = "192.0.2.1"
encap_source6 = "2001:db8:2::1"
gue_port = 6080

[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11", "192.0.2.12"]
table_size = 251

[[service]]
vip = "203.0.113.10:53/udp"
backends = ["192.0.2.11", "192.0.2.12"]
table_size = 251

[[service]]
vip = "203.0.113.10:8080/tcp"
backends = ["192.0.2.11"]
table_size = 251
acl = [
  { order = 10, action = "deny", prefix = "198.51.100.0/24" },
  { order = 20, action = "permit", prefix = "192.0.2.0/24" },
]

# Stateless replies: a reply is translated from the endpoint's entry alone.
[[service]]
vip = "203.0.113.10:8443/tcp"
backends = ["192.0.2.14:8443"]
table_size = 251
replies = "stateless"

[[pip]]
pip = "203.0.113.50"
dip = "192.0.2.13"

# The IPv6 classes' services: as the IPv4 ones above.
[[service]]
vip = "[2001:db8:3::10]:80/tcp"
backends = ["2001:db8:2::11", "2001:db8:2::12"]
table_size = 251

[[service]]
vip = "[2001:db8:3::10]:53/udp"
backends = ["2001:db8:2::11", "2001:db8:2::12"]
table_size = 251

# Floating IP (direct server return), one VIP per mode: the encapsulation classes.
[[service]]
vip = "203.0.113.20:80/tcp"
backends = ["192.0.2.11", "192.0.2.12"]
table_size = 251
floating_ip = "l2"

[[service]]
vip = "203.0.113.21:80/tcp"
backends = ["192.0.2.11", "192.0.2.12"]
table_size = 251
floating_ip = "ipip"

[[service]]
vip = "203.0.113.22:80/tcp"
backends = ["192.0.2.11", "192.0.2.12"]
table_size = 251
floating_ip = "gue"

[[service]]
vip = "[2001:db8:3::22]:80/tcp"
backends = ["2001:db8:2::11", "2001:db8:2::12"]
table_size = 251
floating_ip = "gue"

# Outbound NAT for 192.0.2.15, with the largest block: every "new outbound flow" run takes a
# port of it.
[[outbound]]
name = "bench"
frontends = ["203.0.113.60"]
backends = ["192.0.2.15"]
ports_per_backend = 64512
"#;

/// The outbound classes' backend and remote.
const OUT_BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 15), 40000);
const REMOTE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 77), 443);

/// Resolves every backend to `lo` and every client through a default route on `lo`, so all
/// forwarding classes end in `XDP_TX` (no redirect, nothing leaves the namespace).
#[must_use]
pub fn resolver() -> FixedResolver {
    FixedResolver::all_on_lo(BACKEND_MAC)
}

/// One traffic class: its frame, the frames that set up its state, what it must do.
pub struct Class {
    pub name: &'static str,
    pub frame: Vec<u8>,
    pub action: u32,
    pub reason: Reason,
    /// Every run gets its own TCP source port (a 5-tuple never seen): the frame's port
    /// bytes are rewritten and the TCP checksum patched before each run.
    pub fresh_tuple: bool,
    /// Every run gets its own TCP destination port instead (a new destination: an outbound
    /// flow's port choice then meets no earlier flow of the same destination).
    pub fresh_dport: bool,
}

/// Gives a TCP frame (no VLAN tag) source port `port`, patching the TCP checksum.
pub fn set_sport(frame: &mut [u8], port: u16) {
    set_port(frame, 0, port);
}

/// Sets the TCP port at `at` (0: source, 2: destination) of an untagged IPv4 or IPv6 frame
/// (no options, no extension headers), patching the TCP checksum.
fn set_port(frame: &mut [u8], at: usize, port: u16) {
    let t = 14
        + if frame[12..14] == [0x86, 0xdd] {
            40
        } else {
            20
        };
    let old = u16::from_be_bytes([frame[t + at], frame[t + at + 1]]);
    frame[t + at..t + at + 2].copy_from_slice(&port.to_be_bytes());
    let c = u16::from_be_bytes([frame[t + 16], frame[t + 17]]);
    let c = lb_common::csum::update16(c, old, port);
    frame[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
}

/// Rounds per measurement; the reported figures are those of the round with the lowest
/// median. This VM's vCPUs sometimes run a whole stretch of runs ~1.7× slower (steal time);
/// the best round is the program's cost, not the neighbour's.
pub const ROUNDS: u32 = 5;

/// Runs `run` `warmup` times, then `runs` more in [`ROUNDS`] rounds; every run must return
/// `action`. Returns the kernel times of the best round and how many runs it made in all.
///
/// # Errors
/// A run returns another action.
pub fn best_of_rounds(
    name: &str,
    action: u32,
    warmup: u32,
    runs: u32,
    mut run: impl FnMut() -> (u32, Duration),
) -> anyhow::Result<(Stats, u32)> {
    let per_round = (runs / ROUNDS).max(1);
    let mut best: Option<Stats> = None;
    for i in 0..warmup {
        let (a, _) = run();
        ensure!(a == action, "{name}: warm-up run {i} returned action {a}");
    }
    for _ in 0..ROUNDS {
        let mut times = Vec::with_capacity(per_round as usize);
        for i in 0..per_round {
            let (a, t) = run();
            ensure!(
                a == action,
                "{name}: run {i} returned action {a}, expected {action}"
            );
            times.push(t);
        }
        let s = Stats::of(&times);
        if best.is_none_or(|b| s.p50_ns < b.p50_ns) {
            best = Some(s);
        }
    }
    Ok((best.unwrap_or_default(), warmup + ROUNDS * per_round))
}

/// Measures one class with [`best_of_rounds`]; afterwards its verdict counter must have moved
/// by exactly the number of runs.
///
/// # Errors
/// A run takes another action, or the verdict counter does not account for every run.
pub fn measure(h: &mut Harness, c: &Class, warmup: u32, runs: u32) -> anyhow::Result<Stats> {
    let before = h.counts()[c.reason as usize];
    let mut frame = c.frame.clone();
    // Fresh source ports from 1024 up, wrapping after 64 Ki runs (then a port's earlier flow
    // may still be tracked: the bench's runs per class stay below that).
    let mut next: u16 = 1024;
    let (best, done) = best_of_rounds(c.name, c.action, warmup, runs, || {
        if c.fresh_tuple {
            set_sport(&mut frame, next);
            next = next.wrapping_add(1).max(1024);
        }
        if c.fresh_dport {
            set_port(&mut frame, 2, next);
            next = next.wrapping_add(1).max(1024);
        }
        let (a, _, t) = h.run(&frame);
        (a, t)
    })?;
    let moved = h.counts()[c.reason as usize] - before;
    ensure!(
        moved == u64::from(done),
        "{}: counter {} moved by {moved}, expected {done}",
        c.name,
        c.reason.name(),
    );
    Ok(best)
}

/// The classes, with their state set up in `h` (the flows they belong to exist).
///
/// # Errors
/// A set-up frame is not forwarded.
pub fn classes(h: &mut Harness) -> anyhow::Result<Vec<Class>> {
    let vip80 = SocketAddrV4::new(VIP, 80);
    let syn = Frame::tcp(CLIENT, vip80, TCP_SYN).build();
    let (action, out, _) = h.run(&syn);
    ensure!(action == XDP_TX, "the set-up SYN was not forwarded");
    // The backend the flow went to, from the output frame (IPv4 dst, TCP dport).
    let backend = SocketAddrV4::new(
        Ipv4Addr::new(out[30], out[31], out[32], out[33]),
        u16::from_be_bytes([out[36], out[37]]),
    );
    let udp = Frame::udp(CLIENT, SocketAddrV4::new(VIP, 53)).build();
    ensure!(
        h.run(&udp).0 == XDP_TX,
        "the set-up UDP packet was not forwarded"
    );
    let out_syn = Frame::tcp(OUT_BACKEND, REMOTE, TCP_SYN).build();
    let (action, out, _) = h.run(&out_syn);
    ensure!(action == XDP_TX, "the set-up outbound SYN was not sent");
    // The frontend port it left with (TCP sport of the output).
    let front = SocketAddrV4::new(
        Ipv4Addr::new(out[26], out[27], out[28], out[29]),
        u16::from_be_bytes([out[34], out[35]]),
    );
    let six = classes6(h)?;
    let encap = classes_encap(h)?;
    let mut v = vec![
        Class {
            name: "outbound, established",
            frame: Frame::tcp(OUT_BACKEND, REMOTE, TCP_ACK).build(),
            action: XDP_TX,
            reason: Reason::Outbound,
            fresh_tuple: false,
            fresh_dport: false,
        },
        Class {
            name: "outbound, return",
            frame: Frame::tcp(REMOTE, front, TCP_ACK).build(),
            action: XDP_TX,
            reason: Reason::OutboundReturn,
            fresh_tuple: false,
            fresh_dport: false,
        },
        Class {
            name: "established TCP",
            frame: Frame::tcp(CLIENT, vip80, TCP_ACK).build(),
            action: XDP_TX,
            reason: Reason::Forward,
            fresh_tuple: false,
            fresh_dport: false,
        },
        Class {
            name: "SYN of a tracked 5-tuple",
            frame: syn.clone(),
            action: XDP_TX,
            reason: Reason::Forward,
            fresh_tuple: false,
            fresh_dport: false,
        },
        Class {
            name: "SYN of a new 5-tuple",
            frame: syn,
            action: XDP_TX,
            reason: Reason::Forward,
            fresh_tuple: true,
            fresh_dport: false,
        },
        Class {
            name: "UDP",
            frame: udp,
            action: XDP_TX,
            reason: Reason::Forward,
            fresh_tuple: false,
            fresh_dport: false,
        },
        Class {
            name: "reply (reverse NAT)",
            frame: Frame::tcp(backend, CLIENT, TCP_ACK).build(),
            action: XDP_TX,
            reason: Reason::Reply,
            fresh_tuple: false,
            fresh_dport: false,
        },
        Class {
            name: "stateless reply",
            frame: Frame::tcp(
                SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 14), 8443),
                CLIENT,
                TCP_ACK,
            )
            .build(),
            action: XDP_TX,
            reason: Reason::Reply,
            fresh_tuple: false,
            fresh_dport: false,
        },
        Class {
            name: "ACL deny",
            frame: Frame::tcp(CLIENT, SocketAddrV4::new(VIP, 8080), TCP_SYN).build(),
            action: XDP_DROP,
            reason: Reason::DropAcl,
            fresh_tuple: false,
            fresh_dport: false,
        },
        Class {
            name: "non-VIP pass",
            frame: Frame::tcp(
                CLIENT,
                SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 200), 80),
                TCP_ACK,
            )
            .build(),
            action: XDP_PASS,
            reason: Reason::PassNotOurs,
            fresh_tuple: false,
            fresh_dport: false,
        },
        Class {
            // A backend's own traffic that is no reply (another port, to a client).
            name: "from a backend, not a reply",
            frame: Frame::tcp(SocketAddrV4::new(*backend.ip(), 22), CLIENT, TCP_ACK).build(),
            action: XDP_PASS,
            reason: Reason::PassNotOurs,
            fresh_tuple: false,
            fresh_dport: false,
        },
        Class {
            name: "PIP",
            frame: Frame::tcp(
                CLIENT,
                SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 50), 22),
                TCP_ACK,
            )
            .build(),
            action: XDP_TX,
            reason: Reason::PipIn,
            fresh_tuple: false,
            fresh_dport: false,
        },
    ];
    // After the IPv4 classes they are compared with, as they run.
    v.extend(six);
    v.extend(encap);
    v.extend([
        // Last: its runs make two entries each, and the LRU makes room for them by evicting
        // the oldest, which the classes above must still find.
        Class {
            name: "outbound, new flow",
            frame: Frame::tcp(OUT_BACKEND, REMOTE, TCP_SYN).build(),
            action: XDP_TX,
            reason: Reason::Outbound,
            fresh_tuple: false,
            fresh_dport: true,
        },
    ]);
    Ok(v)
}

/// The floating-IP classes: an established TCP flow of each mode (its SYN set up first), to
/// compare with "established TCP" (DNAT).
fn classes_encap(h: &mut Harness) -> anyhow::Result<Vec<Class>> {
    let mut v = Vec::new();
    for (name, last) in [
        ("floating IP l2, established", 20u8),
        ("floating IP IPIP, established", 21),
        ("floating IP GUE, established", 22),
    ] {
        let vip = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, last), 80);
        let (action, _, _) = h.run(&Frame::tcp(CLIENT, vip, TCP_SYN).build());
        ensure!(action == XDP_TX, "{name}: the set-up SYN was not sent");
        v.push(Class {
            name,
            frame: Frame::tcp(CLIENT, vip, TCP_ACK).build(),
            action: XDP_TX,
            reason: Reason::ForwardEncap,
            fresh_tuple: false,
            fresh_dport: false,
        });
    }
    let v6 = |a: &str, port: u16| SocketAddrV6::new(a.parse().expect("v6"), port, 0, 0);
    let (client, vip) = (v6("2001:db8:1::2", 40000), v6("2001:db8:3::22", 80));
    let (action, _, _) = h.run(&Frame6::tcp(client, vip, TCP_SYN).build());
    ensure!(action == XDP_TX, "IPv6 GUE: the set-up SYN was not sent");
    v.push(Class {
        name: "floating IP IPv6 GUE, established",
        frame: Frame6::tcp(client, vip, TCP_ACK).build(),
        action: XDP_TX,
        reason: Reason::ForwardEncap,
        fresh_tuple: false,
        fresh_dport: false,
    });
    Ok(v)
}

/// The IPv4 class each IPv6 class is compared with (`cargo xtask bench`'s IPv6 / IPv4 ratios).
pub const V6_PAIRS: [(&str, &str); 5] = [
    ("IPv6 established TCP", "established TCP"),
    ("IPv6 SYN of a new 5-tuple", "SYN of a new 5-tuple"),
    ("IPv6 UDP", "UDP"),
    ("IPv6 reply (reverse NAT)", "reply (reverse NAT)"),
    ("IPv6 non-VIP pass", "non-VIP pass"),
];

/// The IPv6 classes (the first of [`V6_PAIRS`]), with their flows set up in `h`.
fn classes6(h: &mut Harness) -> anyhow::Result<Vec<Class>> {
    let v6 = |a: &str, port: u16| SocketAddrV6::new(a.parse().expect("v6"), port, 0, 0);
    let (client, vip80) = (v6("2001:db8:1::2", 40000), v6("2001:db8:3::10", 80));
    let syn = Frame6::tcp(client, vip80, TCP_SYN).build();
    let (action, out, _) = h.run(&syn);
    ensure!(action == XDP_TX, "the set-up IPv6 SYN was not forwarded");
    // The backend the flow went to (IPv6 dst, TCP dport).
    let dst: [u8; 16] = out[38..54].try_into().expect("16 bytes");
    let backend = SocketAddrV6::new(dst.into(), u16::from_be_bytes([out[56], out[57]]), 0, 0);
    let udp = Frame6::udp(client, v6("2001:db8:3::10", 53)).build();
    ensure!(
        h.run(&udp).0 == XDP_TX,
        "the set-up IPv6 UDP packet was not forwarded"
    );
    let class = |name, frame, action, reason, fresh_tuple| Class {
        name,
        frame,
        action,
        reason,
        fresh_tuple,
        fresh_dport: false,
    };
    Ok(vec![
        class(
            V6_PAIRS[0].0,
            Frame6::tcp(client, vip80, TCP_ACK).build(),
            XDP_TX,
            Reason::Forward,
            false,
        ),
        class(V6_PAIRS[1].0, syn, XDP_TX, Reason::Forward, true),
        class(V6_PAIRS[2].0, udp, XDP_TX, Reason::Forward, false),
        class(
            V6_PAIRS[3].0,
            Frame6::tcp(backend, client, TCP_ACK).build(),
            XDP_TX,
            Reason::Reply,
            false,
        ),
        class(
            V6_PAIRS[4].0,
            Frame6::tcp(client, v6("2001:db8:9::1", 80), TCP_ACK).build(),
            XDP_PASS,
            Reason::PassNotOurs,
            false,
        ),
    ])
}

/// One row of the cost table.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub stats: Stats,
}

/// The size of a loaded program: its JIT image and its verified instructions.
#[derive(Clone, Debug)]
pub struct ProgSize {
    pub name: String,
    pub jited_bytes: u32,
    pub xlated_bytes: u32,
}

/// Runs part 1: the baselines first, then every class; also the programs' sizes.
///
/// # Errors
/// A class misbehaves (wrong action or counter), or loading fails.
pub fn run(runs: u32) -> anyhow::Result<(Vec<Row>, Vec<ProgSize>)> {
    in_fresh_ns(
        "bench-cost",
        move |ns| -> anyhow::Result<(Vec<Row>, Vec<ProgSize>)> {
            // One CPU for every measurement of the run.
            super::pin(0, super::measured_cpu());
            let warmup = (runs / 10).max(100);
            let mut rows = Vec::new();
            let frame = Frame::tcp(CLIENT, SocketAddrV4::new(VIP, 80), TCP_ACK).build();
            // Baselines, from their own object.
            let mut base = aya::Ebpf::load(lb_userspace::dataplane::BASELINE_OBJ)?;
            for (name, prog, action) in [
                ("floor: xdp_pass", "xdp_pass", XDP_PASS),
                ("minimal forwarder: xdp_fwd", "xdp_fwd", XDP_TX),
            ] {
                if prog == "xdp_fwd" {
                    let mut m: aya::maps::Array<_, NextHop> =
                        aya::maps::Array::try_from(base.map_mut("FWD_NH").context("FWD_NH")?)?;
                    m.set(0, nh(LO, BACKEND_MAC), 0)?;
                }
                let p: &mut aya::programs::Xdp =
                    base.program_mut(prog).context("baseline")?.try_into()?;
                p.load()?;
                progress(&format!("cost: {name}"));
                let (stats, _) = best_of_rounds(name, action, warmup, runs, || {
                    let (a, _, t) = run_once(p, &frame);
                    (a, t)
                })?;
                rows.push(Row {
                    name: name.into(),
                    stats,
                });
            }
            let mut h = Harness::load(ns, CONFIG, resolver())?;
            let mut sizes = Vec::new();
            for name in [
                lb_common::consts::PROGRAM_NAME,
                lb_common::consts::HAIRPIN_PROGRAM_NAME,
                lb_common::consts::OUTBOUND_PROGRAM_NAME,
                lb_common::consts::ICMP6_PROGRAM_NAME,
            ] {
                let p: &aya::programs::Xdp =
                    h.dp.ebpf.program(name).context("program")?.try_into()?;
                let info = p.info()?;
                sizes.push(ProgSize {
                    name: name.into(),
                    jited_bytes: info.size_jitted(),
                    xlated_bytes: info.size_translated().unwrap_or(0),
                });
            }
            for c in classes(&mut h)? {
                progress(&format!("cost: {}", c.name));
                let stats = measure(&mut h, &c, warmup, runs)?;
                rows.push(Row {
                    name: c.name.into(),
                    stats,
                });
            }
            Ok((rows, sizes))
        },
    )
}

/// One IPv6 class and its IPv4 class, measured in alternation (see [`pairs`]).
#[derive(Clone, Debug)]
pub struct Pair {
    /// The IPv4 class's name.
    pub name: String,
    pub v6: Stats,
    pub v4: Stats,
}

/// The IPv6 classes against their IPv4 ones ([`V6_PAIRS`]), each pair measured run by run in
/// alternation (IPv4, IPv6, IPv4, ...) in [`ROUNDS`] rounds: this VM's slow stretches then
/// fall on both alike, where two classes measured one after the other can differ by 2× from
/// steal time alone. The figures are each class's best round.
///
/// # Errors
/// A run misbehaves, or loading fails.
pub fn pairs(runs: u32) -> anyhow::Result<Vec<Pair>> {
    in_fresh_ns("bench-pairs", move |ns| -> anyhow::Result<Vec<Pair>> {
        super::pin(0, super::measured_cpu());
        let mut h = Harness::load(ns, CONFIG, resolver())?;
        let all = classes(&mut h)?;
        let find = |n: &str| all.iter().find(|c| c.name == n).context("no such class");
        let mut out = Vec::new();
        for (six, four) in V6_PAIRS {
            let (a, b) = (find(four)?, find(six)?);
            progress(&format!("cost: {six} against {four}, alternated"));
            let before = h.counts();
            let (mut fa, mut fb) = (a.frame.clone(), b.frame.clone());
            let mut next: u16 = 1024;
            let (mut best_a, mut best_b): (Option<Stats>, Option<Stats>) = (None, None);
            let per_round = (runs / ROUNDS).max(1);
            let mut done = 0u64;
            for round in 0..=ROUNDS {
                let (mut ta, mut tb) = (Vec::new(), Vec::new());
                for _ in 0..per_round {
                    for (c, f, t) in [(a, &mut fa, &mut ta), (b, &mut fb, &mut tb)] {
                        if c.fresh_tuple {
                            set_sport(f, next);
                        }
                        let (act, _, d) = h.run(f);
                        ensure!(act == c.action, "{}: action {act}", c.name);
                        t.push(d);
                    }
                    next = next.wrapping_add(1).max(1024);
                    done += 1;
                }
                // Round 0 is the warm-up.
                if round == 0 {
                    continue;
                }
                let (sa, sb) = (Stats::of(&ta), Stats::of(&tb));
                if best_a.is_none_or(|x| sa.p50_ns < x.p50_ns) {
                    best_a = Some(sa);
                }
                if best_b.is_none_or(|x| sb.p50_ns < x.p50_ns) {
                    best_b = Some(sb);
                }
            }
            let after = h.counts();
            for r in [a.reason, b.reason] {
                let want = done * u64::from(a.reason == r) + done * u64::from(b.reason == r);
                let moved = after[r as usize] - before[r as usize];
                ensure!(
                    moved == want,
                    "{four}/{six}: {} moved by {moved}, expected {want}",
                    r.name()
                );
            }
            out.push(Pair {
                name: four.into(),
                v6: best_b.unwrap_or_default(),
                v4: best_a.unwrap_or_default(),
            });
        }
        Ok(out)
    })
}

/// What `lb trace`'s hooks cost while tracing is off: the established and reply classes, on
/// an object whose hooks are compiled out (`LB_TRACE_HOOKS = 0`) and on the agent's (hooks in,
/// tracing off), each in a namespace of its own, alternated twice.
///
/// # Errors
/// A run misbehaves, or loading fails.
pub fn trace_hooks(runs: u32) -> anyhow::Result<Vec<Row>> {
    let mut best: Vec<Row> = Vec::new();
    for round in 0..2 {
        for (hooks, label) in [
            (false, "trace hooks compiled out"),
            (true, "trace hooks in, off"),
        ] {
            let rows = in_fresh_ns(
                &format!("bench-trace-{round}-{hooks}"),
                move |ns| -> anyhow::Result<Vec<Row>> {
                    super::pin(0, super::measured_cpu());
                    let warmup = (runs / 10).max(100);
                    let mut h =
                        Harness::load_with(ns, CONFIG, resolver(), |o| o.trace_hooks = hooks)?;
                    let mut out = Vec::new();
                    for c in classes(&mut h)? {
                        if c.name != "established TCP" && c.name != "reply (reverse NAT)" {
                            continue;
                        }
                        progress(&format!("cost: {} ({label})", c.name));
                        out.push(Row {
                            name: format!("{} ({label})", c.name),
                            stats: measure(&mut h, &c, warmup, runs)?,
                        });
                    }
                    Ok(out)
                },
            )?;
            // The better of the two rounds, per row.
            for r in rows {
                match best.iter_mut().find(|b| b.name == r.name) {
                    Some(b) if r.stats.p50_ns < b.stats.p50_ns => *b = r,
                    Some(_) => {}
                    None => best.push(r),
                }
            }
        }
    }
    Ok(best)
}

/// The cost of a SYN of a new 5-tuple above the flood guard's rate: forwarded by the table,
/// not tracked (a program loaded with a rate of 1 new flow per second per CPU).
///
/// # Errors
/// A run misbehaves, or loading fails.
pub fn under_flood(runs: u32) -> anyhow::Result<Row> {
    in_fresh_ns("bench-flood", move |ns| -> anyhow::Result<Row> {
        super::pin(0, super::measured_cpu());
        let config = CONFIG.replace("new_flow_rate = 0", "new_flow_rate = 1");
        let mut h = Harness::load(ns, &config, resolver())?;
        let c = Class {
            name: "SYN under flood (untracked)",
            frame: Frame::tcp(CLIENT, SocketAddrV4::new(VIP, 80), TCP_SYN).build(),
            action: XDP_TX,
            reason: Reason::Forward,
            fresh_tuple: true,
            fresh_dport: false,
        };
        progress(&format!("cost: {}", c.name));
        let stats = measure(&mut h, &c, (runs / 10).max(100), runs)?;
        Ok(Row {
            name: c.name.into(),
            stats,
        })
    })
}

/// Nanoseconds, as a float.
#[must_use]
pub fn ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// `cargo xtask bench --spin CLASS`: one class of [`classes`] run `runs` times in a fresh lab,
/// nothing else, so that a profiler running beside it (`perf record -a`) sees mostly this
/// class's path. Prints the mean kernel run time (a profiler's own cost included: not a
/// benchmark figure). Each run's action is checked as in [`measure`]; a new-flow class wraps its
/// ports after 64 Ki runs, as there.
///
/// # Errors
/// No class has that name (the error lists them), one misbehaves, or loading fails.
pub fn spin(name: &str, runs: u32) -> anyhow::Result<()> {
    let name = name.to_owned();
    in_fresh_ns("bench-spin", move |netns| -> anyhow::Result<()> {
        super::pin(0, super::measured_cpu());
        let mut h = Harness::load(netns, CONFIG, resolver())?;
        let all = classes(&mut h)?;
        let Some(c) = all.iter().find(|c| c.name == name) else {
            let names: Vec<_> = all.iter().map(|c| c.name).collect();
            anyhow::bail!("no cost class {name:?}; the classes: {names:?}");
        };
        let mut f = c.frame.clone();
        let mut next: u16 = 1024;
        let mut sum = 0f64;
        for _ in 0..runs {
            if c.fresh_tuple {
                set_sport(&mut f, next);
                next = next.wrapping_add(1).max(1024);
            }
            if c.fresh_dport {
                set_port(&mut f, 2, next);
                next = next.wrapping_add(1).max(1024);
            }
            let (act, _, d) = h.run(&f);
            ensure!(act == c.action, "{}: action {act}", c.name);
            sum += ns(d);
        }
        println!(
            "{name}: {runs} runs, mean {:.1} ns per run",
            sum / f64::from(runs.max(1))
        );
        Ok(())
    })
}
