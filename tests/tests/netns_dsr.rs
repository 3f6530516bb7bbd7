//! Floating IP (direct server return) end to end, native XDP on veth: backends set up by the
//! real `lb backend setup --apply` (the VIPs on loopback, the ARP and reverse-path settings,
//! for `ipip` and `gue` the `lb_decap` program), replies carried to the client by a
//! return-path router namespace, never by the LB (see `lab::dsr`).
//!
//! Each mode is a test of its own (the harness runs them in parallel, each in its own lab).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd as _,
};

use lb_integration::lab::{CLIENT_IP, IO_TIMEOUT, Lab, backend_ip, dsr::arp_who_has};

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 60);
/// A UDP port served by backend 2 alone, for the GUE source-port check.
const SPORT_PORT: u16 = 5353;

fn config(mode: &str) -> String {
    format!(
        r#"
[agent]
encap_source4 = "192.0.2.1"
gue_port = 6080

[[service]]
vip = "203.0.113.60:80/tcp"
backends = ["192.0.2.11", "192.0.2.12"]
floating_ip = "{mode}"
probe = "http/healthz"
probe_interval = "1s"

[[service]]
vip = "203.0.113.60:53/udp"
backends = ["192.0.2.11", "192.0.2.12"]
floating_ip = "{mode}"
probe = "tcp:80"
probe_interval = "1s"

[[service]]
vip = "203.0.113.60:{SPORT_PORT}/udp"
backends = ["192.0.2.12"]
floating_ip = "{mode}"
probe = "tcp:80"
probe_interval = "1s"
"#
    )
}

/// A lab of two backends behind the return path, each set up for `mode` by the CLI and
/// serving on the VIP, with the agent running.
fn dsr_lab(mode: &str) -> Lab {
    let mut lab = dsr_backends(mode);
    lab.start_agent(&config(mode)).unwrap();
    lab.wait_ready().unwrap();
    lab
}

/// [`dsr_lab`] without the agent.
fn dsr_backends(mode: &str) -> Lab {
    let mut lab = Lab::new(2).unwrap();
    lab.add_return_path().unwrap();
    for i in 1..=2 {
        let out = lab
            .backend_setup(i, "setup", mode, &[IpAddr::V4(VIP)])
            .unwrap();
        assert!(out.contains("203.0.113.60 on lo"), "{out}");
        assert_eq!(
            out.contains("lb_decap attached in native mode (new link)"),
            mode != "l2",
            "{out}"
        );
        let b = &mut lab.backends[i - 1];
        b.also = vec![IpAddr::V4(VIP)];
        b.start_server_on(200, &[80], &[53, SPORT_PORT]).unwrap();
    }
    lab
}

/// HTTP and UDP through the VIP reach both backends; each backend's socket sees the VIP as
/// its own address and the real client as its peer; the replies come through the router and
/// the LB counts none.
fn serves_through_the_return_path(lab: &Lab) {
    let (_, tx_before) = lab.return_path_packets().unwrap();
    let mut names = BTreeSet::new();
    for i in 0..24 {
        let mut c = lab.http_connect_at(VIP, 80).unwrap();
        let (name, peer, local) = c
            .get_with_ends()
            .unwrap_or_else(|e| panic!("HTTP {i}: {e:#}\n{}", lab.agent_log()));
        assert_eq!(local, SocketAddr::from((VIP, 80)), "the backend's own end");
        assert_eq!(
            peer.ip(),
            IpAddr::V4(CLIENT_IP),
            "the backend saw the real client"
        );
        names.insert(name);
    }
    assert_eq!(names, ["b1", "b2"].map(String::from).into(), "HTTP");
    let mut udp = BTreeSet::new();
    for i in 0..16 {
        // `ask` accepts only an answer from VIP:53.
        udp.insert(
            lab.udp_flow_at(VIP, 53)
                .unwrap()
                .ask(&format!("q{i}"))
                .unwrap(),
        );
    }
    assert_eq!(udp.len(), 2, "UDP answers: {udp:?}");

    let stats = lab.lb_json(&["stats"]).unwrap();
    let r = &stats["reasons"];
    assert_eq!(
        r["reply"].as_u64(),
        Some(0),
        "no reply crossed the LB: {stats}"
    );
    assert!(
        r["forward_encap"].as_u64().unwrap() >= 24 * 3 + 16,
        "{stats}"
    );
    assert_eq!(
        r["forward"].as_u64(),
        Some(0),
        "nothing was DNATed: {stats}"
    );
    // The service's own counters: one new flow per connection, packets in, no replies.
    let tcp = stats["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "203.0.113.60:80/tcp")
        .unwrap();
    let c = &tcp["counters"];
    assert_eq!(c["new_flows"], 24, "{tcp}");
    assert!(c["packets"].as_u64().unwrap() >= 24 * 3, "{tcp}");
    assert_eq!(c["reply_packets"], 0, "{tcp}");
    // Each answer crossed the router towards the client (24 × at least the SYN-ACK and the
    // response, 16 UDP answers).
    let (_, tx) = lab.return_path_packets().unwrap();
    assert!(
        tx - tx_before >= 24 * 2 + 16,
        "router r0 sent {tx_before} → {tx}"
    );
}

/// A UDP packet of `len` bytes (IP header on) with DF set, from the client to VIP:53, sent
/// on a connected socket that takes ICMP errors; returns the path MTU the client's kernel
/// learned for the VIP once the error came (bounded by `IO_TIMEOUT`).
fn path_mtu_after_df_send(lab: &Lab, len: usize) -> u32 {
    lab.client.enter(move || {
        let s = UdpSocket::bind(SocketAddr::from((CLIENT_IP, 0))).unwrap();
        s.connect(SocketAddr::from((VIP, 53))).unwrap();
        let fd = s.as_raw_fd();
        let set = |level, opt, v: libc::c_int| {
            // SAFETY: a valid socket and a c_int option value.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    level,
                    opt,
                    (&raw const v).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(
                rc,
                0,
                "setsockopt {opt}: {}",
                std::io::Error::last_os_error()
            );
        };
        set(
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        );
        set(libc::IPPROTO_IP, libc::IP_RECVERR, 1);
        s.send(&vec![0x42u8; len - 28]).unwrap();
        // The error arrives asynchronously: wait for it on the socket itself.
        let mut p = libc::pollfd {
            fd,
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&raw mut p, 1, IO_TIMEOUT.as_millis() as libc::c_int) };
        assert_eq!(n, 1, "no ICMP error within {IO_TIMEOUT:?}");
        assert!(p.revents & libc::POLLERR != 0, "{:#x}", p.revents);
        let mut mtu: libc::c_int = 0;
        let mut l = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket; `mtu` and `l` are valid out-pointers.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MTU,
                (&raw mut mtu).cast(),
                &raw mut l,
            )
        };
        assert_eq!(rc, 0, "IP_MTU: {}", std::io::Error::last_os_error());
        u32::try_from(mtu).unwrap()
    })
}

/// A DF packet too big once encapsulated is answered with frag-needed: the client's kernel
/// lowers its path MTU for the VIP to the link's less the overhead, and the LB counts it.
fn too_big_is_answered(lab: &Lab, overhead: u32) {
    let before = lab.reason("icmp_too_big_sent").unwrap();
    // The veths' MTU is 1500: a 1500-byte packet cannot carry the outer headers.
    assert_eq!(path_mtu_after_df_send(lab, 1500), 1500 - overhead);
    assert_eq!(lab.reason("icmp_too_big_sent").unwrap(), before + 1);
}

/// The sysctls `lb backend setup` wrote in backend `i`.
fn assert_backend_settings(lab: &Lab, i: usize) {
    let ns = &lab.backends[i - 1].ns;
    for (key, want) in [
        ("all/arp_ignore", "1"),
        ("all/arp_announce", "2"),
        ("eth0/arp_ignore", "1"),
        ("eth0/arp_announce", "2"),
        ("eth0/rp_filter", "2"),
    ] {
        let got = ns
            .exec("cat", &[&format!("/proc/sys/net/ipv4/conf/{key}")])
            .unwrap();
        assert_eq!(got.trim(), want, "b{i} {key}");
    }
    let lo = ns.ip(&["-o", "addr", "show", "dev", "lo"]).unwrap();
    assert!(lo.contains("inet 203.0.113.60/32"), "{lo}");
}

#[test]
fn l2_backends_answer_the_client_directly() {
    let lab = dsr_lab("l2");
    assert_backend_settings(&lab, 1);
    serves_through_the_return_path(&lab);
    // On the LB's link the backend answers ARP for its own address but never for the VIP
    // it holds on loopback (without `arp_ignore` it would, and steal the VIP's traffic).
    let ask = |target| arp_who_has(&lab.lb, "l1", Ipv4Addr::new(192, 0, 2, 1), target).unwrap();
    assert_eq!(
        ask(backend_ip(1)),
        Some(lab.backends[0].ns.mac("eth0").unwrap())
    );
    assert_eq!(ask(VIP), None, "a backend claimed the VIP");
}

#[test]
fn ipip_backends_decapsulate_and_answer_the_client_directly() {
    let lab = dsr_lab("ipip");
    serves_through_the_return_path(&lab);
    too_big_is_answered(&lab, 20);
    // Setting up again changes nothing but replaces the program in place.
    let again = lab
        .backend_setup(1, "setup", "ipip", &[IpAddr::V4(VIP)])
        .unwrap();
    assert!(again.contains("replaced the earlier one"), "{again}");
    assert_eq!(lab.http_get_at(VIP, 80).map(|_| ()).ok(), Some(()));
}

#[test]
fn gue_backends_decapsulate_spread_over_source_ports_and_tear_down() {
    let lab = dsr_lab("gue");
    serves_through_the_return_path(&lab);
    too_big_is_answered(&lab, 28);

    // Backend 2 without its decapsulation program: the GUE datagrams reach its stack as
    // they are, so a socket on its GUE port sees their outer source ports.
    let out = lab
        .backend_setup(2, "teardown", "gue", &[IpAddr::V4(VIP)])
        .unwrap();
    assert!(out.contains("lb_decap detached"), "{out}");
    let link = lab.backends[1]
        .ns
        .ip(&["link", "show", "dev", "eth0"])
        .unwrap();
    assert!(!link.contains("xdp"), "the program is off: {link}");
    let sink = lab.backends[1]
        .ns
        .enter(|| UdpSocket::bind(SocketAddrV4::new(backend_ip(2), 6080)))
        .unwrap();
    sink.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let flows = 32;
    for i in 0..flows {
        let f = lab.udp_flow_at(VIP, SPORT_PORT).unwrap();
        f.send_only(format!("flow {i}").as_bytes()).unwrap();
    }
    let mut ports = BTreeSet::new();
    let mut buf = [0u8; 2048];
    for _ in 0..flows {
        let (_, from) = sink
            .recv_from(&mut buf)
            .expect("a GUE datagram at backend 2");
        assert_eq!(
            from.ip(),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            "outer source"
        );
        assert!(from.port() >= 49_152, "{from}");
        ports.insert(from.port());
    }
    // 32 flows over 16 384 ports: a collision or two at most.
    assert!(
        ports.len() >= 28,
        "{} distinct outer source ports: {ports:?}",
        ports.len()
    );
}

/// Probes through the tunnel (`probe_via = "tunnel"`) see the whole DSR path: with backend 1's
/// floating-IP setup torn down (its decapsulation program detached and the VIP off its
/// loopback) its server still answers at its own address, so a direct probe keeps it in
/// rotation, but the tunnel probe, sent to VIP:80 the way clients' packets go, takes it out;
/// set up again, it comes back.
fn tunnel_probes_follow_the_path(mode: &str) {
    let mut lab = dsr_backends(mode);
    lab.start_agent(&format!(
        r#"
[agent]
encap_source4 = "192.0.2.1"
gue_port = 6080

[[service]]
vip = "{WEB}"
backends = ["192.0.2.11", "192.0.2.12"]
floating_ip = "{mode}"
probe = "http/healthz"
probe_via = "tunnel"
probe_interval = "100ms"
probe_timeout = "100ms"

[[service]]
vip = "{DNS}"
backends = ["192.0.2.11", "192.0.2.12"]
floating_ip = "{mode}"
probe = "tcp:80"
probe_interval = "100ms"
probe_timeout = "100ms"
"#
    ))
    .unwrap();
    lab.wait_ready().unwrap();
    let entry = |svc: &str, addr: &str| lab.backend_entry(svc, addr).unwrap();
    let wait = |svc: &str, addr: &str, what: &str, up: bool| {
        lb_integration::wait_until(
            &format!("{svc} {addr}: {what}"),
            IO_TIMEOUT * 3,
            std::time::Duration::from_millis(25),
            || entry(svc, addr)["in_rotation"] == up,
        )
        .unwrap_or_else(|e| panic!("{e}; last {}\n{}", entry(svc, addr), lab.agent_log()));
    };
    for a in ["192.0.2.11:80", "192.0.2.12:80"] {
        wait(WEB, a, "in rotation through the tunnel", true);
    }
    let last = entry(WEB, "192.0.2.11:80");
    assert_eq!(last["last_probe"]["detail"], "HTTP 200", "{last}");
    // The probe device's program carried them (an HTTP probe is at least three packets).
    let stats = lab.lb_json(&["stats"]).unwrap();
    let tunnel = &stats["probe_tunnel"];
    assert!(tunnel["sent"].as_u64().unwrap_or_default() >= 6, "{stats}");
    // (`no_route` may count the first SYNs, sent before the agent had resolved the backend's
    // neighbour: nothing else talks to a backend in floating-IP mode.)
    for o in ["no_backend", "malformed"] {
        assert_eq!(tunnel[o], 0, "{o}: {stats}");
    }
    let list = lab.lb_json(&["vip", "list"]).unwrap();
    assert!(
        list.to_string().contains(r#""probe_via":"tunnel""#),
        "{list}"
    );

    lab.backend_setup(1, "teardown", mode, &[IpAddr::V4(VIP)])
        .unwrap();
    wait(WEB, "192.0.2.11:80", "out through the tunnel", false);
    let down = entry(WEB, "192.0.2.11:80");
    assert!(
        down["reason"].as_str().unwrap().contains("timeout"),
        "{down}"
    );
    let direct = entry(DNS, "192.0.2.11:53");
    assert_eq!(direct["in_rotation"], true, "the direct probe: {direct}");
    assert_eq!(entry(WEB, "192.0.2.12:80")["in_rotation"], true);
    // New flows go to backend 2 alone.
    for _ in 0..8 {
        let mut c = lab.http_connect_at(VIP, 80).unwrap();
        assert_eq!(c.get_with_ends().unwrap().0, "b2");
    }

    lab.backend_setup(1, "setup", mode, &[IpAddr::V4(VIP)])
        .unwrap();
    wait(WEB, "192.0.2.11:80", "back through the tunnel", true);
}

const WEB: &str = "203.0.113.60:80/tcp";
const DNS: &str = "203.0.113.60:53/udp";

#[test]
fn tunnel_probes_ipip() {
    tunnel_probes_follow_the_path("ipip");
}

#[test]
fn tunnel_probes_gue() {
    tunnel_probes_follow_the_path("gue");
}

#[test]
fn tunnel_probes_l2() {
    tunnel_probes_follow_the_path("l2");
}
