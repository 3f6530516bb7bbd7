//! End to end in network namespaces, native XDP on veth: real TCP (HTTP) and UDP from a
//! client namespace through the VIP to backend namespaces, with the real `lb agent`.
//!
//! The LB namespace has no route for the VIP, so an answer proves the XDP program did the
//! DNAT; the client accepts only answers from the VIP, so it also proves the reverse NAT.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{SocketAddr, SocketAddrV4},
};

use lb_integration::lab::{CLIENT_IP, DEMO_CONFIG, Lab, VIP, backend_ip};

/// Runs an `lb` command that must fail; returns its error text.
fn refused(lab: &Lab, args: &[&str]) -> String {
    match lab.lb(args) {
        Ok(out) => panic!("lb {} succeeded: {out}", args.join(" ")),
        Err(e) => e.to_string(),
    }
}

fn tally(names: impl IntoIterator<Item = String>) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n).or_default() += 1;
    }
    m
}

#[test]
fn http_and_udp_through_the_vip_reach_every_backend() {
    let mut lab = Lab::new(3).unwrap();
    lab.start_agent(DEMO_CONFIG).unwrap();
    lab.wait_ready().unwrap();

    // Many client source ports (one per connection) spread over all backends.
    let http = tally((0..60).map(|i| {
        lab.http_get(80)
            .unwrap_or_else(|e| panic!("HTTP request {i}: {e:#}\n{}", lab.agent_log()))
    }));
    assert_eq!(
        http.keys().cloned().collect::<BTreeSet<_>>(),
        ["b1", "b2", "b3"].map(String::from).into(),
        "HTTP answers: {http:?}"
    );
    for (b, n) in &http {
        assert!(
            *n >= 8,
            "backend {b} got only {n} of 60 connections: {http:?}"
        );
    }
    let udp = tally((0..30).map(|i| lab.udp_ask(53, &format!("q{i}")).unwrap()));
    assert_eq!(udp.len(), 3, "UDP answers: {udp:?}");

    // Every packet went through the XDP fast path with agent-resolved next hops.
    let stats = lab.lb_json(&["stats"]).unwrap();
    let r = &stats["reasons"];
    assert!(r["forward"].as_u64().unwrap() >= 60 * 3 + 30, "{stats}");
    assert!(r["reply"].as_u64().unwrap() >= 60 * 2 + 30, "{stats}");
    assert_eq!(
        r["forward_fib"], 0,
        "a resolved next hop was not used: {stats}"
    );
    assert_eq!(r["pass_no_next_hop"], 0, "{stats}");
    for k in [
        "drop_malformed",
        "drop_no_backend",
        "drop_no_service",
        "drop_proto",
        "drop_ttl",
    ] {
        assert_eq!(r[k], 0, "{k}: {stats}");
    }
    let tcp = stats["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "203.0.113.10:80/tcp")
        .unwrap();
    assert_eq!(
        tcp["counters"]["new_flows"], 60,
        "one new flow per connection: {tcp}"
    );

    // A plain stop detaches the program and removes the pins.
    assert!(lab.stop_agent().unwrap().success());
    assert!(
        !lab.pin_dir.exists(),
        "pins left behind in {}",
        lab.pin_dir.display()
    );
    let xdp = lab.lb.ip(&["link", "show", "dev", "l0"]).unwrap();
    assert!(!xdp.contains("xdp"), "XDP still attached after stop: {xdp}");
}

#[test]
fn a_long_lived_connection_keeps_its_backend_while_backends_are_added() {
    let mut lab = Lab::new(4).unwrap();
    // Start with b1..b3; b4 exists (server running) but is not in the service yet.
    lab.start_agent(DEMO_CONFIG).unwrap();
    lab.wait_ready().unwrap();
    let mut conns: Vec<_> = (0..12).map(|_| lab.http_connect(80).unwrap()).collect();
    let first: Vec<String> = conns.iter_mut().map(|c| c.get().unwrap()).collect();

    lab.lb(&["backend", "add", "203.0.113.10:80/tcp", "192.0.2.14"])
        .unwrap();
    lab.wait_resolved().unwrap();
    let listed = lab
        .lb_json(&["backend", "list", "203.0.113.10:80/tcp"])
        .unwrap();
    assert_eq!(listed["backends"].as_array().unwrap().len(), 4, "{listed}");

    // The open connections stay where they were (a move would be a reset, and a wrong name).
    for (i, c) in conns.iter_mut().enumerate() {
        for _ in 0..3 {
            assert_eq!(
                c.get().unwrap(),
                first[i],
                "connection {i} moved to another backend"
            );
        }
    }
    // New connections now also reach the new backend.
    let after = tally((0..60).map(|_| lab.http_get(80).unwrap()));
    assert!(
        after.contains_key("b4"),
        "the added backend gets no new flows: {after:?}"
    );
    assert_eq!(after.len(), 4, "{after:?}");

    // Removing it again: new flows avoid it, nothing is dropped.
    lab.lb(&["backend", "del", "203.0.113.10:80/tcp", "192.0.2.14"])
        .unwrap();
    let again = tally((0..30).map(|_| lab.http_get(80).unwrap()));
    assert!(
        !again.contains_key("b4"),
        "a removed backend still gets flows: {again:?}"
    );
    let r = lab.lb_json(&["stats"]).unwrap();
    assert_eq!(r["reasons"]["drop_no_backend"], 0, "{r}");
}

#[test]
fn cli_changes_and_errors() {
    let mut lab = Lab::new(2).unwrap();
    // A small table space, to hit its limit below.
    lab.start_agent("[agent]\nring_slots = 1100\n").unwrap();
    // An empty agent answers nothing on the VIP: the address is not a VIP yet (not ours).
    assert!(lab.http_get(8080).is_err());
    lab.lb(&["vip", "add", "203.0.113.10:8080/tcp", "--table-size", "251"])
        .unwrap();
    // A VIP with no backends drops new flows, counted.
    assert!(lab.http_get(8080).is_err());
    assert!(lab.reason("drop_no_backend").unwrap() >= 1);
    lab.lb(&["backend", "add", "203.0.113.10:8080/tcp", "192.0.2.11:80"])
        .unwrap();
    lab.lb(&["backend", "add", "203.0.113.10:8080/tcp", "192.0.2.12:80"])
        .unwrap();
    lab.wait_resolved().unwrap();
    let who = tally((0..30).map(|_| lab.http_get(8080).unwrap()));
    assert_eq!(
        who.len(),
        2,
        "port translation 8080 → 80 to both backends: {who:?}"
    );

    let vips = lab.lb_json(&["vip", "list"]).unwrap();
    assert_eq!(
        vips["vips"][0]["service"], "203.0.113.10:8080/tcp",
        "{vips}"
    );
    // Errors name what is wrong; nothing changes.
    let e = refused(&lab, &["vip", "add", "203.0.113.10:8080/tcp"]);
    assert!(e.contains("already exists"), "{e}");
    // With -o json, refusals and changes are one JSON object on stdout, and the exit code is
    // the kind's either way.
    let json = |args: &[&str]| {
        let out = std::process::Command::new(lb_integration::lab::workspace_bin("lb").unwrap())
            .arg("--socket")
            .arg(&lab.socket)
            .args(args)
            .args(["-o", "json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out:?}"));
        (out.status.code(), v)
    };
    let (code, v) = json(&["vip", "add", "203.0.113.10:8080/tcp"]);
    assert_eq!(code, Some(4), "{v}");
    assert_eq!(v["error"]["kind"], "conflict", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already exists"),
        "{v}"
    );
    let (code, v) = json(&["backend", "del", "203.0.113.10:8080/tcp", "192.0.2.99:80"]);
    assert_eq!(
        (code, &v["error"]["kind"]),
        (Some(3), &"not_found".into()),
        "{v}"
    );
    let (code, v) = json(&["vip", "add", "203.0.113.10:8080/tcp", "--table-size", "x"]);
    assert_eq!(code, Some(2), "{v}");
    assert_eq!(v["error"]["kind"], "invalid", "{v}");
    assert_eq!(v["error"]["field"], "--table-size <TABLE_SIZE>", "{v}");
    let (code, v) = json(&[
        "backend",
        "set-weight",
        "203.0.113.10:8080/tcp",
        "192.0.2.12:80",
        "1",
    ]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["result"], "done", "{v}");
    let e = refused(
        &lab,
        &["backend", "add", "203.0.113.99:1/tcp", "192.0.2.11"],
    );
    assert!(e.contains("203.0.113.99:1/tcp does not exist"), "{e}");
    let e = refused(&lab, &["vip", "add", "203.0.113.10:80/sctp"]);
    assert!(e.contains("only tcp and udp"), "{e}");
    let e = refused(
        &lab,
        &["vip", "add", "203.0.113.10:81/tcp", "--table-size", "1000"],
    );
    assert!(e.contains("not a prime"), "{e}");
    // The lookup tables do not fit: a clear capacity error.
    let e = refused(
        &lab,
        &["vip", "add", "203.0.113.10:82/tcp", "--table-size", "1021"],
    );
    assert!(e.contains("need 2293 slots but the agent has 1100"), "{e}");
    lab.lb(&["vip", "del", "203.0.113.10:8080/tcp"]).unwrap();
    assert!(lab.http_get(8080).is_err(), "a deleted VIP still answers");

    // SIGHUP: the agent converges on the edited file; a broken file changes nothing.
    let cfg = lab.tmp.join("lb.toml");
    std::fs::write(
        &cfg,
        "[agent]\nring_slots = 1100\n[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.12\"]\ntable_size = 251\n",
    )
    .unwrap();
    let pid: i32 = lab.lb_json(&["status"]).unwrap()["pid"]
        .as_i64()
        .unwrap()
        .try_into()
        .unwrap();
    // SAFETY: signalling the agent this test started.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    lb_integration::wait_until(
        "the reload",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(20),
        || {
            lab.lb_json(&["vip", "list"])
                .is_ok_and(|v| v["vips"].as_array().is_some_and(|a| a.len() == 1))
        },
    )
    .unwrap();
    lab.wait_resolved().unwrap();
    assert_eq!(lab.http_get(80).unwrap(), "b2");
    std::fs::write(&cfg, "[[service]]\nvip = \"nope\"\n").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    lb_integration::wait_until(
        "the refusal to be logged",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(20),
        || lab.agent_log().contains("config reload refused"),
    )
    .unwrap();
    assert_eq!(
        lab.http_get(80).unwrap(),
        "b2",
        "a bad reload must change nothing"
    );
    let stopped = lab.stop_agent().unwrap();
    assert!(stopped.success());
    // A CLI call against a missing agent says so in one line.
    let e = refused(&lab, &["status"]);
    assert!(e.contains("no agent is listening"), "{e}");
}

/// Port forwards: several ports of one VIP, each to one backend's port, both directions
/// translated (the client only accepts answers from VIP:port).
#[test]
fn port_forwards_reach_their_own_backends() {
    let mut lab = Lab::new(3).unwrap();
    lab.start_agent(
        "[[forward]]\nvip = \"203.0.113.10:50001/tcp\"\nto = \"192.0.2.11:80\"\n\n\
         [[forward]]\nvip = \"203.0.113.10:50002/tcp\"\nto = \"192.0.2.12:80\"\n",
    )
    .unwrap();
    lab.lb(&["forward", "add", "203.0.113.10:5353/udp", "192.0.2.13:53"])
        .unwrap();
    lab.wait_ready().unwrap();
    for _ in 0..10 {
        assert_eq!(lab.http_get(50001).unwrap(), "b1");
        assert_eq!(lab.http_get(50002).unwrap(), "b2");
        assert_eq!(lab.udp_ask(5353, "q").unwrap(), "b3");
    }
    let list = lab.lb_json(&["forward", "list"]).unwrap();
    let kinds: BTreeSet<String> = list["vips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["kind"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        kinds.contains("forward to 192.0.2.11:80") && kinds.contains("forward to 192.0.2.13:53"),
        "{list}"
    );
    assert!(
        refused(
            &lab,
            &["forward", "add", "203.0.113.10:50003/tcp", "192.0.2.11"]
        )
        .contains("needs a port")
    );
    lab.lb(&["forward", "del", "203.0.113.10:50002/tcp"])
        .unwrap();
    assert!(
        lab.http_get(50002).is_err(),
        "a deleted forward still answers"
    );
    assert!(
        lab.reason("drop_no_service").unwrap() >= 1,
        "the VIP still exists: the port is a counted drop"
    );
    assert_eq!(lab.http_get(50001).unwrap(), "b1");
}

/// An endpoint ACL permits one client subnet and denies another; rule changes apply to new
/// flows and cut established flows from newly denied sources.
#[test]
fn an_acl_permits_one_client_subnet_and_denies_another() {
    use std::{net::Ipv4Addr, time::Duration};
    let mut lab = Lab::new(2).unwrap();
    let (good, bad) = (
        Ipv4Addr::new(198, 51, 100, 2),
        Ipv4Addr::new(198, 51, 100, 70),
    );
    lab.client
        .ip(&["addr", "add", "198.51.100.70/24", "dev", "c0"])
        .unwrap();
    lab.start_agent("[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.11\", \"192.0.2.12\"]\ntable_size = 251\n").unwrap();
    lab.wait_ready().unwrap();
    let t = Duration::from_secs(1);
    assert!(
        lab.http_get_from(good, 80, t).is_ok() && lab.http_get_from(bad, 80, t).is_ok(),
        "no ACL: both pass"
    );

    let mut established = lab.http_connect(80).unwrap(); // from 198.51.100.2 (permitted)
    established.get().unwrap();
    let mut doomed = lab.http_connect_from(bad, 80, t).unwrap();
    doomed.get().unwrap();
    lab.lb(&[
        "acl",
        "add",
        "203.0.113.10:80/tcp",
        "--order",
        "100",
        "--permit",
        "198.51.100.0/26",
        "--description",
        "clients",
    ])
    .unwrap();
    lab.lb(&[
        "acl",
        "add",
        "203.0.113.10:80/tcp",
        "--order",
        "200",
        "--deny",
        "198.51.100.64/26",
    ])
    .unwrap();
    for _ in 0..5 {
        lab.http_get_from(good, 80, t).unwrap();
        assert!(
            lab.http_get_from(bad, 80, t).is_err(),
            "a denied source got through"
        );
    }
    established
        .get()
        .expect("an established flow from a permitted source continues");
    let acl = lab
        .lb_json(&["acl", "list", "203.0.113.10:80/tcp"])
        .unwrap();
    assert!(acl["drops"].as_u64().unwrap() >= 5, "{acl}");
    assert_eq!(acl["rules"][0]["description"], "clients", "{acl}");
    assert!(lab.reason("drop_acl").unwrap() >= 5);

    // Deleting the rules opens the endpoint again.
    lab.lb(&["acl", "del", "203.0.113.10:80/tcp", "--order", "200"])
        .unwrap();
    assert!(
        lab.http_get_from(bad, 80, t).is_err(),
        "still not permitted: a permit rule exists"
    );
    lab.lb(&["acl", "del", "203.0.113.10:80/tcp", "--order", "100"])
        .unwrap();
    lab.http_get_from(bad, 80, t).unwrap();
}

/// An internal VIP answers its internal prefixes only ("as if it did not exist outside"), and
/// drops a backend connecting to its own VIP (hairpin, the reference's default).
#[test]
fn an_internal_vip_is_reachable_only_from_inside() {
    use std::{
        net::{Ipv4Addr, SocketAddr, TcpStream},
        time::Duration,
    };
    let mut lab = Lab::new(2).unwrap();
    lab.add_external_client().unwrap();
    lab.start_agent(
        "[[service]]\nvip = \"203.0.113.20:80/tcp\"\nbackends = [\"192.0.2.11\", \"192.0.2.12\"]\ntable_size = 251\n\
         internal = [\"198.51.100.0/25\"]\n\n\
         [[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.11\", \"192.0.2.12\"]\ntable_size = 251\n",
    )
    .unwrap();
    lab.wait_ready().unwrap();
    let (ilb, public) = (
        Ipv4Addr::new(203, 0, 113, 20),
        Ipv4Addr::new(203, 0, 113, 10),
    );
    let t = Duration::from_secs(1);
    // The public VIP answers both clients; the internal one only the internal client.
    lab.http_get_external(public, 80, t).unwrap();
    lab.http_get(80).unwrap();
    let inside = lab
        .client
        .enter(move || TcpStream::connect_timeout(&SocketAddr::from((ilb, 80)), t));
    assert!(
        inside.is_ok(),
        "the internal client cannot reach the internal VIP: {inside:?}"
    );
    for _ in 0..3 {
        assert!(
            lab.http_get_external(ilb, 80, t).is_err(),
            "the internal VIP answered outside"
        );
    }
    assert!(lab.reason("drop_not_internal").unwrap() >= 3);
    let vips = lab.lb_json(&["vip", "list"]).unwrap();
    assert!(vips.to_string().contains("198.51.100.0/25"), "{vips}");

    // Hairpin: backend b1 connecting to its own internal VIP is dropped and counted.
    let hairpin = lab.backends[0]
        .ns
        .enter(move || TcpStream::connect_timeout(&SocketAddr::from((ilb, 80)), t));
    assert!(hairpin.is_err(), "hairpin got through");
    assert!(lab.reason("drop_hairpin").unwrap() >= 1);
    let e = refused(
        &lab,
        &[
            "vip",
            "add",
            "203.0.113.20:81/tcp",
            "--internal",
            "198.51.100.0/25",
            "--hairpin",
            "snat",
        ],
    );
    assert!(e.contains("same hairpin mode"), "{e}");
    let e = refused(
        &lab,
        &["vip", "add", "203.0.113.22:80/tcp", "--hairpin", "snat"],
    );
    assert!(e.contains("internal VIPs only"), "{e}");
    let e = refused(&lab, &["vip", "add", "203.0.113.20:82/tcp"]);
    assert!(e.contains("same internal prefixes"), "{e}");
}

/// `--hairpin snat`: a backend reaches its own internal VIP. The server (either backend, the
/// connecting one included) sees the VIP as the source, with a port from the dynamic range, and
/// the connection works both ways through the LB; internal clients are unaffected.
#[test]
fn hairpin_snat_lets_a_backend_reach_its_own_internal_vip() {
    use std::{net::Ipv4Addr, time::Duration};
    let mut lab = Lab::new(2).unwrap();
    lab.start_agent(
        "[[service]]\nvip = \"203.0.113.21:80/tcp\"\nbackends = [\"192.0.2.11\", \"192.0.2.12\"]\ntable_size = 251\n\
         internal = [\"198.51.100.0/25\"]\nhairpin = \"snat\"\n",
    )
    .unwrap();
    lab.wait_ready().unwrap();
    let ilb = Ipv4Addr::new(203, 0, 113, 21);
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
    // The internal client still reaches the VIP, from its own address.
    let mut c = Lab::http_connect_in(&lab.client, ilb, 80, t).unwrap();
    let (_, peer) = c.get_with_peer().unwrap();
    assert_ne!(peer.ip(), ilb, "a plain client must not be source-NATed");
}

/// An instance-level public IP: ping answered by the instance (through the LB, from the PIP),
/// and a TCP connection to a port no VIP balances reaches the same instance.
#[test]
fn a_pip_reaches_its_instance_with_every_protocol() {
    use std::{net::Ipv4Addr, time::Duration};
    let mut lab = Lab::new(3).unwrap();
    lab.start_agent(
        "[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.11\", \"192.0.2.12\"]\ntable_size = 251\n\n\
         [[pip]]\npip = \"203.0.113.50\"\ndip = \"192.0.2.13\"\n",
    )
    .unwrap();
    lab.wait_ready().unwrap();
    let pip = Ipv4Addr::new(203, 0, 113, 50);
    let t = Duration::from_secs(2);
    for _ in 0..3 {
        assert_eq!(
            lb_integration::lab::ping(&lab.client, pip, t).unwrap(),
            pip,
            "the echo reply must come from the PIP"
        );
    }
    // The LB never answers pings to a PIP itself: the requests went in, the replies came out.
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
    for _ in 0..5 {
        assert_eq!(
            lab.http_get_at(pip, 80).unwrap(),
            "b3",
            "TCP to the PIP reaches its instance"
        );
    }
    // A ping to a VIP is answered by the LB itself (no backend sees it).
    let vip = Ipv4Addr::new(203, 0, 113, 10);
    assert_eq!(lb_integration::lab::ping(&lab.client, vip, t).unwrap(), vip);
    assert!(lab.reason("echo_reply").unwrap() >= 1);
    let list = lab.lb_json(&["pip", "list"]).unwrap();
    assert_eq!(list["pips"][0]["dip"], "192.0.2.13", "{list}");
    assert!(refused(&lab, &["pip", "add", "203.0.113.10", "192.0.2.12"]).contains("is a VIP"));
    lab.lb(&["pip", "del", "203.0.113.50"]).unwrap();
    assert!(
        lb_integration::lab::ping(&lab.client, pip, Duration::from_millis(500)).is_err(),
        "a deleted PIP still answers"
    );
}

/// A "fragmentation needed" from the client's side about a VIP flow reaches the backend that
/// owns the flow, with the embedded packet translated to that backend's address and port.
#[test]
fn fragmentation_needed_reaches_the_backend_that_owns_the_flow() {
    use std::{
        net::{Ipv4Addr, SocketAddrV4},
        time::Duration,
    };

    use lb_integration::{
        lab::{icmp_socket, recv_icmp, send_icmp},
        packet::{Frame, TCP_ACK},
    };
    let mut lab = Lab::new(3).unwrap();
    lab.start_agent("[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.11\", \"192.0.2.12\", \"192.0.2.13\"]\ntable_size = 251\n").unwrap();
    lab.wait_ready().unwrap();
    let mut conn = lab.http_connect(80).unwrap();
    let owner = conn.get().unwrap();
    let SocketAddr::V4(local) = conn.local_addr().unwrap() else {
        panic!()
    };
    let owner_i: usize = owner.trim_start_matches('b').parse().unwrap();
    let listeners: Vec<_> = lab
        .backends
        .iter()
        .map(|b| icmp_socket(&b.ns).unwrap())
        .collect();

    // What the client's path would send: type 3 code 4 (MTU 1400) about our reply VIP → client.
    let vip = Ipv4Addr::new(203, 0, 113, 10);
    let reply = Frame::tcp(SocketAddrV4::new(vip, 80), local, TCP_ACK).build();
    let mut msg = vec![3, 4, 0, 0, 0, 0, 0x05, 0x78];
    msg.extend_from_slice(&reply[14..14 + 28]);
    let client_sock = icmp_socket(&lab.client).unwrap();
    send_icmp(&client_sock, vip, msg).unwrap();

    let owner_ip = backend_ip(owner_i);
    let is_it = |p: &[u8]| {
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let e = ihl + 8; // the embedded IP header
        p.len() >= e + 24
            && p[ihl] == 3
            && p[ihl + 1] == 4
            && p[e + 12..e + 16] == owner_ip.octets()
            && p[e + 20..e + 22] == 80u16.to_be_bytes()
            && p[e + 22..e + 24] == local.port().to_be_bytes()
    };
    let got = recv_icmp(&listeners[owner_i - 1], Duration::from_secs(3), is_it);
    assert!(
        got.is_some(),
        "backend {owner} never got the translated frag-needed\n{}",
        lab.lb(&["stats"]).unwrap()
    );
    for (i, l) in listeners
        .iter()
        .enumerate()
        .filter(|(i, _)| i + 1 != owner_i)
    {
        assert!(
            recv_icmp(l, Duration::from_millis(200), |p| p
                [usize::from(p[0] & 0x0f) * 4]
                == 3)
            .is_none(),
            "b{} got it too",
            i + 1
        );
    }
    assert!(lab.reason("icmp_to_backend").unwrap() >= 1);
    conn.get().expect("the connection still works");
}

/// The bug a new user found: a connection through the VIP from client port P ends, then the
/// client connects from P straight to the backend. Before flows recorded their TCP state, the
/// backend's SYN-ACK matched the ended VIP flow and was rewritten to come from the VIP, so the
/// client reset the direct connection. Now it passes untouched (`pass_not_reply`).
#[test]
fn a_client_port_reused_to_reach_a_backend_directly_is_not_hijacked() {
    let mut lab = Lab::new(1).unwrap();
    lab.start_agent(
        r#"
[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11"]
"#,
    )
    .unwrap();
    lab.wait_ready().unwrap();
    // The client reaches the backends' subnet through the LB's kernel (not ours to the XDP
    // program: it passes the SYN, and the backend answers through the LB).
    lab.client
        .ip(&["route", "add", "192.0.2.0/24", "via", "198.51.100.1"])
        .unwrap();
    let timeout = std::time::Duration::from_secs(3);
    for i in 0..3u16 {
        let src = SocketAddrV4::new(CLIENT_IP, 47_000 + i);
        let mut c = lab
            .http_connect_between(src, SocketAddrV4::new(VIP, 80), timeout)
            .unwrap();
        assert_eq!(c.get().unwrap(), "b1");
        c.close().unwrap();
        let mut d = lab
            .http_connect_between(src, SocketAddrV4::new(backend_ip(1), 80), timeout)
            .unwrap_or_else(|e| panic!("direct connection {i}: {e:#}\n{}", lab.agent_log()));
        let (name, peer) = d.get_with_peer().unwrap();
        assert_eq!((name.as_str(), peer), ("b1", SocketAddr::V4(src)));
        d.close().unwrap();
    }
    assert!(
        lab.reason("pass_not_reply").unwrap() >= 3,
        "the direct SYN-ACKs were refused as replies"
    );
}

/// `replies = "stateless"` with real traffic: connections through the VIP work, the health
/// probes' answers (to the LB's own address, found through netlink) reach the agent untouched,
/// so the backends come into rotation; and, as documented, a direct connection to a
/// backend's service port no longer works (its answers are rewritten to the VIP).
#[test]
fn stateless_replies_serve_the_vip_and_spare_the_probes() {
    let mut lab = Lab::new(2).unwrap();
    lab.start_agent(
        r#"
[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11", "192.0.2.12"]
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
    let http = tally((0..30).map(|i| {
        lab.http_get(80)
            .unwrap_or_else(|e| panic!("HTTP request {i}: {e:#}\n{}", lab.agent_log()))
    }));
    assert_eq!(http.len(), 2, "both backends answer: {http:?}");
    assert!(lab.reason("reply").unwrap() >= 30 * 2);
    lab.client
        .ip(&["route", "add", "192.0.2.0/24", "via", "198.51.100.1"])
        .unwrap();
    let direct = lab.http_connect_between(
        SocketAddrV4::new(CLIENT_IP, 0),
        SocketAddrV4::new(backend_ip(1), 80),
        std::time::Duration::from_secs(1),
    );
    assert!(
        direct.and_then(|mut c| c.get()).is_err(),
        "a direct connection to a stateless backend's port is answered from the VIP"
    );
}

/// `--distribution source-ip` (source affinity): every connection from one client address
/// reaches one backend, whatever its source port, while several client addresses together
/// reach more than one; a mode change keeps an open connection on its backend.
#[test]
fn source_ip_distribution_keeps_a_client_on_one_backend() {
    use std::{net::Ipv4Addr, time::Duration};
    let mut lab = Lab::new(3).unwrap();
    let clients: Vec<Ipv4Addr> = (2..10).map(|l| Ipv4Addr::new(198, 51, 100, l)).collect();
    for c in &clients[1..] {
        lab.client
            .ip(&["addr", "add", &format!("{c}/24"), "dev", "c0"])
            .unwrap();
    }
    lab.start_agent(
        r#"
[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
table_size = 251
distribution = "source-ip"
"#,
    )
    .unwrap();
    lab.wait_ready().unwrap();
    let t = Duration::from_secs(2);
    let one = tally((0..20).map(|i| {
        lab.http_get_from(clients[0], 80, t)
            .unwrap_or_else(|e| panic!("request {i}: {e:#}\n{}", lab.agent_log()))
    }));
    assert_eq!(one.len(), 1, "one client address, one backend: {one:?}");
    let all: BTreeSet<String> = clients
        .iter()
        .map(|c| lab.http_get_from(*c, 80, t).unwrap())
        .collect();
    assert!(
        all.len() >= 2,
        "several clients reach several backends: {all:?}"
    );
    let vips = lab.lb_json(&["vip", "list"]).unwrap();
    assert_eq!(vips["vips"][0]["distribution"], "source-ip", "{vips}");
    // Back to the 5-tuple on the live service: the open connection stays where it is, and
    // the client's new connections spread again.
    let mut open = lab.http_connect_from(clients[0], 80, t).unwrap();
    let home = open.get().unwrap();
    lab.reload(
        r#"
[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
table_size = 251
"#,
    )
    .unwrap();
    lb_integration::wait_until(
        "the reload",
        Duration::from_secs(10),
        Duration::from_millis(25),
        || {
            lab.lb_json(&["vip", "list"])
                .is_ok_and(|v| v["vips"][0]["distribution"] == "5-tuple")
        },
    )
    .unwrap();
    assert_eq!(
        open.get().unwrap(),
        home,
        "the open connection kept its backend"
    );
    let spread = tally((0..20).map(|_| lab.http_get_from(clients[0], 80, t).unwrap()));
    assert!(spread.len() >= 2, "5-tuple again: {spread:?}");
}

/// The reload rule: a SIGHUP with the config file unchanged keeps the changes made with `lb`
/// since it was applied; a changed file wins, and the log lists what it replaced.
#[test]
fn a_reload_of_an_unchanged_file_keeps_cli_changes() {
    use std::time::Duration;
    let mut lab = Lab::new(2).unwrap();
    let config = "[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.11\"]\ntable_size = 251\n";
    lab.start_agent(config).unwrap();
    lab.wait_ready().unwrap();
    lab.lb(&["backend", "add", "203.0.113.10:80/tcp", "192.0.2.12"])
        .unwrap();
    let backends = |lab: &Lab| {
        lab.lb_json(&["backend", "list", "203.0.113.10:80/tcp"])
            .unwrap()["backends"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(backends(&lab), 2);
    let logged = |lab: &Lab, what: &str| {
        lb_integration::wait_until(
            what,
            Duration::from_secs(10),
            Duration::from_millis(25),
            || lab.agent_log().contains(what),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.agent_log()));
    };
    lab.reload(config).unwrap();
    logged(&lab, "config file unchanged since it was applied");
    assert_eq!(backends(&lab), 2, "the CLI's backend stays");
    lab.reload(&config.replace("251", "257")).unwrap();
    logged(&lab, "config reloaded");
    assert_eq!(backends(&lab), 1, "a changed file wins");
    let log = lab.agent_log();
    assert!(
        log.contains("the changed config file replaces the running state here")
            && log.contains("service 203.0.113.10:80/tcp changed"),
        "{log}"
    );

    // `lb reload` says the same on the terminal: unchanged, changed (what it replaced, the
    // CLI's backend included), refused (and nothing changes).
    lab.lb(&["backend", "add", "203.0.113.10:80/tcp", "192.0.2.12"])
        .unwrap();
    let out = lab.lb(&["reload"]).unwrap();
    assert!(out.contains("unchanged since it was applied"), "{out}");
    assert_eq!(backends(&lab), 2);
    let file = lab.tmp.join("lb.toml");
    std::fs::write(&file, config.replace("251", "263")).unwrap();
    let out = lab.lb(&["reload"]).unwrap();
    assert!(
        out.contains("reloaded; the file replaced:")
            && out.contains("service 203.0.113.10:80/tcp changed"),
        "{out}"
    );
    assert_eq!(backends(&lab), 1);
    let json = lab.lb_json(&["reload"]).unwrap();
    assert_eq!(json["result"], "reloaded", "{json}");
    assert_eq!(json["changed"], false, "{json}");
    std::fs::write(&file, "[[service]]\nvip = \"nope\"\n").unwrap();
    let e = lab.lb(&["reload"]).unwrap_err().to_string();
    assert!(
        e.contains("lb.toml:2") && e.contains("nothing changed"),
        "{e}"
    );
    assert_eq!(backends(&lab), 1, "a refused file changes nothing");
}
