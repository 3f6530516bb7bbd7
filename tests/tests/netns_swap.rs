//! `lb vip swap` end to end: production on one VIP, staging on another; a swap with a held
//! connection on each keeps both where they are, while new connections cross over, and the
//! reply entries held for the old connections go once those connections are gone. The same
//! for a pair of IPv6 VIPs.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use lb_integration::{lab::Lab, wait_until};

const A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);

const CONFIG: &str = r#"
[agent]
tcp_close_timeout = 1

[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11"]
table_size = 251

[[service]]
vip = "203.0.113.11:80/tcp"
backends = ["192.0.2.12"]
table_size = 251
"#;

const CONFIG6: &str = r#"
[agent]
tcp_close_timeout = 1

[[service]]
vip = "[2001:db8:3::10]:80/tcp"
backends = ["2001:db8:2::11"]
table_size = 251

[[service]]
vip = "[2001:db8:3::11]:80/tcp"
backends = ["2001:db8:2::12"]
table_size = 251
"#;

fn holds(lab: &Lab) -> u64 {
    lab.lb_json(&["status"]).unwrap()["swap_holds"]
        .as_u64()
        .unwrap()
}

/// One GET on a new connection from the client to `vip`:80.
fn get(lab: &Lab, vip: IpAddr) -> String {
    Lab::http_connect_in(&lab.client, vip, 80, Duration::from_secs(2))
        .unwrap()
        .get()
        .unwrap()
}

/// A swap of `a` (backend b1) and `b` (b2), both on 80/tcp, with a held connection on each;
/// `b1` and `b2` are the backends' endpoints as `lb backend list` writes them.
fn swap_keeps_held_connections_and_sends_new_ones_across(
    config: &str,
    (a, b): (IpAddr, IpAddr),
    (b1, b2): (&str, &str),
) {
    let mut lab = Lab::new(2).unwrap();
    lab.start_agent(config).unwrap();
    lab.wait_ready().unwrap();
    let t = Duration::from_secs(2);
    let mut on_a = Lab::http_connect_in(&lab.client, a, 80, t).unwrap();
    assert_eq!(on_a.get().unwrap(), "b1");
    let mut on_b = Lab::http_connect_in(&lab.client, b, 80, t).unwrap();
    assert_eq!(on_b.get().unwrap(), "b2");

    let spec = |ip: IpAddr| std::net::SocketAddr::new(ip, 80).to_string() + "/tcp";
    let out = lab
        .lb(&["vip", "swap", &a.to_string(), &b.to_string()])
        .unwrap();
    assert!(
        out.contains(&format!("{} now answers on {}", spec(a), spec(b))),
        "{out}"
    );
    // The held connections stay on their backends, both ways, through several requests.
    for _ in 0..3 {
        assert_eq!(on_a.get().unwrap(), "b1", "{}", lab.agent_log());
        assert_eq!(on_b.get().unwrap(), "b2");
    }
    // New connections cross over.
    for _ in 0..5 {
        assert_eq!(get(&lab, a), "b2");
        assert_eq!(get(&lab, b), "b1");
    }
    let vips = lab.lb_json(&["vip", "list"]).unwrap();
    let backends_of = |vip: IpAddr| {
        let v = lab.lb_json(&["backend", "list", &spec(vip)]).unwrap();
        v["backends"][0]["backend"].as_str().unwrap().to_owned()
    };
    assert_eq!(backends_of(a), b2, "{vips}");
    assert_eq!(backends_of(b), b1, "{vips}");
    // The old connections still need the held reply entries.
    assert!(holds(&lab) >= 2, "{}", lab.lb(&["status"]).unwrap());

    // Once they are gone (closed, then past the close timeout), the sweeper lets the holds go,
    // and new connections still cross over with their replies translated.
    on_a.close().unwrap();
    on_b.close().unwrap();
    wait_until(
        "the swap holds to go",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || holds(&lab) == 0,
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.agent_log()));
    assert!(lab.agent_log().contains("VIP-swap holds released"));
    for _ in 0..5 {
        assert_eq!(get(&lab, a), "b2");
        assert_eq!(get(&lab, b), "b1");
    }
    // The state file keeps the swap.
    lab.restart_agent().unwrap();
    lab.wait_ready().unwrap();
    assert_eq!(get(&lab, a), "b2");
}

#[test]
fn a_swap_keeps_held_connections_and_sends_new_ones_across() {
    swap_keeps_held_connections_and_sends_new_ones_across(
        CONFIG,
        (A.into(), B.into()),
        ("192.0.2.11:80", "192.0.2.12:80"),
    );
}

#[test]
fn an_ipv6_swap_keeps_held_connections_and_sends_new_ones_across() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    swap_keeps_held_connections_and_sends_new_ones_across(
        CONFIG6,
        (ip("2001:db8:3::10"), ip("2001:db8:3::11")),
        ("[2001:db8:2::11]:80", "[2001:db8:2::12]:80"),
    );
}

#[test]
fn a_swap_that_cannot_work_is_refused() {
    let mut lab = Lab::new(1).unwrap();
    lab.start_agent(CONFIG).unwrap();
    lab.wait_ready().unwrap();
    for (a, b, words) in [
        ("203.0.113.10", "203.0.113.10", "with itself"),
        ("203.0.113.10", "203.0.113.99", "has no service"),
    ] {
        let e = lab.lb(&["vip", "swap", a, b]).unwrap_err().to_string();
        assert!(e.contains(words), "{a} {b}: {e}");
    }
    assert_eq!(get(&lab, A.into()), "b1");
}
