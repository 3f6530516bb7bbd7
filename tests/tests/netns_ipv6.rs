//! IPv6 end to end in network namespaces, native XDP on veth: HTTP and UDP from the client's
//! IPv6 address to the IPv6 VIP, through the real agent, beside the IPv4 services on the same
//! backends. The LB has no route for the VIP, so an answer proves the DNAT; the client takes
//! only answers from the VIP, so it proves the reverse NAT.

use std::collections::{BTreeMap, BTreeSet};

use lb_integration::lab::{DEMO_CONFIG, IO_TIMEOUT as IO, Lab};

fn tally(names: impl IntoIterator<Item = String>) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n).or_default() += 1;
    }
    m
}

fn all_three() -> BTreeSet<String> {
    ["b1", "b2", "b3"].map(String::from).into()
}

#[test]
fn http_and_udp_to_the_ipv6_vip_reach_every_backend_beside_ipv4() {
    let mut lab = Lab::new(3).unwrap();
    lab.start_agent(DEMO_CONFIG).unwrap();
    lab.wait_ready().unwrap();

    // Warm-up: the first packets may meet next hops the agent has not resolved yet.
    lab.http_get6(80)
        .unwrap_or_else(|e| panic!("first IPv6 request: {e:#}\n{}", lab.agent_log()));
    let fib_before = lab.reason("forward_fib").unwrap();

    // IPv4 and IPv6 flows to the same backends, interleaved.
    let mut v6 = Vec::new();
    let mut v4 = Vec::new();
    for i in 0..60 {
        v6.push(
            lab.http_get6(80)
                .unwrap_or_else(|e| panic!("IPv6 HTTP {i}: {e:#}\n{}", lab.agent_log())),
        );
        v4.push(lab.http_get(80).unwrap());
    }
    let (v6, v4) = (tally(v6), tally(v4));
    assert_eq!(
        v6.keys().cloned().collect::<BTreeSet<_>>(),
        all_three(),
        "{v6:?}"
    );
    assert_eq!(
        v4.keys().cloned().collect::<BTreeSet<_>>(),
        all_three(),
        "{v4:?}"
    );
    for (b, n) in &v6 {
        assert!(
            *n >= 8,
            "backend {b} got only {n} of 60 IPv6 connections: {v6:?}"
        );
    }
    let udp = tally((0..30).map(|i| {
        lab.udp_flow6(53)
            .unwrap()
            .ask(&format!("q{i}"))
            .unwrap_or_else(|e| panic!("IPv6 UDP {i}: {e:#}"))
    }));
    assert_eq!(
        udp.keys().cloned().collect::<BTreeSet<_>>(),
        all_three(),
        "{udp:?}"
    );

    let stats = lab.lb_json(&["stats"]).unwrap();
    let r = &stats["reasons"];
    assert_eq!(
        r["forward_fib"].as_u64().unwrap(),
        fib_before,
        "IPv6 next hops were looked up in the FIB after warm-up: {stats}"
    );
    for k in [
        "drop_malformed",
        "drop_ext_headers",
        "drop_no_backend",
        "pass_no_next_hop",
    ] {
        assert_eq!(r[k], 0, "{k}: {stats}");
    }
    let svc = |name: &str| {
        stats["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == name)
            .unwrap_or_else(|| panic!("no {name} in {stats}"))
            .clone()
    };
    let tcp6 = svc("[2001:db8:3::10]:80/tcp");
    assert_eq!(tcp6["counters"]["new_flows"], 61, "{tcp6}");
    assert!(
        tcp6["counters"]["reply_packets"].as_u64().unwrap() >= 61 * 2,
        "{tcp6}"
    );
    assert_eq!(svc("[2001:db8:3::10]:53/udp")["counters"]["new_flows"], 30);
    assert_eq!(svc("203.0.113.10:80/tcp")["counters"]["new_flows"], 60);

    // `ping -6` to the VIP: answered by the LB itself, from the VIP.
    let from = lb_integration::lab::ping6(&lab.client, lb_integration::lab::VIP6, IO)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.agent_log()));
    assert_eq!(from, lb_integration::lab::VIP6);
    assert_eq!(lab.reason("echo_reply").unwrap(), 1);

    // The status names the IPv6 VIP and backends in their canonical text form.
    let status = lab.lb(&["status"]).unwrap();
    assert!(status.contains("[2001:db8:3::10]:80/tcp"), "{status}");
    assert!(status.contains("2001:db8:2::11"), "{status}");
}

#[test]
fn ipv6_services_are_managed_from_the_cli() {
    let mut lab = Lab::new(2).unwrap();
    lab.start_agent("").unwrap();
    lab.lb(&["vip", "add", "[2001:db8:3::10]:8080/tcp"])
        .unwrap();
    lab.lb(&[
        "backend",
        "add",
        "[2001:db8:3::10]:8080/tcp",
        "[2001:db8:2::12]:80",
    ])
    .unwrap();
    lab.wait_ready().unwrap();
    for _ in 0..5 {
        assert_eq!(lab.http_get6(8080).unwrap(), "b2");
    }
    // A backend of the other family is refused with the reason.
    let e = lab
        .lb(&["backend", "add", "[2001:db8:3::10]:8080/tcp", "192.0.2.11"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("not of the same address family"), "{e}");
    let listed = lab.lb_json(&["vip", "list"]).unwrap();
    assert!(
        listed.to_string().contains("[2001:db8:3::10]:8080/tcp"),
        "{listed}"
    );
}

#[test]
fn an_ipv6_acl_and_an_ipv6_internal_vip_admit_only_their_prefixes() {
    use std::{net::Ipv6Addr, time::Duration};
    let mut lab = Lab::new(1).unwrap();
    // A second client address, outside the /122 both rules permit.
    lab.client
        .ip(&["addr", "add", "2001:db8:1::70/64", "dev", "c0", "nodad"])
        .unwrap();
    let (good, bad) = (
        Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2),
        Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x70),
    );
    let (vip, ilb) = (
        lb_integration::lab::VIP6,
        Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 0x20),
    );
    lab.start_agent(
        r#"
[[service]]
vip = "[2001:db8:3::10]:80/tcp"
backends = ["2001:db8:2::11"]
table_size = 251
acl = [{ order = 10, action = "permit", prefix = "2001:db8:1::/122" }]

[[service]]
vip = "[2001:db8:3::20]:80/tcp"
backends = ["2001:db8:2::11"]
table_size = 251
internal = ["2001:db8:1::/122"]
"#,
    )
    .unwrap();
    lab.wait_ready().unwrap();
    let t = Duration::from_secs(1);
    for dst in [vip, ilb] {
        assert_eq!(lab.http_get6_from(good, dst, 80, t).unwrap(), "b1", "{dst}");
        assert!(
            lab.http_get6_from(bad, dst, 80, t).is_err(),
            "{bad} reached {dst} past its prefix rule"
        );
    }
    assert!(lab.reason("drop_acl").unwrap() >= 1);
    assert!(lab.reason("drop_not_internal").unwrap() >= 1);
    // The rule named in the list, in its canonical text form.
    let listed = lab
        .lb_json(&["acl", "list", "[2001:db8:3::10]:80/tcp"])
        .unwrap();
    assert!(listed.to_string().contains("2001:db8:1::/122"), "{listed}");
}

/// A Packet Too Big from the client's side about an IPv6 VIP flow reaches only the backend
/// that owns the flow, with the embedded packet translated to that backend's address.
#[test]
fn a_packet_too_big_reaches_only_the_backend_that_owns_the_flow() {
    use std::{net::SocketAddr, time::Duration};

    use lb_integration::{
        lab::{VIP6, backend_ip6, icmp6_socket, recv_icmp6, send_icmp6},
        packet::{Frame6, TCP_ACK},
    };
    let mut lab = Lab::new(3).unwrap();
    lab.start_agent(
        "[[service]]\nvip = \"[2001:db8:3::10]:80/tcp\"\nbackends = [\"2001:db8:2::11\", \"2001:db8:2::12\", \"2001:db8:2::13\"]\ntable_size = 251\n",
    )
    .unwrap();
    lab.wait_ready().unwrap();
    // An open connection: its flow is tracked, and one backend owns it.
    let vip = std::net::SocketAddrV6::new(VIP6, 80, 0, 0);
    let conn = lab
        .client
        .enter(move || std::net::TcpStream::connect_timeout(&SocketAddr::V6(vip), IO))
        .unwrap();
    let SocketAddr::V6(local) = conn.local_addr().unwrap() else {
        panic!("an IPv6 connection")
    };
    let listeners: Vec<_> = lab
        .backends
        .iter()
        .map(|b| icmp6_socket(&b.ns).unwrap())
        .collect();
    let reply = Frame6::tcp(vip, local, TCP_ACK).build();
    let mut msg = vec![2u8, 0, 0, 0, 0, 0, 0x05, 0x00];
    msg.extend_from_slice(&reply[14..]);
    let client_sock = icmp6_socket(&lab.client).unwrap();
    send_icmp6(&client_sock, VIP6, &msg).unwrap();
    let is_ptb = |m: &[u8]| {
        m.len() >= 8 + 40 + 4
            && m[0] == 2
            && m[8 + 40 + 2..8 + 40 + 4] == local.port().to_be_bytes()
    };
    let got: Vec<usize> = listeners
        .iter()
        .enumerate()
        .filter_map(|(i, l)| recv_icmp6(l, Duration::from_millis(700), is_ptb).map(|(m, _)| (i, m)))
        .map(|(i, m)| {
            // The embedded source is now the backend's own address.
            assert_eq!(
                m[8 + 8..8 + 24],
                backend_ip6(i + 1).octets(),
                "b{} got an untranslated PTB",
                i + 1
            );
            i
        })
        .collect();
    assert_eq!(
        got.len(),
        1,
        "the PTB reached {got:?}\n{}",
        lab.lb(&["stats"]).unwrap()
    );
    assert_eq!(lab.reason("icmp_to_backend").unwrap(), 1);
    drop(conn);
}

#[test]
fn an_ipv6_pip_reaches_its_instance_with_every_protocol() {
    use std::{net::Ipv6Addr, time::Duration};
    let mut lab = Lab::new(3).unwrap();
    lab.start_agent("[[pip]]\npip = \"2001:db8:3::50\"\ndip = \"2001:db8:2::13\"\n")
        .unwrap();
    lab.wait_ready().unwrap();
    let pip = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 0x50);
    let t = Duration::from_secs(2);
    for _ in 0..3 {
        assert_eq!(
            lb_integration::lab::ping6(&lab.client, pip, t).unwrap(),
            pip,
            "the echo reply must come from the PIP"
        );
    }
    // The instance answered: the requests went in, the replies came out.
    // The instance's next hop was resolved before the first ping (`wait_ready`), so each
    // packet took the PIP path with its own reason, none the FIB's.
    assert_eq!(
        (
            lab.reason("pip_in").unwrap(),
            lab.reason("pip_out").unwrap()
        ),
        (3, 3),
        "{}",
        lab.lb(&["stats"]).unwrap()
    );
    assert_eq!(lab.reason("echo_reply").unwrap(), 0);
    let c = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
    for _ in 0..5 {
        assert_eq!(
            lab.http_get6_from(c, pip, 80, t).unwrap(),
            "b3",
            "TCP to the PIP reaches its instance"
        );
    }
    let list = lab.lb_json(&["pip", "list"]).unwrap();
    assert_eq!(list["pips"][0]["dip"], "2001:db8:2::13", "{list}");
    // A mixed-family mapping is refused with the reason.
    let e = lab
        .lb(&["pip", "add", "2001:db8:3::51", "192.0.2.12"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("same address family"), "{e}");
}

/// A client network reached through a router whose address on the link is link-local only,
/// as IPv6 routers advertise themselves: the LB's route is `via fe80::… dev l0`. Replies to that
/// network go out through the gateway's NDP-learned MAC, and after warm-up without a FIB
/// lookup.
#[test]
fn a_client_network_behind_a_link_local_gateway_gets_its_replies() {
    let mut lab = Lab::new(3).unwrap();
    // The client namespace plays the router: it holds an address of the remote network, on
    // its loopback, so that it never speaks NDP from it (the LB would learn the address as a
    // neighbour of its own and need no route).
    let remote: std::net::Ipv6Addr = "2001:db8:9::2".parse().unwrap();
    lab.client
        .ip(&[
            "addr",
            "add",
            &format!("{remote}/128"),
            "dev",
            "lo",
            "nodad",
        ])
        .unwrap();
    // The router's own link-local address, without duplicate address detection (the kernel's
    // generated one stays tentative, unanswered, for a second).
    let gateway = "fe80::1:2";
    lab.client
        .ip(&[
            "addr",
            "add",
            &format!("{gateway}/64"),
            "dev",
            "c0",
            "nodad",
        ])
        .unwrap();
    lab.lb
        .ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:9::/64",
            "via",
            gateway,
            "dev",
            "l0",
        ])
        .unwrap();
    lab.start_agent(DEMO_CONFIG).unwrap();
    lab.wait_ready().unwrap();
    // Without the lab's IPv6 default route (via the client's global address), the network
    // behind the gateway is reachable only through the link-local one.
    lab.lb.ip(&["-6", "route", "del", "default"]).unwrap();
    lb_integration::wait_until(
        "the agent to drop the IPv6 default route",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(50),
        || {
            lab.lb_json(&["status"])
                .is_ok_and(|s| !s["client_routes"].to_string().contains("\"::/0 "))
        },
    )
    .unwrap();

    let get = |lab: &Lab| {
        lab.http_get6_from(remote, lb_integration::lab::VIP6, 80, IO)
            .unwrap_or_else(|e| panic!("from {remote}: {e:#}\n{}", lab.agent_log()))
    };
    // Warm-up: the gateway's neighbour entry is learned from the first exchange.
    get(&lab);
    let route = "2001:db8:9::/64 via if ";
    lb_integration::wait_until(
        "the route via the link-local gateway to resolve",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(50),
        || {
            lab.lb_json(&["status"]).is_ok_and(|s| {
                s["client_routes"].as_array().is_some_and(|r| {
                    r.iter()
                        .any(|r| r.as_str().is_some_and(|r| r.starts_with(route)))
                })
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.lb(&["status"]).unwrap()));
    let fib_before = lab.reason("forward_fib").unwrap();
    let names = tally((0..45).map(|_| get(&lab)));
    assert_eq!(
        names.keys().cloned().collect::<BTreeSet<_>>(),
        all_three(),
        "{names:?}"
    );
    assert_eq!(
        lab.reason("forward_fib").unwrap(),
        fib_before,
        "replies to the network behind the gateway were looked up in the FIB"
    );
    let svc = lab.lb_json(&["stats"]).unwrap();
    let replies = svc["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "[2001:db8:3::10]:80/tcp")
        .map(|s| s["counters"]["reply_packets"].as_u64().unwrap())
        .unwrap();
    assert!(replies >= 46 * 2, "replies went through the LB: {svc}");
}

/// `replies = "stateless"` on an IPv6 service with real traffic: the probes' answers go to the
/// LB's own IPv6 address (found through netlink, `LB_LOCAL6`) and reach the agent untouched, so
/// the backends come into rotation; connections through the VIP get their replies translated
/// with no flow looked up.
#[test]
fn ipv6_stateless_replies_serve_the_vip_and_spare_the_probes() {
    let mut lab = Lab::new(2).unwrap();
    lab.start_agent(
        r#"
[[service]]
vip = "[2001:db8:3::10]:80/tcp"
backends = ["2001:db8:2::11", "2001:db8:2::12"]
table_size = 251
replies = "stateless"
probe = "tcp"
probe_interval = "100ms"
probe_timeout = "100ms"
"#,
    )
    .unwrap();
    // In rotation only after a probe succeeded: its SYN-ACK went to the LB's own address.
    lab.wait_ready()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.agent_log()));
    let vips = lab.lb_json(&["vip", "list"]).unwrap();
    assert_eq!(vips["vips"][0]["replies"], "stateless", "{vips}");
    let replies = lab.reason("reply").unwrap();
    let http = tally((0..30).map(|i| {
        lab.http_get6(80)
            .unwrap_or_else(|e| panic!("IPv6 HTTP request {i}: {e:#}\n{}", lab.agent_log()))
    }));
    assert_eq!(http.len(), 2, "both backends answer: {http:?}");
    assert!(lab.reason("reply").unwrap() - replies >= 30 * 2);
    let status = lab.lb_json(&["status"]).unwrap();
    for b in status["vips"][0]["backends"].as_array().unwrap() {
        assert_eq!(b["health"], "up", "{status}");
    }
}

/// `lb flows`, `lb explain` and `lb flows flush` over IPv6 flows: listed with their addresses
/// in canonical text form, selected by service, backend and IPv6 client prefix, explained
/// (the pick is the backend that answered), flushed by a selection, and tracked again by their
/// next packet.
#[test]
fn lb_flows_lists_selects_and_flushes_ipv6_flows() {
    let mut lab = Lab::new(3).unwrap();
    lab.start_agent(DEMO_CONFIG).unwrap();
    lab.wait_ready().unwrap();
    let flow = lab.udp_flow6(53).unwrap();
    let home = flow.ask("one").unwrap();
    let local = flow.local_addr().unwrap().to_string();
    assert!(local.starts_with("[2001:db8:1::2]:"), "{local}");
    let svc = "[2001:db8:3::10]:53/udp";
    let flows = lab.lb_json(&["flows"]).unwrap();
    assert_eq!(flows["matched"], 1, "{flows}");
    let f = &flows["flows"][0];
    assert_eq!(f["client"], local.as_str(), "{flows}");
    assert_eq!(f["service"], svc, "{flows}");
    let backend = format!("[2001:db8:2::1{}]:53", &home[1..]);
    assert_eq!(f["backend"], backend.as_str(), "{flows}");
    assert_eq!(f["state"], "udp", "{flows}");
    let n = |args: &[&str]| {
        let mut a = vec!["flows"];
        a.extend_from_slice(args);
        lab.lb_json(&a).unwrap()["matched"].as_u64().unwrap()
    };
    let ip = &backend[1..backend.len() - 4];
    assert_eq!(n(&[svc]), 1);
    assert_eq!(n(&["[2001:db8:3::10]:80/tcp"]), 0);
    assert_eq!(n(&["--backend", ip]), 1);
    assert_eq!(n(&["--client", "2001:db8:1::/64"]), 1);
    assert_eq!(n(&["--client", "2001:db8:9::/64"]), 0);
    assert_eq!(n(&["--client", "198.51.100.0/24"]), 0);
    // `lb explain` of the flow's own 5-tuple: the table's pick is the backend that answered,
    // and the flow is tracked.
    let text = lab.lb(&["explain", &local, svc]).unwrap();
    assert!(text.contains(&format!("backend    {backend}")), "{text}");
    assert!(text.contains("verdict    forward"), "{text}");
    assert!(
        text.contains(&format!("tracked    yes: to {backend}")),
        "{text}"
    );
    let e = lab
        .lb(&["explain", "198.51.100.2:4000", svc])
        .unwrap_err()
        .to_string();
    assert!(e.contains("different address families"), "{e}");
    let none = lab
        .lb_json(&["flows", "flush", "--client", "2001:db8:9::/64"])
        .unwrap();
    assert_eq!(none["flushed"], 0, "{none}");
    let flushed = lab
        .lb_json(&["flows", "flush", "--client", "2001:db8:1::/64"])
        .unwrap();
    assert_eq!(flushed["flushed"], 1, "{flushed}");
    assert_eq!(n(&[]), 0);
    flow.ask("two").unwrap();
    assert_eq!(n(&[svc]), 1, "the next packet is tracked again");
}

/// IPv6 across agent generations: after a `kill -9` and a restart, an IPv6 UDP flow stays on
/// its backend (the pinned IPv6 maps are adopted, conntrack included), and an IPv6 service
/// added from the CLI comes back from the state file and serves.
#[test]
fn ipv6_flows_and_cli_services_survive_a_restart() {
    let mut lab = Lab::new(3).unwrap();
    lab.start_agent_with(DEMO_CONFIG, &["--keep-attached"])
        .unwrap();
    lab.wait_ready().unwrap();
    lab.lb(&["vip", "add", "[2001:db8:3::10]:8080/tcp"])
        .unwrap();
    lab.lb(&[
        "backend",
        "add",
        "[2001:db8:3::10]:8080/tcp",
        "[2001:db8:2::12]:80",
    ])
    .unwrap();
    assert_eq!(lab.http_get6(8080).unwrap(), "b2");
    let flow = lab.udp_flow6(53).unwrap();
    let home = flow.ask("before").unwrap();

    lab.kill_agent().unwrap();
    assert_eq!(flow.ask("with no agent").unwrap(), home);
    lab.start_agent_with(DEMO_CONFIG, &["--keep-attached"])
        .unwrap();
    lab.wait_ready().unwrap();
    // Before any new packet: the entry is the old agent's, adopted with the pinned map.
    let flows = lab.lb_json(&["flows", "[2001:db8:3::10]:53/udp"]).unwrap();
    assert_eq!(flows["matched"], 1, "the flow's entry was adopted: {flows}");
    for i in 0..5 {
        assert_eq!(
            flow.ask(&format!("after {i}")).unwrap(),
            home,
            "the IPv6 flow moved across the restart"
        );
    }
    let vips = lab.lb_json(&["vip", "list"]).unwrap();
    assert!(
        vips["vips"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["service"] == "[2001:db8:3::10]:8080/tcp"),
        "the CLI's IPv6 service came back from the state file: {vips}"
    );
    assert_eq!(lab.http_get6(8080).unwrap(), "b2");
}

/// `--hairpin snat` on an internal IPv6 VIP: a backend reaches its own VIP. The server (either
/// backend, the connecting one included) sees the VIP as the source, with a port from the
/// dynamic range, and the connection works both ways through the LB (`lb_hairpin6`); an
/// internal client is not source-NATed.
#[test]
fn ipv6_hairpin_snat_lets_a_backend_reach_its_own_internal_vip() {
    use std::{net::Ipv6Addr, time::Duration};
    let mut lab = Lab::new(2).unwrap();
    lab.start_agent(
        "[[service]]\nvip = \"[2001:db8:3::21]:80/tcp\"\n\
         backends = [\"2001:db8:2::11\", \"2001:db8:2::12\"]\ntable_size = 251\n\
         internal = [\"2001:db8:1::/64\"]\nhairpin = \"snat\"\n",
    )
    .unwrap();
    lab.wait_ready().unwrap();
    let ilb = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 0x21);
    let t = Duration::from_secs(1);
    let (seen, conns) = lab.hairpin_rounds(ilb).unwrap();
    assert_eq!(
        seen.len(),
        2,
        "after {conns} connections only {seen:?} served"
    );
    assert!(lab.reason("hairpin_snat").unwrap() >= 2 * conns);
    assert!(lab.reason("hairpin_reply").unwrap() >= 2 * conns);
    assert_eq!(lab.reason("drop_hairpin").unwrap(), 0);
    // `lb flows` lists each hairpin flow once, by its own entry (not its reply's), from the
    // connecting backend to the VIP's service.
    let flows = lab.lb_json(&["flows"]).unwrap();
    assert_eq!(flows["matched"], conns, "{flows}");
    for f in flows["flows"].as_array().unwrap() {
        assert!(
            f["client"]
                .as_str()
                .unwrap()
                .starts_with("[2001:db8:2::11]:"),
            "{flows}"
        );
        assert_eq!(f["service"], "[2001:db8:3::21]:80/tcp", "{flows}");
    }
    // The internal client still reaches the VIP, from its own address.
    let mut c = Lab::http_connect_in(&lab.client, ilb, 80, t).unwrap();
    let (_, peer) = c.get_with_peer().unwrap();
    assert_ne!(peer.ip(), ilb, "a plain client must not be source-NATed");
}
