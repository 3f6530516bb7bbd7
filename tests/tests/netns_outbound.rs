//! Outbound NAT end to end: backends' own connections to an outside host leave with the
//! frontend address and a port of their block, the outside answers through the LB, the inside
//! sees the backends' own addresses, a full block refuses the next connection at once, and
//! outbound flows survive `kill -9` of the agent and its restart.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    time::{Duration, Instant},
};

use lb_integration::lab::{HttpConn, IO_TIMEOUT, Lab, OUTSIDE_IP, VIP};

const CONFIG: &str = r#"
[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
table_size = 251

[[outbound]]
name = "web"
frontends = ["203.0.113.10"]
services = ["203.0.113.10:80/tcp"]
ports_per_backend = 1024
inside = ["198.51.100.0/25"]

# An address the LB owns that is no VIP, with blocks of 8.
[[outbound]]
name = "tight"
frontends = ["203.0.113.12"]
backends = ["192.0.2.14"]
ports_per_backend = 8
"#;

const TIGHT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 12);

/// The agent's metrics endpoint, inside the LB namespace.
const METRICS: &str = "127.0.0.1:9464";

fn lab() -> Lab {
    let mut lab = Lab::new(4).unwrap();
    lab.add_outside().unwrap();
    lab.start_agent_with(CONFIG, &["--metrics", METRICS])
        .unwrap();
    lab.wait_ready().unwrap();
    lab
}

/// Each backend's block as `lb outbound list -o json` shows it: address → (frontend, first,
/// last).
fn blocks(lab: &Lab) -> BTreeMap<String, (String, u16, u16)> {
    let v = lab.lb_json(&["outbound", "list"]).unwrap();
    let mut out = BTreeMap::new();
    for r in v["rules"].as_array().unwrap() {
        for b in r["backends"].as_array().unwrap() {
            let first = u16::try_from(b["first_port"].as_u64().unwrap()).unwrap();
            let last = u16::try_from(b["last_port"].as_u64().unwrap()).unwrap();
            out.insert(
                b["backend"].as_str().unwrap().to_owned(),
                (b["frontend"].as_str().unwrap().to_owned(), first, last),
            );
        }
    }
    out
}

/// Waits (bounded) until `lb outbound list` shows `want` ports in use for `backend`: the flow
/// sweeper counts them once a second.
fn wait_in_use(lab: &Lab, backend: &str, want: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = lab.lb_json(&["outbound", "list"]).unwrap();
        let b = v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["backends"].as_array().unwrap().iter())
            .find(|b| b["backend"] == backend)
            .cloned()
            .unwrap();
        if b["ports_in_use"] == want {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "{backend}: ports in use never reached {want}: {b}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One UDP query from backend `i`'s namespace to the outside's echo server.
fn udp_from(lab: &Lab, i: usize, payload: &'static str) -> String {
    lab.backends[i].ns.enter(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.send_to(payload.as_bytes(), (OUTSIDE_IP, 53)).unwrap();
        let mut buf = [0u8; 256];
        let (n, from) = s.recv_from(&mut buf).expect("the outside's answer");
        assert_eq!(from, SocketAddr::from((OUTSIDE_IP, 53)));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
}

fn connect(lab: &Lab, i: usize, port: u16) -> std::io::Result<HttpConn> {
    Lab::http_connect_in(&lab.backends[i].ns, OUTSIDE_IP, port, IO_TIMEOUT).map_err(|e| {
        e.downcast::<std::io::Error>()
            .unwrap_or_else(|e| std::io::Error::other(e.to_string()))
    })
}

#[test]
fn backends_reach_the_outside_from_the_frontend_and_the_inside_with_their_own_address() {
    let lab = lab();
    let blocks = blocks(&lab);
    // 3 backends × 50 connections, all open at once.
    let mut conns = Vec::new();
    for i in 0..3 {
        for n in 0..50 {
            let c = connect(&lab, i, 80)
                .unwrap_or_else(|e| panic!("b{} connection {n}: {e}\n{}", i + 1, lab.agent_log()));
            conns.push((i, c));
        }
    }
    for (i, c) in &mut conns {
        let (name, peer) = c.get_with_peer().unwrap();
        assert_eq!(name, "outside");
        let be = lab.backends[*i].ip.to_string();
        let (front, first, last) = &blocks[&be];
        assert_eq!(front, "203.0.113.10");
        assert_eq!(
            peer.ip(),
            std::net::IpAddr::V4(VIP),
            "the outside sees only the frontend"
        );
        assert!(
            (*first..=*last).contains(&peer.port()),
            "{be}: port {} outside its block {first}-{last}",
            peer.port()
        );
    }
    for i in 0..3 {
        let b = wait_in_use(&lab, &lab.backends[i].ip.to_string(), 50);
        assert!(b["peak"].as_u64().unwrap() >= 50, "{b}");
    }
    let m = lab.scrape(METRICS, "/metrics").unwrap();
    assert!(
        m.lines().any(|l| l.starts_with("lb_outbound_ports_in_use{rule=\"web\",backend=\"192.0.2.11\",frontend=\"203.0.113.10\"} 50")),
        "{m}"
    );
    let status = lab.lb(&["status"]).unwrap();
    assert!(
        status.contains("outbound   web: 3 backends, 1024 ports each, 150 ports in use"),
        "{status}"
    );
    for (_, c) in conns {
        c.close().unwrap();
    }
    // UDP: a query and its answer.
    assert_eq!(udp_from(&lab, 0, "q1"), "outside q1");
    // The inside (the client's /25) sees the backend's own address. The client routes the
    // backends' subnet through the LB for this.
    lab.client
        .ip(&["route", "add", "192.0.2.0/24", "via", "198.51.100.1"])
        .unwrap();
    let l = lab
        .client
        .enter(|| TcpListener::bind("198.51.100.2:9000").unwrap());
    let before = lab.reason("pass_outbound_inside").unwrap();
    let _c = Lab::http_connect_in(
        &lab.backends[0].ns,
        Ipv4Addr::new(198, 51, 100, 2),
        9000,
        IO_TIMEOUT,
    )
    .unwrap();
    let (_s, peer) = l.accept().unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(lab.backends[0].ip));
    assert!(lab.reason("pass_outbound_inside").unwrap() > before);
}

/// Blocks of 8: eight connections to one destination take the block, the ninth is refused at
/// once (the LB answers its SYN with a RST) and counted, and eight more to another destination
/// port all succeed: a port carries flows to different destinations.
#[test]
fn a_full_block_refuses_the_next_connection_at_once_and_ports_are_shared_across_destinations() {
    let lab = lab();
    let (front, first, last) = blocks(&lab)["192.0.2.14"].clone();
    assert_eq!((front.as_str(), last - first), ("203.0.113.12", 7));
    let mut held = Vec::new();
    for n in 0..8 {
        let mut c = connect(&lab, 3, 80)
            .unwrap_or_else(|e| panic!("connection {n}: {e}\n{}", lab.agent_log()));
        let (_, peer) = c.get_with_peer().unwrap();
        assert_eq!(peer.ip(), std::net::IpAddr::V4(TIGHT));
        assert!((first..=last).contains(&peer.port()));
        held.push(c);
    }
    let before = lab.reason("drop_snat_exhausted").unwrap();
    let e = connect(&lab, 3, 80)
        .err()
        .expect("the ninth connection must fail");
    assert_eq!(
        e.kind(),
        ErrorKind::ConnectionRefused,
        "refused, not timed out: {e}"
    );
    assert_eq!(lab.reason("drop_snat_exhausted").unwrap(), before + 1);
    for n in 0..8 {
        let mut c = connect(&lab, 3, 8080)
            .unwrap_or_else(|e| panic!("connection {n} to :8080: {e}\n{}", lab.agent_log()));
        assert_eq!(c.get().unwrap(), "outside");
        held.push(c);
    }
    assert_eq!(held.len(), 16);
    wait_in_use(&lab, "192.0.2.14", 8);
    let text = lab.lb(&["outbound", "list"]).unwrap();
    assert!(text.contains("203.0.113.12:"), "{text}");
}

/// An outbound connection keeps working while no agent runs (the program and its maps are
/// pinned) and after the next agent adopts them; a new one works too, from the same block.
#[test]
fn outbound_flows_survive_kill_9_and_a_restart() {
    let mut lab = lab();
    let mut c = connect(&lab, 0, 80).unwrap();
    let (_, peer) = c.get_with_peer().unwrap();
    lab.kill_agent().unwrap();
    assert_eq!(c.get_with_peer().unwrap().1, peer, "while no agent runs");
    lab.start_agent(CONFIG).unwrap();
    lab.wait_ready().unwrap();
    assert_eq!(c.get_with_peer().unwrap().1, peer, "after the restart");
    let (_, first, last) = blocks(&lab)["192.0.2.11"].clone();
    assert!(
        (first..=last).contains(&peer.port()),
        "the block did not move"
    );
    let mut d = connect(&lab, 0, 80).unwrap();
    let (_, p2) = d.get_with_peer().unwrap();
    assert!((first..=last).contains(&p2.port()));
    assert_eq!(udp_from(&lab, 0, "after"), "outside after");
}
