//! The data plane across agent generations. Each XDP attachment is a pinned bpf_link, so the
//! program keeps forwarding while no agent runs (after `kill -9`, or a stop with
//! `--keep-attached`); the next agent swaps its own program into the same link atomically and
//! reuses the pinned maps, so open connections keep their backends; a plain stop detaches.

use std::fmt::Write as _;

use lb_integration::lab::{HttpConn, Lab};

const CONFIG: &str = "[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.11\", \"192.0.2.12\"]\ntable_size = 251\n";

/// The VIP's web service, probed (so a new agent must also carry health over: a backend that
/// starts `Unknown` is out of rotation, which would empty the table until the first probe
/// answers), after [`OTHERS`] services on a lower address (a new agent that rebuilt everything
/// would reach the web service last, after a long window).
fn probed_config() -> String {
    let mut c = String::from(
        r#"[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11", "192.0.2.12"]
table_size = 251
probe = "tcp"
probe_interval = "1s"
probe_timeout = "1s"
"#,
    );
    for port in 1..=OTHERS {
        let _ = writeln!(
            c,
            "[[service]]\nvip = \"203.0.113.9:{port}/tcp\"\nbackends = [\"192.0.2.11\", \"192.0.2.12\"]\ntable_size = 251"
        );
    }
    c
}

/// Services besides the one the traffic uses.
const OTHERS: u16 = 300;

/// Connections held open across every step.
const HELD: usize = 200;
/// New connections that must succeed in each phase (with no agent, after each start).
const PER_PHASE: u64 = 100;

/// Every held connection answers, from the backend it had from the start.
fn check_held(held: &mut [(HttpConn, String)], when: &str) {
    for (i, (c, backend)) in held.iter_mut().enumerate() {
        let got = c
            .get()
            .unwrap_or_else(|e| panic!("held connection {i} failed {when}: {e:#}"));
        assert_eq!(&got, backend, "held connection {i} moved {when}");
    }
}

/// The issue's test: 200 open connections and a continuous stream of new ones through the VIP,
/// across a `kill -9` and restart, and across an upgrade (SIGTERM with `--keep-attached`, then
/// a new agent whose program replaces the running one through the pinned link). Zero failed or
/// reset connections, and every open connection stays on its backend.
#[test]
fn restarts_and_upgrades_under_load_drop_nothing() {
    let mut lab = Lab::new(2).unwrap();
    let config = probed_config();
    lab.start_agent_with(&config, &["--keep-attached"]).unwrap();
    lab.wait_ready().unwrap();
    let mut held: Vec<(HttpConn, String)> = (0..HELD)
        .map(|i| {
            let mut c = lab
                .http_connect(80)
                .unwrap_or_else(|e| panic!("opening held connection {i}: {e:#}"));
            let b = c.get().unwrap();
            (c, b)
        })
        .collect();
    let spread: std::collections::BTreeSet<&String> = held.iter().map(|(_, b)| b).collect();
    assert_eq!(spread.len(), 2, "held connections on both backends");
    let stream = lab.conn_stream(80).unwrap();
    stream.wait_more(PER_PHASE).unwrap();

    // kill -9: nothing of the agent's shutdown runs; the pinned link keeps forwarding.
    let first = lab.xdp_prog_id("l0").unwrap().expect("attached");
    lab.kill_agent().unwrap();
    stream.wait_more(PER_PHASE).unwrap();
    check_held(&mut held, "with no agent");
    // The restart: the new agent adopts the pinned maps while the stream runs.
    lab.start_agent_with(&config, &["--keep-attached"]).unwrap();
    let second = lab.xdp_prog_id("l0").unwrap().expect("attached");
    assert_ne!(second, first, "the restarted agent's program must run");
    stream.wait_more(PER_PHASE).unwrap();
    check_held(&mut held, "after the restart");
    lab.wait_ready().unwrap();

    // The upgrade: SIGTERM with --keep-attached leaves the data plane running; the next agent
    // swaps its program into the link (a new build is the same step: same map layout, new
    // code) and adopts the maps.
    lab.stop_agent().unwrap();
    stream.wait_more(PER_PHASE).unwrap();
    lab.start_agent(&config).unwrap();
    let third = lab.xdp_prog_id("l0").unwrap().expect("attached");
    assert_ne!(third, second, "the upgraded program must run");
    stream.wait_more(PER_PHASE).unwrap();
    check_held(&mut held, "after the upgrade");
    lab.wait_ready().unwrap();

    let tally = stream.stop();
    // Nothing was lost on the way either: a dropped SYN or segment would have been
    // retransmitted (and the connection only delayed), a lost flow reset. A segment sent
    // twice because its ACK came late (the new agent's verifier run keeps a core busy while
    // the traffic runs) is no loss: the receiver reports the duplicate. A lost ACK would
    // look like that too, so the drop counters on the way are checked as well: the LB's
    // (every drop it makes has a reason; frames the kernel refused after the program sent
    // them) and every link's.
    for ns in std::iter::once(&lab.client).chain(lab.backends.iter().map(|b| &b.ns)) {
        assert_eq!(
            ns.tcp_lost_segments().unwrap(),
            0,
            "TCP segments lost in {}",
            ns.name
        );
        assert_eq!(ns.tcp_stat("OutRsts").unwrap(), 0, "OutRsts in {}", ns.name);
    }
    let stats = lab.lb_json(&["stats"]).unwrap();
    let drops: Vec<(&String, &serde_json::Value)> = stats["reasons"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, v)| k.starts_with("drop_") && v.as_u64() != Some(0))
        .collect();
    assert!(drops.is_empty(), "the LB dropped: {drops:?}");
    for x in stats["xmit_failures"].as_array().unwrap() {
        for k in ["redirect", "tx", "aborted"] {
            assert_eq!(x[k], 0, "frames lost after the program sent them: {x}");
        }
    }
    for ns in [&lab.client, &lab.lb]
        .into_iter()
        .chain(lab.backends.iter().map(|b| &b.ns))
    {
        for (dev, rx, tx) in ns.link_drops().unwrap() {
            assert_eq!((rx, tx), (0, 0), "frames dropped on {dev} in {}", ns.name);
        }
    }
    assert!(
        tally.failures.is_empty(),
        "{} of {} new connections failed: {:?}",
        tally.failures.len(),
        tally.ok + tally.failures.len() as u64,
        &tally.failures[..tally.failures.len().min(10)]
    );
    assert_eq!(
        tally.per_backend.len(),
        2,
        "new connections on both backends: {:?}",
        tally.per_backend
    );
    eprintln!(
        "{} new connections across the restart and the upgrade, {HELD} held: no failures",
        tally.ok
    );
}

#[test]
fn the_data_plane_outlives_the_agent_and_a_plain_stop_detaches() {
    let mut lab = Lab::new(2).unwrap();
    lab.start_agent(CONFIG).unwrap();
    lab.wait_ready().unwrap();
    let mut held = lab.http_connect(80).unwrap();
    let backend = held.get().unwrap();
    let first = lab.xdp_prog_id("l0").unwrap().expect("attached");

    // kill -9: no shutdown code runs; the pinned link keeps the program on the interface.
    lab.kill_agent().unwrap();
    assert_eq!(lab.xdp_prog_id("l0").unwrap(), Some(first));
    assert_eq!(
        held.get().unwrap(),
        backend,
        "the open connection, with no agent"
    );
    for i in 0..5 {
        lab.http_get(80)
            .unwrap_or_else(|e| panic!("new connection {i} with no agent: {e}"));
    }

    // The next agent (with --keep-attached) takes the link over with its own program.
    lab.start_agent_with(CONFIG, &["--keep-attached"]).unwrap();
    lab.wait_ready().unwrap();
    let second = lab.xdp_prog_id("l0").unwrap().expect("attached");
    assert_ne!(second, first, "the new agent's program must run");
    assert_eq!(
        held.get().unwrap(),
        backend,
        "the open connection, after the takeover"
    );
    lab.http_get(80).unwrap();

    // SIGTERM with --keep-attached: the program stays, traffic flows.
    lab.stop_agent().unwrap();
    assert_eq!(lab.xdp_prog_id("l0").unwrap(), Some(second));
    assert_eq!(held.get().unwrap(), backend);
    lab.http_get(80).unwrap();

    // A plain stop detaches from every interface and removes every pin.
    lab.start_agent(CONFIG).unwrap();
    lab.wait_ready().unwrap();
    assert_eq!(held.get().unwrap(), backend);
    let probe_path = |lab: &Lab| {
        let links = lab.lb.ip(&["-o", "link", "show"]).unwrap();
        let rules: Vec<String> = ["-4", "-6"]
            .iter()
            .map(|f| lab.lb.ip(&[f, "rule", "show"]).unwrap())
            .collect();
        (links, rules)
    };
    let (links, rules) = probe_path(&lab);
    assert!(links.contains("lbprobe0"), "set up at start: {links}");
    assert!(
        rules.iter().all(|r| r.contains("lookup 19522")),
        "{rules:?}"
    );
    lab.stop_agent().unwrap();
    for dev in lab.lb_interfaces() {
        assert_eq!(
            lab.xdp_prog_id(&dev).unwrap(),
            None,
            "{dev} still has a program"
        );
    }
    assert!(
        !lab.pin_dir.exists() || std::fs::read_dir(&lab.pin_dir).unwrap().next().is_none(),
        "pins left under {}",
        lab.pin_dir.display()
    );
    // And the probe path every start sets up: the device (with its table's routes) and the
    // fwmark rules of both families.
    let (links, rules) = probe_path(&lab);
    assert!(!links.contains("lbprobe0"), "{links}");
    assert!(rules.iter().all(|r| !r.contains("19522")), "{rules:?}");
}

/// A restart with an edited config: the new agent adopts the maps, then applies only the
/// difference (a removed VIP is gone, a removed backend takes no new flow), and a connection
/// to a kept backend stays on it throughout. This also runs the deletes of the adoption
/// against the kernel's maps (a key deleted twice must not fail the start).
#[test]
fn a_restart_with_an_edited_config_applies_only_the_difference() {
    let two_vips = "[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.11\", \"192.0.2.12\"]\ntable_size = 251\n[[service]]\nvip = \"203.0.113.11:80/tcp\"\nbackends = [\"192.0.2.12\"]\ntable_size = 251\n";
    let edited = "[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.11\"]\ntable_size = 251\n";
    let mut lab = Lab::new(2).unwrap();
    lab.start_agent(two_vips).unwrap();
    lab.wait_ready().unwrap();
    let other = std::net::Ipv4Addr::new(203, 0, 113, 11);
    assert_eq!(lab.http_get_at(other, 80).unwrap(), "b2");
    // A held connection on b1 (the backend both configs keep).
    let mut held = (0..64)
        .map(|_| lab.http_connect(80).unwrap())
        .find_map(|mut c| (c.get().unwrap() == "b1").then_some(c))
        .expect("a connection on b1 in 64 tries");
    lab.kill_agent().unwrap();
    lab.start_agent(edited).unwrap();
    lab.wait_ready().unwrap();
    assert_eq!(held.get().unwrap(), "b1", "the kept connection moved");
    assert!(
        lab.http_get_at(other, 80).is_err(),
        "the removed VIP still answers"
    );
    let vips = lab.lb_json(&["vip", "list"]).unwrap();
    let names: Vec<&str> = vips["vips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["service"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["203.0.113.10:80/tcp"]);
    for i in 0..20 {
        assert_eq!(lab.http_get(80).unwrap(), "b1", "new connection {i}");
    }
    assert_eq!(held.get().unwrap(), "b1");
    assert!(
        lab.agent_log().contains("adopted the live maps"),
        "{}",
        lab.agent_log()
    );
}
