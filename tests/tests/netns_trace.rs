//! `lb trace` end to end: a forwarded packet shows with its backend, one trace at a time, the
//! rate bound holds and what it refused is counted, and the agent turns sampling off after.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use lb_integration::{
    lab::{Lab, workspace_bin},
    wait_until,
};

const CONFIG: &str = r#"
[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11"]
table_size = 251

[[service]]
vip = "203.0.113.10:53/udp"
backends = ["192.0.2.11"]
table_size = 251
"#;

fn trace_state(lab: &Lab) -> String {
    lab.lb_json(&["status"]).unwrap()["trace"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Starts `lb trace ARGS -o json` in the background and waits until the agent has sampling on.
fn start_trace(lab: &Lab, args: &[&str]) -> std::process::Child {
    let child = Command::new(workspace_bin("lb").unwrap())
        .arg("--socket")
        .arg(&lab.socket)
        .arg("trace")
        .args(args)
        .args(["-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        "tracing to be on",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || trace_state(lab).starts_with("on"),
    )
    .unwrap();
    child
}

/// The trace's JSON lines, its records and its closing summary.
fn finish(child: std::process::Child) -> (Vec<serde_json::Value>, serde_json::Value) {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut lines: Vec<serde_json::Value> = BufReader::new(&out.stdout[..])
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let summary = lines.pop().expect("a summary line");
    assert_eq!(summary["result"], "done", "{summary}");
    (lines, summary)
}

#[test]
fn lb_trace_shows_a_forwarded_packet_with_its_backend() {
    let mut lab = Lab::new(1).unwrap();
    lab.start_agent(CONFIG).unwrap();
    lab.wait_ready().unwrap();
    assert_eq!(trace_state(&lab), "off");
    let child = start_trace(
        &lab,
        &[
            "--vip",
            "203.0.113.10",
            "--port",
            "80",
            "-c",
            "2",
            "--seconds",
            "20",
        ],
    );
    // One trace at a time.
    let e = lab
        .lb(&["trace", "--seconds", "1", "-c", "1"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("an lb trace") && e.contains("already exists"),
        "{e}"
    );
    assert_eq!(lab.http_get(80).unwrap(), "b1");
    let (records, summary) = finish(child);
    assert_eq!(summary["records"], 2, "{summary}");
    // The client's SYN: to the VIP as it arrived, to the backend as it left.
    let syn = &records[0];
    assert_eq!(syn["reason"], "forward", "{syn}");
    assert_eq!(syn["interface"], "l0", "{syn}");
    let before = syn["before"].as_str().unwrap();
    let after = syn["after"].as_str().unwrap();
    assert!(before.ends_with("> 203.0.113.10:80 tcp"), "{syn}");
    assert!(after.ends_with("> 192.0.2.11:80 tcp"), "{syn}");
    // The backend's SYN-ACK: from the backend as it arrived, from the VIP as it left.
    let reply = &records[1];
    assert_eq!(reply["reason"], "reply", "{reply}");
    assert!(
        reply["before"]
            .as_str()
            .unwrap()
            .starts_with("192.0.2.11:80 >"),
        "{reply}"
    );
    assert!(
        reply["after"]
            .as_str()
            .unwrap()
            .starts_with("203.0.113.10:80 >"),
        "{reply}"
    );
    // The trace turned sampling off when it ended.
    assert_eq!(trace_state(&lab), "off");
}

/// `lb trace --vip` with an IPv6 VIP: the IPv6 programs' records (written by `lb_trace6`)
/// show the packet as it arrived and as it left, in IPv6 form; IPv4 traffic to the IPv4 VIP
/// on the same port is not selected.
#[test]
fn lb_trace_shows_an_ipv6_packet_with_its_backend_and_no_ipv4_one() {
    let mut lab = Lab::new(1).unwrap();
    lab.start_agent(&format!(
        "{CONFIG}\n[[service]]\nvip = \"[2001:db8:3::10]:80/tcp\"\nbackends = [\"2001:db8:2::11\"]\ntable_size = 251\n"
    ))
    .unwrap();
    lab.wait_ready().unwrap();
    let child = start_trace(
        &lab,
        &[
            "--vip",
            "2001:db8:3::10",
            "--port",
            "80",
            "-c",
            "2",
            "--seconds",
            "20",
        ],
    );
    // IPv4 first: to port 80 too, but not to the traced VIP.
    assert_eq!(lab.http_get(80).unwrap(), "b1");
    assert_eq!(lab.http_get6(80).unwrap(), "b1");
    let (records, summary) = finish(child);
    assert_eq!(summary["records"], 2, "{summary}");
    assert_eq!(summary["undecoded"], 0, "{summary}");
    let syn = &records[0];
    assert_eq!(syn["reason"], "forward", "{syn}");
    assert_eq!(syn["interface"], "l0", "{syn}");
    assert!(
        syn["before"]
            .as_str()
            .unwrap()
            .starts_with("[2001:db8:1::2]:"),
        "{syn}"
    );
    assert!(
        syn["before"]
            .as_str()
            .unwrap()
            .ends_with("> [2001:db8:3::10]:80 tcp"),
        "{syn}"
    );
    assert!(
        syn["after"]
            .as_str()
            .unwrap()
            .ends_with("> [2001:db8:2::11]:80 tcp"),
        "{syn}"
    );
    let reply = &records[1];
    assert_eq!(reply["reason"], "reply", "{reply}");
    assert!(
        reply["before"]
            .as_str()
            .unwrap()
            .starts_with("[2001:db8:2::11]:80 >"),
        "{reply}"
    );
    assert!(
        reply["after"]
            .as_str()
            .unwrap()
            .starts_with("[2001:db8:3::10]:80 >"),
        "{reply}"
    );
    assert_eq!(trace_state(&lab), "off");
}

#[test]
fn lb_trace_is_bounded_in_rate_and_counts_what_it_left_out() {
    let mut lab = Lab::new(1).unwrap();
    lab.start_agent(CONFIG).unwrap();
    lab.wait_ready().unwrap();
    // One record per second per CPU, for a 2-second window of 20 UDP exchanges (40 packets
    // to or from 53/udp).
    let child = start_trace(&lab, &["--port", "53", "--rate", "1", "--seconds", "2"]);
    for i in 0..20 {
        assert_eq!(lab.udp_ask(53, &format!("q{i}")).unwrap(), "b1");
    }
    let (records, summary) = finish(child);
    let n = records.len() as u64;
    assert_eq!(summary["records"], n);
    // Two CPUs, a burst of one each, and at most one more each per second of the window.
    assert!((1..=6).contains(&n), "{n} records: {summary}");
    let lost = summary["lost_rate"].as_u64().unwrap();
    assert!(
        n + lost >= 40,
        "every selected packet is a record or counted: {summary}"
    );
    assert_eq!(summary["lost_ring"], 0, "{summary}");
    assert_eq!(trace_state(&lab), "off");
}
