//! A flow's life end to end, with the real agent's sweeper: idle timeouts, TCP reset on idle,
//! and UDP flows that re-pick once expired. Short timeouts (2 s) keep the tests fast; every
//! wait is for an observable change (a counter, a socket), bounded.

use std::time::Duration;

use lb_integration::{
    lab::{HttpConn, Lab},
    wait_until,
};

const WEB: &str = "203.0.113.10:80/tcp";

fn config(extra: &str) -> String {
    format!(
        "[[service]]\nvip = \"{WEB}\"\nbackends = [\"192.0.2.11\"]\ntable_size = 251\n{extra}\n"
    )
}

/// The sweeper's expiries of `cause`, from `lb stats`.
fn expired(lab: &Lab, cause: &str) -> u64 {
    lab.lb_json(&["stats"]).unwrap()["flows_expired"][cause]
        .as_u64()
        .unwrap_or(0)
}

fn stats_field(lab: &Lab, field: &str) -> u64 {
    lab.lb_json(&["stats"]).unwrap()[field].as_u64().unwrap()
}

/// Waits until the sweeper has expired at least `n` flows as `cause`.
fn wait_expired(lab: &Lab, cause: &str, n: u64) {
    wait_until(
        &format!("{n} flow(s) expired as {cause}"),
        Duration::from_secs(15),
        Duration::from_millis(100),
        || expired(lab, cause) >= n,
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.agent_log()));
}

/// The established TCP connections to port 80 in backend `i`'s namespace.
fn backend_connections(lab: &Lab, i: usize) -> usize {
    lab.backends[i]
        .ns
        .exec("ss", &["-Htn", "state", "established", "( sport = :80 )"])
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// The tracked flows of backend `addr`, from `lb backend list`.
fn flows_of(lab: &Lab, addr: &str) -> u64 {
    let b = lab.backend_entry(WEB, addr).unwrap();
    b["flows"]
        .as_u64()
        .unwrap_or_else(|| panic!("no backend {addr}: {b}"))
}

/// Waits for the sweeper to expire `conn`'s idle flow, then checks that both RSTs went out and
/// were accepted: the backend's socket is gone, and the client's next request finds its
/// connection reset (not a challenge ACK, not a hang).
fn expect_reset_on_both_sides(lab: &Lab, conn: &mut HttpConn) {
    wait_expired(lab, "idle", 1);
    assert_eq!(stats_field(lab, "tcp_resets"), 2);
    assert_eq!(stats_field(lab, "tcp_reset_errors"), 0);
    wait_until(
        "the backend's socket to go",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || backend_connections(lab, 0) == 0,
    )
    .unwrap();
    let err = conn.get().expect_err("the connection was reset");
    let kind = err
        .chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    assert_eq!(
        kind,
        Some(std::io::ErrorKind::ConnectionReset),
        "the client's next request: {err:#}"
    );
}

/// TCP reset on idle over IPv6: an idle IPv6 connection gets both RSTs (IPv6, from the
/// sweeper's raw IPv6 socket, with the numbers the fast path recorded), and both sides drop it.
#[test]
fn an_idle_ipv6_connection_with_tcp_reset_is_reset_on_both_sides() {
    let mut lab = Lab::new(1).unwrap();
    lab.start_agent(
        "[[service]]\nvip = \"[2001:db8:3::10]:80/tcp\"\nbackends = [\"2001:db8:2::11\"]\n\
         table_size = 251\nidle_timeout = \"2s\"\ntcp_reset = true\n",
    )
    .unwrap();
    lab.wait_ready().unwrap();
    let mut conn = lab.http_connect6(80).unwrap();
    assert_eq!(conn.get().unwrap(), "b1");
    // A second request: the recorded numbers follow the connection past its first exchange.
    assert_eq!(conn.get().unwrap(), "b1");
    assert_eq!(backend_connections(&lab, 0), 1);
    expect_reset_on_both_sides(&lab, &mut conn);
}

#[test]
fn an_idle_connection_with_tcp_reset_is_reset_on_both_sides() {
    let mut lab = Lab::new(1).unwrap();
    lab.start_agent(&config("idle_timeout = \"2s\"\ntcp_reset = true"))
        .unwrap();
    lab.wait_ready().unwrap();
    let vips = lab.lb_json(&["vip", "list"]).unwrap();
    assert_eq!(vips["vips"][0]["idle_timeout"], "2s", "{vips}");
    assert_eq!(vips["vips"][0]["tcp_reset"], true, "{vips}");

    let mut conn = lab.http_connect(80).unwrap();
    assert_eq!(conn.get().unwrap(), "b1");
    assert_eq!(backend_connections(&lab, 0), 1);
    assert_eq!(flows_of(&lab, "192.0.2.11:80"), 1);
    expect_reset_on_both_sides(&lab, &mut conn);
    assert_eq!(flows_of(&lab, "192.0.2.11:80"), 0);
}

#[test]
fn a_connection_that_keeps_talking_is_never_cut_and_one_that_stops_is() {
    let mut lab = Lab::new(1).unwrap();
    lab.start_agent(&config("idle_timeout = \"2s\"\ntcp_reset = true"))
        .unwrap();
    lab.wait_ready().unwrap();
    let mut conn = lab.http_connect(80).unwrap();
    // A request a second for three times the timeout: the traffic's own pace, bounded.
    for i in 0..6 {
        assert_eq!(
            conn.get()
                .unwrap_or_else(|e| panic!("request {i}: {e:#}\n{}", lab.agent_log())),
            "b1"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(expired(&lab, "idle"), 0, "a live flow was expired");
    // The sweeper did look at it meanwhile: passes ran past the timeout.
    assert!(
        stats_field(&lab, "sweeps") >= 3,
        "{}",
        lab.lb(&["stats"]).unwrap()
    );
    assert_eq!(stats_field(&lab, "sweep_errors"), 0);
    assert_eq!(stats_field(&lab, "tcp_resets"), 0);
    // Silent now: it goes within the timeout and a sweep.
    wait_expired(&lab, "idle", 1);
    assert!(conn.get().is_err(), "the idle connection was reset");
}

#[test]
fn without_tcp_reset_an_idle_flow_leaves_the_table_silently() {
    let mut lab = Lab::new(1).unwrap();
    lab.start_agent(&config("idle_timeout = \"2s\"")).unwrap();
    lab.wait_ready().unwrap();
    let mut conn = lab.http_connect(80).unwrap();
    assert_eq!(conn.get().unwrap(), "b1");
    assert_eq!(flows_of(&lab, "192.0.2.11:80"), 1);
    wait_expired(&lab, "idle", 1);
    assert_eq!(flows_of(&lab, "192.0.2.11:80"), 0);
    assert_eq!(stats_field(&lab, "tcp_resets"), 0);
    // Nobody was told: the backend still holds the connection, and the client's next request
    // is re-picked from the table (one backend: the same one) and tracked again.
    assert_eq!(backend_connections(&lab, 0), 1);
    assert_eq!(conn.get().unwrap(), "b1");
    assert_eq!(flows_of(&lab, "192.0.2.11:80"), 1);
}

#[test]
fn a_udp_flow_re_picks_after_its_timeout() {
    let mut lab = Lab::new(3).unwrap();
    lab.start_agent(
        "[[service]]\nvip = \"203.0.113.10:53/udp\"\n\
         backends = [\"192.0.2.11\", \"192.0.2.12\", \"192.0.2.13\"]\n\
         table_size = 251\nidle_timeout = \"2s\"\n",
    )
    .unwrap();
    lab.wait_ready().unwrap();
    let flow = lab.udp_flow(53).unwrap();
    let home = flow.ask("one").unwrap();
    let ip = format!("192.0.2.1{}", &home[1..]);
    // Weight 0: no new flows for the home backend, but the tracked flow stays on it...
    lab.lb(&["backend", "set-weight", "203.0.113.10:53/udp", &ip, "0"])
        .unwrap();
    assert_eq!(flow.ask("two").unwrap(), home, "a tracked flow stays");
    // ...until it expires; then the same 5-tuple is a new flow, and takes another backend.
    wait_expired(&lab, "idle", 1);
    let moved = flow.ask("three").unwrap();
    assert_ne!(moved, home, "the expired flow re-picked");
}

#[test]
fn lb_flows_lists_tracked_flows_with_their_state_and_idle_time() {
    let mut lab = Lab::new(1).unwrap();
    lab.start_agent(&config("")).unwrap();
    lab.wait_ready().unwrap();
    let mut conn = lab.http_connect(80).unwrap();
    assert_eq!(conn.get().unwrap(), "b1");
    let local = conn.local_addr().unwrap().to_string();
    let flows = lab.lb_json(&["flows"]).unwrap();
    assert_eq!(flows["matched"], 1, "{flows}");
    let f = &flows["flows"][0];
    assert_eq!(f["client"], local.as_str(), "{flows}");
    assert_eq!(f["service"], WEB, "{flows}");
    assert_eq!(f["backend"], "192.0.2.11:80", "{flows}");
    assert_eq!(f["state"], "established", "{flows}");
    assert!(f["idle_s"].as_u64().unwrap() < 60, "{flows}");
    assert!(
        f["age_s"].as_u64().unwrap() >= f["idle_s"].as_u64().unwrap(),
        "{flows}"
    );
    // Selections: by service, backend and client prefix.
    let n = |args: &[&str]| {
        let mut a = vec!["flows"];
        a.extend_from_slice(args);
        lab.lb_json(&a).unwrap()["matched"].as_u64().unwrap()
    };
    assert_eq!(n(&[WEB]), 1);
    assert_eq!(n(&["--backend", "192.0.2.11"]), 1);
    assert_eq!(n(&["--backend", "192.0.2.99"]), 0);
    assert_eq!(n(&["--client", "198.51.100.0/24"]), 1);
    assert_eq!(n(&["--client", "192.0.2.0/24"]), 0);
    let table = lab.lb(&["flows"]).unwrap();
    assert!(
        table.contains("established") && table.contains("1 flows"),
        "{table}"
    );
    let e = lab
        .lb(&["flows", "203.0.113.10:81/tcp"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
    // Closed from the client's side: the flow shows the close until it goes.
    conn.close().unwrap();
    wait_until(
        "the flow to show as closed",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || lab.lb_json(&["flows"]).unwrap()["flows"][0]["state"] == "closed",
    )
    .unwrap();
}

#[test]
fn flows_flush_deletes_the_selected_flows_and_the_connection_is_tracked_again() {
    let mut lab = Lab::new(1).unwrap();
    lab.start_agent(&config("")).unwrap();
    lab.wait_ready().unwrap();
    let mut conn = lab.http_connect(80).unwrap();
    assert_eq!(conn.get().unwrap(), "b1");
    let matched = |lab: &Lab| {
        lab.lb_json(&["flows"]).unwrap()["matched"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(matched(&lab), 1);
    // `lb explain` of the connection's own 5-tuple: the table's pick, and the flow tracked.
    let local = conn.local_addr().unwrap().to_string();
    let explain = |lab: &Lab| lab.lb(&["explain", &local, WEB]).unwrap();
    let text = explain(&lab);
    assert!(text.contains("backend    192.0.2.11:80"), "{text}");
    assert!(text.contains("verdict    forward"), "{text}");
    assert!(text.contains("tracked    yes: to 192.0.2.11:80"), "{text}");
    let e = lab
        .lb(&["explain", "198.51.100.2:99999", WEB])
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not CLIENT:PORT"), "{e}");
    // A selection that matches nothing deletes nothing, and says so.
    let none = lab
        .lb_json(&["flows", "flush", "--backend", "192.0.2.99"])
        .unwrap();
    assert_eq!(none["flushed"], 0, "{none}");
    assert_eq!(matched(&lab), 1);
    let e = lab
        .lb(&["flows", "flush", "203.0.113.10:81/tcp"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
    // The service's flows go.
    let text = lab.lb(&["flows", "flush", WEB]).unwrap();
    assert_eq!(text.trim(), "1 flows flushed");
    assert_eq!(matched(&lab), 0);
    assert!(explain(&lab).contains("tracked    no"));
    // The connection's next packet is a new flow to the same (only) backend: it goes on.
    assert_eq!(conn.get().unwrap(), "b1");
    assert_eq!(matched(&lab), 1);
    // No selection: every flow.
    let all = lab.lb_json(&["flows", "flush"]).unwrap();
    assert_eq!(all["flushed"], 1, "{all}");
    assert_eq!(matched(&lab), 0);
}
