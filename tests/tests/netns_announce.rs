//! Announcing VIPs (`lb_userspace::announce`), end to end in the lab: the agent's host routes
//! in its announce table follow the backends' health (withdrawn when a VIP has no backend in
//! rotation, announced again when one comes back), `lb status` shows them, `kill -9` leaves
//! them (the data plane keeps serving), the next agent keeps the routes still wanted without
//! a gap and removes the rest, and a plain stop withdraws them all before its drain, while
//! the VIPs are still served.

use std::time::Duration;

use lb_integration::{lab::Lab, wait_until};

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

#[test]
fn vips_are_announced_while_they_can_be_served_and_withdrawn_before_a_plain_stop() {
    let mut lab = Lab::new(2).unwrap();
    lab.start_agent(CONFIG).unwrap();
    lab.wait_ready().unwrap();
    wait_table(
        &lab,
        &["203.0.113.10", "203.0.113.11"],
        "both VIPs announced",
    );
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
    // here; the test ends it with kill -9).
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
    lab.kill_agent().unwrap();
}
