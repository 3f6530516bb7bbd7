//! Healing backends end to end: health probes, drain, weights and restarts, with real servers
//! in backend namespaces and real connections through the VIP. Probe intervals are short
//! (100 ms) so the tests run quickly; waits are bounded polls of `lb backend list`.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use lb_integration::{lab::Lab, wait_until};
use serde_json::Value;

const WEB: &str = "203.0.113.10:80/tcp";

fn config(probe: &str) -> String {
    format!(
        r#"[[service]]
vip = "{WEB}"
backends = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
table_size = 4093
probe = "{probe}"
probe_interval = "100ms"
probe_timeout = "100ms"
unhealthy_after = 2
healthy_after = 1
"#
    )
}

fn tally(names: impl IntoIterator<Item = String>) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n).or_default() += 1;
    }
    m
}

fn backend(lab: &Lab, addr: &str) -> Value {
    lab.backend_entry(WEB, addr).unwrap()
}

/// Waits (bounded) until `addr`'s entry satisfies `pred`.
fn wait_backend(lab: &Lab, addr: &str, what: &str, pred: impl Fn(&Value) -> bool) {
    wait_until(
        &format!("{addr}: {what}"),
        Duration::from_secs(15),
        Duration::from_millis(25),
        || pred(&backend(lab, addr)),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}; last state {}\n{}",
            backend(lab, addr),
            lab.agent_log()
        )
    });
}

/// A keep-alive connection through the VIP that landed on backend `name` (new connections
/// until one does, at most 100).
fn connection_on(lab: &Lab, name: &str) -> lb_integration::lab::HttpConn {
    (0..100)
        .map(|_| {
            let mut c = lab.http_connect(80).unwrap();
            let n = c.get().unwrap();
            (c, n)
        })
        .find(|(_, n)| n == name)
        .unwrap_or_else(|| panic!("no connection landed on {name} in 100 tries"))
        .0
}

fn wait_all_up(lab: &Lab) {
    for a in ["192.0.2.11:80", "192.0.2.12:80", "192.0.2.13:80"] {
        wait_backend(lab, a, "in rotation", |b| b["in_rotation"] == true);
    }
    lab.wait_resolved().unwrap();
}

#[test]
fn a_failed_backend_is_taken_out_and_rejoins() {
    let mut lab = Lab::new(3).unwrap();
    lab.start_agent(&config("tcp")).unwrap();
    wait_all_up(&lab);

    // Open connections, then kill b3's server (its own connections die with it).
    let mut conns: Vec<_> = (0..18).map(|_| lab.http_connect(80).unwrap()).collect();
    let names: Vec<String> = conns.iter_mut().map(|c| c.get().unwrap()).collect();
    assert!(
        names.iter().any(|n| n == "b3") && names.iter().any(|n| n != "b3"),
        "{names:?}"
    );
    lab.backends[2].stop_server();
    wait_backend(&lab, "192.0.2.13:80", "taken out", |b| {
        b["health"] == "down" && b["in_rotation"] == false
    });
    let b = backend(&lab, "192.0.2.13:80");
    assert!(
        b["reason"]
            .as_str()
            .unwrap()
            .contains("failed probes: connect"),
        "{b}"
    );

    let after = tally((0..40).map(|i| {
        lab.http_get(80)
            .unwrap_or_else(|e| panic!("connection {i}: {e:#}"))
    }));
    assert!(
        !after.contains_key("b3"),
        "new connections still reach the dead backend: {after:?}"
    );
    assert_eq!(after.len(), 2, "{after:?}");
    // Open connections to the others are untouched.
    for (c, n) in conns.iter_mut().zip(&names).filter(|(_, n)| *n != "b3") {
        assert_eq!(
            &c.get().unwrap(),
            n,
            "an open connection to {n} was disturbed"
        );
    }

    lab.backends[2].start_server().unwrap();
    wait_backend(&lab, "192.0.2.13:80", "back in rotation", |b| {
        b["health"] == "up" && b["in_rotation"] == true
    });
    let back = tally((0..60).map(|_| lab.http_get(80).unwrap()));
    assert!(
        back.contains_key("b3"),
        "the recovered backend gets no new flows: {back:?}"
    );
}

#[test]
fn http_probe_against_a_backend_answering_500_takes_it_out() {
    let mut lab = Lab::new(3).unwrap();
    lab.start_agent(&config("http/healthz")).unwrap();
    wait_all_up(&lab);
    lab.backends[1].start_server_with_health(500).unwrap();
    wait_backend(&lab, "192.0.2.12:80", "down on HTTP 500", |b| {
        b["health"] == "down"
    });
    let b = backend(&lab, "192.0.2.12:80");
    assert!(b["reason"].as_str().unwrap().contains("HTTP 500"), "{b}");
    assert_eq!(b["last_probe"]["detail"], "HTTP 500", "{b}");
    let after = tally((0..40).map(|_| lab.http_get(80).unwrap()));
    assert!(!after.contains_key("b2"), "{after:?}");
}

#[test]
fn drain_lets_open_connections_finish_and_takes_no_new_flows() {
    let mut lab = Lab::new(3).unwrap();
    lab.start_agent(&config("tcp")).unwrap();
    wait_all_up(&lab);
    // An open connection on b2.
    let mut on_b2 = connection_on(&lab, "b2");
    lab.lb(&["backend", "drain", WEB, "192.0.2.12"]).unwrap();
    let b = backend(&lab, "192.0.2.12:80");
    assert_eq!(
        (
            b["drained"].clone(),
            b["in_rotation"].clone(),
            b["reason"].clone()
        ),
        (true.into(), false.into(), "drained".into()),
        "{b}"
    );
    assert!(
        b["flows"].as_u64().unwrap() >= 1,
        "the open connection is tracked: {b}"
    );
    let after = tally((0..40).map(|_| lab.http_get(80).unwrap()));
    assert!(
        !after.contains_key("b2"),
        "a drained backend got new flows: {after:?}"
    );
    for _ in 0..3 {
        assert_eq!(
            on_b2.get().unwrap(),
            "b2",
            "the open connection must complete on b2"
        );
    }
    lab.lb(&["backend", "undrain", WEB, "192.0.2.12"]).unwrap();
    let back = tally((0..60).map(|_| lab.http_get(80).unwrap()));
    assert!(back.contains_key("b2"), "{back:?}");
}

#[test]
fn weights_one_to_three_give_about_one_to_three_of_new_flows() {
    let mut lab = Lab::new(2).unwrap();
    lab.start_agent(&format!("[[service]]\nvip = \"{WEB}\"\nbackends = [\"192.0.2.11\", \"192.0.2.12\"]\ntable_size = 4093\n")).unwrap();
    lab.wait_resolved().unwrap();
    lab.lb(&["backend", "set-weight", WEB, "192.0.2.12", "3"])
        .unwrap();
    // The table share is exact (within Maglev's 1 %) ...
    let share = backend(&lab, "192.0.2.12:80")["share"].as_f64().unwrap();
    assert!((share - 0.75).abs() <= 0.01, "share {share}");
    // ... and 400 random source ports follow it (b2 ~ Binomial(400, 0.75): mean 300, sd 8.7;
    // the bounds are 4.6 sd away).
    let t = tally((0..400).map(|_| lab.http_get(80).unwrap()));
    let b2 = t.get("b2").copied().unwrap_or(0);
    assert!((260..=340).contains(&b2), "weights 1:3 gave {t:?}");
}

#[test]
fn an_added_backend_gets_a_fair_share_and_moves_no_established_flow() {
    let mut lab = Lab::new(4).unwrap();
    lab.start_agent(&format!("[[service]]\nvip = \"{WEB}\"\nbackends = [\"192.0.2.11\", \"192.0.2.12\", \"192.0.2.13\"]\ntable_size = 4093\n")).unwrap();
    lab.wait_resolved().unwrap();
    let mut conns: Vec<_> = (0..15).map(|_| lab.http_connect(80).unwrap()).collect();
    let names: Vec<String> = conns.iter_mut().map(|c| c.get().unwrap()).collect();
    lab.lb(&["backend", "add", WEB, "192.0.2.14"]).unwrap();
    lab.wait_resolved().unwrap();
    let share = backend(&lab, "192.0.2.14:80")["share"].as_f64().unwrap();
    assert!(
        (share - 0.25).abs() <= 0.01,
        "the new backend's share is {share}"
    );
    for (c, n) in conns.iter_mut().zip(&names) {
        assert_eq!(&c.get().unwrap(), n, "an established flow moved");
    }
    // b4 ~ Binomial(160, 0.25): mean 40, sd 5.5; the bounds are 3.6 sd away.
    let t = tally((0..160).map(|_| lab.http_get(80).unwrap()));
    let b4 = t.get("b4").copied().unwrap_or(0);
    assert!((20..=60).contains(&b4), "{t:?}");
}

#[test]
fn cli_changes_survive_an_agent_restart() {
    let mut lab = Lab::new(3).unwrap();
    lab.start_agent(&format!(
        "[[service]]\nvip = \"{WEB}\"\nbackends = [\"192.0.2.11\"]\ntable_size = 251\n"
    ))
    .unwrap();
    lab.lb(&[
        "vip",
        "add",
        "203.0.113.10:53/udp",
        "--table-size",
        "251",
        "--probe",
        "tcp:80",
        "--probe-interval",
        "200ms",
        "--probe-timeout",
        "100ms",
    ])
    .unwrap();
    lab.lb(&["backend", "add", "203.0.113.10:53/udp", "192.0.2.12"])
        .unwrap();
    lab.lb(&["backend", "add", WEB, "192.0.2.12", "--weight", "3"])
        .unwrap();
    lab.lb(&["backend", "add", WEB, "192.0.2.13"]).unwrap();
    lab.lb(&["backend", "drain", WEB, "192.0.2.13"]).unwrap();
    let before = lab.lb_json(&["vip", "list"]).unwrap();

    lab.restart_agent().unwrap();
    let after = lab.lb_json(&["vip", "list"]).unwrap();
    let services = |v: &Value| {
        v["vips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["service"].to_string(),
                    s["probe"].to_string(),
                    s["probe_interval"].to_string(),
                )
            })
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        services(&after),
        services(&before),
        "services after restart"
    );
    let b12 = backend(&lab, "192.0.2.12:80");
    let b13 = backend(&lab, "192.0.2.13:80");
    assert_eq!(
        (b12["weight"].clone(), b13["drained"].clone()),
        (3.into(), true.into()),
        "{b12} {b13}"
    );
    lab.wait_resolved().unwrap();
    let t = tally((0..30).map(|_| lab.http_get(80).unwrap()));
    assert!(!t.contains_key("b3") && t.contains_key("b2"), "{t:?}");
    // The UDP service came back with its probe and answers.
    wait_until(
        "the udp backend to be probed up",
        Duration::from_secs(10),
        Duration::from_millis(25),
        || {
            lab.lb_json(&["backend", "list", "203.0.113.10:53/udp"])
                .is_ok_and(|l| l["backends"][0]["in_rotation"] == true)
        },
    )
    .unwrap();
    assert_eq!(lab.udp_ask(53, "after-restart").unwrap(), "b2");
}

/// `lb backend admin`: `up` keeps a backend whose probes fail in rotation (it still serves),
/// `down` takes a healthy one out while its open connection goes on, `none` hands both back
/// to the probes.
#[test]
fn admin_state_overrides_the_probes_both_ways() {
    let mut lab = Lab::new(3).unwrap();
    lab.start_agent(&config("http/healthz")).unwrap();
    wait_all_up(&lab);
    // b2's health check fails, its service does not.
    lab.backends[1].start_server_with_health(500).unwrap();
    wait_backend(&lab, "192.0.2.12:80", "down on HTTP 500", |b| {
        b["health"] == "down"
    });
    lab.lb(&["backend", "admin", WEB, "192.0.2.12", "up"])
        .unwrap();
    wait_backend(&lab, "192.0.2.12:80", "admin up", |b| {
        b["in_rotation"] == true && b["admin"] == "up" && b["health"] == "down"
    });
    let with_b2 = tally((0..60).map(|_| lab.http_get(80).unwrap()));
    assert!(with_b2.contains_key("b2"), "admin up: {with_b2:?}");
    // b3 is healthy: an open connection on it, then admin down.
    let mut on_b3 = connection_on(&lab, "b3");
    lab.lb(&["backend", "admin", WEB, "192.0.2.13", "down"])
        .unwrap();
    let b3 = backend(&lab, "192.0.2.13:80");
    assert_eq!(
        (b3["admin"].clone(), b3["in_rotation"].clone()),
        ("down".into(), false.into()),
        "{b3}"
    );
    let without_b3 = tally((0..40).map(|_| lab.http_get(80).unwrap()));
    assert!(!without_b3.contains_key("b3"), "admin down: {without_b3:?}");
    assert_eq!(on_b3.get().unwrap(), "b3", "its open connection goes on");
    for b in ["192.0.2.12", "192.0.2.13"] {
        lab.lb(&["backend", "admin", WEB, b, "none"]).unwrap();
    }
    wait_backend(&lab, "192.0.2.12:80", "back to its probes", |b| {
        b["in_rotation"] == false && b["admin"] == "none"
    });
    wait_backend(&lab, "192.0.2.13:80", "back to its probes", |b| {
        b["in_rotation"] == true
    });
    let list = lab.lb_json(&["backend", "list", WEB]).unwrap();
    assert!(
        list["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["admin"] == "none"),
        "{list}"
    );
}

/// The default `established = auto`: when a probed backend goes down, its established TCP
/// connection goes on (a move would reset it), while its UDP flow moves to a healthy backend.
/// The backend's probes are blocked at the backend (from the LB's own address only), so its
/// server and the client's connection are untouched.
#[test]
fn when_a_backend_goes_down_tcp_stays_and_udp_moves() {
    let mut lab = Lab::new(2).unwrap();
    lab.start_agent(
        r#"
[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11", "192.0.2.12"]
table_size = 251
probe = "tcp"
probe_interval = "100ms"
probe_timeout = "100ms"
unhealthy_after = 2

[[service]]
vip = "203.0.113.10:53/udp"
backends = ["192.0.2.11", "192.0.2.12"]
table_size = 251
probe = "tcp:80"
probe_interval = "100ms"
probe_timeout = "100ms"
unhealthy_after = 2
"#,
    )
    .unwrap();
    lab.wait_ready().unwrap();
    let mut tcp = connection_on(&lab, "b2");
    let udp = (0..100)
        .map(|i| {
            let f = lab.udp_flow(53).unwrap();
            let n = f.ask(&format!("q{i}")).unwrap();
            (f, n)
        })
        .find(|(_, n)| n == "b2")
        .expect("no UDP flow landed on b2 in 100 tries")
        .0;
    // b2 drops the LB's probes (they come from 192.0.2.1), nothing else.
    let b2 = &lab.backends[1].ns;
    b2.exec("nft", &["add", "table", "ip", "probes"]).unwrap();
    b2.exec(
        "nft",
        &["add chain ip probes in { type filter hook input priority 0; }"],
    )
    .unwrap();
    b2.exec(
        "nft",
        &[
            "add",
            "rule",
            "ip",
            "probes",
            "in",
            "ip",
            "saddr",
            "192.0.2.1",
            "drop",
        ],
    )
    .unwrap();
    wait_backend(&lab, "192.0.2.12:80", "down", |b| b["health"] == "down");
    wait_until(
        "the UDP service's b2 down",
        Duration::from_secs(15),
        Duration::from_millis(25),
        || {
            lab.lb_json(&["backend", "list", "203.0.113.10:53/udp"])
                .is_ok_and(|l| {
                    l["backends"]
                        .as_array()
                        .is_some_and(|bs| bs.iter().any(|b| b["health"] == "down"))
                })
        },
    )
    .unwrap();
    assert_eq!(tcp.get().unwrap(), "b2", "the TCP connection stays");
    // The UDP flow's entry is purged off the writer loop: it moves once that is done.
    wait_until(
        "the UDP flow to move",
        Duration::from_secs(15),
        Duration::from_millis(25),
        || udp.ask("again").is_ok_and(|n| n == "b1"),
    )
    .unwrap();
}
