//! Scale-out, end to end in the lab. Announcing VIPs (`lb_userspace::announce`): the agent's host routes
//! in its announce table follow the backends' health (withdrawn when a VIP has no backend in
//! rotation, announced again when one comes back), `lb status` shows them, `kill -9` leaves
//! them (the data plane keeps serving), the next agent keeps the routes still wanted without
//! a gap and removes the rest, and a plain stop withdraws them all before its drain, while
//! the VIPs are still served; a router's BIRD learns them over BGP from the example config.
//! The same answer everywhere: two nodes given the same config report the same table
//! fingerprints and send the same flow to the same backend, and a restarted node converges
//! to its fingerprints again.

use std::time::Duration;

use lb_integration::{
    lab::{CLIENT_IP, IO_TIMEOUT, Lab, cluster::Bird},
    wait_until,
};

/// A table of the test's own, not the default, to show the setting is followed.
const TABLE: &str = "19600";

const CONFIG: &str = r#"
[agent]
announce_table = 19600

[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11", "192.0.2.12"]
probe = "http/healthz"
probe_interval = "100ms"
probe_timeout = "100ms"

[[service]]
vip = "203.0.113.11:53/udp"
backends = ["192.0.2.11"]
"#;

/// The VIP addresses with one of the agent's routes in the table, as `ip` shows them.
fn table(lab: &Lab) -> Vec<String> {
    let out = lab
        .lb
        .ip(&["route", "show", "table", TABLE, "proto", "76"])
        .unwrap();
    let mut v: Vec<String> = out
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(w.first(), Some(&"blackhole"), "{l}");
            w[1].to_owned()
        })
        .collect();
    v.sort();
    v
}

fn wait_table(lab: &Lab, want: &[&str], what: &str) {
    wait_until(
        what,
        Duration::from_secs(10),
        Duration::from_millis(25),
        || table(lab) == want,
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", table(lab), lab.agent_log()));
}

/// A lab of two backends with the agent on `config`, both VIPs announced.
fn announcing(config: &str) -> Lab {
    let mut lab = Lab::new(2).unwrap();
    lab.start_agent(config).unwrap();
    lab.wait_ready().unwrap();
    wait_table(
        &lab,
        &["203.0.113.10", "203.0.113.11"],
        "both VIPs announced",
    );
    lab
}

#[test]
fn vips_are_announced_while_they_can_be_served_and_withdrawn_before_a_plain_stop() {
    let mut lab = announcing(CONFIG);
    let status = lab.lb_json(&["status"]).unwrap();
    assert_eq!(status["announce_table"], 19600, "{status}");
    assert_eq!(
        status["announced"],
        serde_json::json!(["203.0.113.10", "203.0.113.11"])
    );
    let text = lab.lb(&["status"]).unwrap();
    assert!(
        text.contains("announced  203.0.113.10, 203.0.113.11 (table 19600)"),
        "{text}"
    );

    // Every backend of 203.0.113.10 down: withdrawn; the other VIP stays.
    for b in &mut lab.backends {
        b.stop_server();
    }
    wait_table(&lab, &["203.0.113.11"], "203.0.113.10 withdrawn");
    // One back: announced again.
    lab.backends[1].start_server().unwrap();
    wait_table(
        &lab,
        &["203.0.113.10", "203.0.113.11"],
        "203.0.113.10 announced again",
    );
    lab.backends[0].start_server().unwrap();

    // kill -9: the routes stay, as the data plane keeps serving.
    lab.kill_agent().unwrap();
    assert_eq!(table(&lab), ["203.0.113.10", "203.0.113.11"]);
    assert_eq!(lab.http_get(80).map(|_| ()).ok(), Some(()));
    // The next agent, its config without the UDP service: that VIP's route goes, the
    // other's stays (its probed backends start up from the live table: no withdrawal).
    let without_udp = CONFIG
        .split("\n[[service]]\nvip = \"203.0.113.11")
        .next()
        .unwrap();
    lab.start_agent_with(without_udp, &["--announce-drain", "300s"])
        .unwrap();
    lab.wait_ready().unwrap();
    wait_table(&lab, &["203.0.113.10"], "the removed VIP's route gone");
    let log = lab.agent_log();
    assert!(
        log.lines()
            .any(|l| l.contains("VIP withdrawn") && l.contains("203.0.113.11")),
        "{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("VIP withdrawn") && l.contains("203.0.113.10")),
        "the kept VIP was withdrawn on the way: {log}"
    );

    // A plain stop: the routes go first, and the agent keeps serving through its drain (300 s
    // here; the test ends it with a second SIGTERM).
    lab.signal_agent(libc::SIGTERM).unwrap();
    wait_table(&lab, &[], "everything withdrawn on a plain stop");
    // Still running: it answers, announcing nothing.
    let status = lab.lb_json(&["status"]).unwrap();
    assert_eq!(status["announced"], serde_json::json!([]), "{status}");
    let served = lab.http_get(80);
    assert!(served.is_ok(), "not served during the drain: {served:?}");
    assert!(
        lab.agent_log()
            .contains("stopping: VIPs withdrawn; draining"),
        "{}",
        lab.agent_log()
    );
    // A second SIGTERM cuts the 300 s drain short: the lab waits 10 s at most for the exit.
    let exit = lab.stop_agent().unwrap();
    assert!(exit.success(), "{exit}");
    wait_until(
        "the agent's log says why it stopped early",
        Duration::from_secs(5),
        Duration::from_millis(25),
        || {
            lab.agent_log()
                .contains("a second signal: the drain cut short")
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}", lab.agent_log()));
}

/// The agent's routes (protocol 76) in every table of the LB namespace, as "TABLE ADDRESS".
fn ours_anywhere(lab: &Lab) -> Vec<String> {
    let out = lab
        .lb
        .ip(&["-j", "route", "show", "table", "all", "proto", "76"])
        .unwrap();
    let routes: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut v: Vec<String> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["table"].as_str().unwrap_or("main"),
                r["dst"].as_str().unwrap()
            )
        })
        .collect();
    v.sort();
    v
}

/// An agent started with another `announce_table` than its predecessor (killed, so its
/// routes stayed) moves the announcements: the old table loses the agent's routes (and only
/// those), the new one gets them; one started with announcing off leaves none anywhere.
#[test]
fn a_changed_announce_table_takes_the_announcements_along() {
    let mut lab = announcing(CONFIG);
    lab.kill_agent().unwrap();
    // Someone else's route in the old table stays.
    lab.lb
        .ip(&[
            "route",
            "add",
            "blackhole",
            "203.0.113.99/32",
            "table",
            TABLE,
        ])
        .unwrap();
    let moved = CONFIG.replace("announce_table = 19600", "announce_table = 19601");
    lab.start_agent(&moved).unwrap();
    lab.wait_ready().unwrap();
    wait_until(
        "both VIPs announced in table 19601, none left in 19600",
        Duration::from_secs(10),
        Duration::from_millis(25),
        || ours_anywhere(&lab) == ["19601 203.0.113.10", "19601 203.0.113.11"],
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", ours_anywhere(&lab), lab.agent_log()));
    let old = lab.lb.ip(&["route", "show", "table", TABLE]).unwrap();
    assert_eq!(old.trim(), "blackhole 203.0.113.99", "table {TABLE}");

    lab.kill_agent().unwrap();
    let off = CONFIG.replace("announce_table = 19600", "announce_table = 0");
    lab.start_agent(&off).unwrap();
    lab.wait_ready().unwrap();
    // Removed before the agent answers: nothing to wait for.
    assert_eq!(
        ours_anywhere(&lab),
        Vec::<String>::new(),
        "{}",
        lab.agent_log()
    );
    let status = lab.lb_json(&["status"]).unwrap();
    assert_eq!(status["announce_table"], 0, "{status}");
    assert_eq!(status["announced"], serde_json::json!([]), "{status}");
}

/// Waits (bounded) until `router` has exactly `want`.
fn wait_router(lab: &Lab, router: &Bird, node: &Bird, want: &[&str], what: &str) {
    wait_until(
        what,
        Duration::from_secs(30),
        Duration::from_millis(100),
        || router.routes() == want,
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: the router has {:?}, the node {:?}, the table {:?}\n{}",
            router.routes(),
            node.routes(),
            table(lab),
            lab.agent_log()
        )
    });
}

/// The whole path to a router: the LB node's BIRD runs the config `lb bgp example` prints for
/// the agent's config, peers with a router's BIRD (in the client namespace, over the LB's
/// client link, BFD on both sides), and the router's table follows the agent's announcements.
#[test]
fn a_router_learns_the_announced_vips_over_bgp_from_the_example_config() {
    let mut lab = announcing(CONFIG);
    let example = std::process::Command::new(lb_integration::lab::workspace_bin("lb").unwrap())
        .args(["bgp", "example", "--config"])
        .arg(lab.tmp.join("lb.toml"))
        .args(["--router-id", "198.51.100.1", "--peer", "198.51.100.2"])
        .args(["--local-as", "64512", "--peer-as", "64513"])
        .output()
        .unwrap();
    assert!(example.status.success(), "{example:?}");
    let node_conf = String::from_utf8(example.stdout).unwrap();
    assert!(node_conf.contains("kernel table 19600;"), "{node_conf}");
    let node = Bird::start(&lab.lb, &lab.tmp, "node", &node_conf).unwrap();
    let router = Bird::start(
        &lab.client,
        &lab.tmp,
        "router",
        r#"log stderr all;
router id 198.51.100.2;
protocol device {}
protocol bfd { interface "*" { min rx interval 100 ms; min tx interval 100 ms; }; }
protocol bgp lb1 {
	local as 64513;
	neighbor 198.51.100.1 as 64512;
	bfd on;
	ipv4 { import all; export none; };
}
"#,
    )
    .unwrap();
    wait_router(
        &lab,
        &router,
        &node,
        &["203.0.113.10", "203.0.113.11"],
        "the router learns both VIPs",
    );
    for b in &mut lab.backends {
        b.stop_server();
    }
    wait_router(
        &lab,
        &router,
        &node,
        &["203.0.113.11"],
        "the router loses the VIP with nothing in rotation",
    );
    lab.backends[0].start_server().unwrap();
    wait_router(
        &lab,
        &router,
        &node,
        &["203.0.113.10", "203.0.113.11"],
        "and learns it again",
    );
    // A plain stop withdraws both before the agent goes.
    lab.stop_agent().unwrap();
    wait_router(
        &lab,
        &router,
        &node,
        &[],
        "a stopped node announces nothing",
    );
    drop(node);
}

/// Each service's table fingerprint, from `lb vip list -o json`.
fn fingerprints(lab: &Lab) -> Vec<(String, String)> {
    let l = lab.lb_json(&["vip", "list"]).unwrap();
    l["vips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["service"].as_str().unwrap().to_owned(),
                v["table_fingerprint"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{v}"))
                    .to_owned(),
            )
        })
        .collect()
}

/// The backend that serves a connection from the client's `sport` to the VIP's port 80.
fn served_by(lab: &Lab, sport: u16) -> String {
    let mut c = lab
        .http_connect_between(
            std::net::SocketAddrV4::new(CLIENT_IP, sport),
            std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(203, 0, 113, 10), 80),
            IO_TIMEOUT,
        )
        .unwrap();
    let name = c.get().unwrap();
    c.close().unwrap();
    name
}

/// Two nodes (two labs) given the same config: the same fingerprints in `lb vip list` and
/// `lb status`, and the same backend for each of 24 flows sent to each node directly; a
/// node restarted after `kill -9` reports the same fingerprints again.
#[test]
fn nodes_with_the_same_config_give_every_flow_the_same_backend() {
    let config = format!(
        "{CONFIG}\n[[service]]\nvip = \"203.0.113.10:8080/tcp\"\nbackends = [\"192.0.2.12\", \"192.0.2.11\"]\n"
    );
    let mut labs: Vec<Lab> = (0..2).map(|_| announcing(&config)).collect();
    let f0 = fingerprints(&labs[0]);
    assert_eq!(f0.len(), 3, "{f0:?}");
    assert_eq!(f0, fingerprints(&labs[1]));
    let status = labs[0].lb(&["status"]).unwrap();
    for (svc, f) in &f0 {
        assert!(
            status.contains(&format!("{svc}   table fingerprint {f}")),
            "{svc}: {status}"
        );
    }
    // The same flow, sent to each node directly, reaches the same backend, and flows spread
    // over both backends.
    let mut seen = std::collections::BTreeSet::new();
    for sport in 42_000..42_024 {
        let a = served_by(&labs[0], sport);
        assert_eq!(a, served_by(&labs[1], sport), "client port {sport}");
        seen.insert(a);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // A restarted node converges to the same fingerprints.
    labs[1].kill_agent().unwrap();
    labs[1].start_agent(&config).unwrap();
    labs[1].wait_ready().unwrap();
    assert_eq!(fingerprints(&labs[1]), f0);
}
