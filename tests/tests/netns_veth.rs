//! veth deployments: the lab's peers run no XDP program (only GRO on), so echo replies and
//! every flow work because the agent redirects where `XDP_TX` would wait; a peer that cannot
//! receive at all (GRO off, no program) is named with its fix at attach, and the frames lost
//! into it are counted per interface instead of passing for `forward`.

use std::time::Duration;

use lb_integration::lab::{Lab, VIP};

const CONFIG: &str = r#"
[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11"]
table_size = 251
"#;

/// `lb stats -o json`'s lost frames of interface `dev`: (redirect, tx).
fn lost(lab: &Lab, dev: &str) -> (u64, u64) {
    let s = lab.lb_json(&["stats"]).unwrap();
    let x = s["xmit_failures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["interface"] == dev)
        .unwrap_or_else(|| panic!("no {dev} in {s}"))
        .clone();
    (x["redirect"].as_u64().unwrap(), x["tx"].as_u64().unwrap())
}

#[test]
fn a_peer_that_cannot_receive_is_named_with_its_fix_and_its_losses_are_counted() {
    let mut lab = Lab::new(1).unwrap();
    // b1's end of its veth can no longer run NAPI: no program, GRO off.
    lab.backends[0]
        .ns
        .exec("ethtool", &["-K", "eth0", "gro", "off"])
        .unwrap();
    lab.start_agent(CONFIG).unwrap();
    lab.wait_ready().unwrap();
    let log = lab.agent_log();
    let fix = format!(
        "nsenter --net=/run/netns/{} ethtool -K eth0 gro on",
        lab.backends[0].ns.name
    );
    assert!(
        log.contains(&fix),
        "the fix `{fix}` is not in the log:\n{log}"
    );
    assert!(log.contains("lb peer attach eth0"), "{log}");
    // The client's side has GRO on: nothing is said about l0.
    assert!(!log.contains("l0: its veth peer"), "{log}");
    let status = lab.lb_json(&["status"]).unwrap();
    assert_eq!(status["xmit_counting"], "on", "{status}");

    assert_eq!(lost(&lab, "l1"), (0, 0));
    let forwarded = lab.reason("forward").unwrap();
    // Every SYN is forwarded into l1 and lost there: the connects time out.
    for _ in 0..3 {
        assert!(
            lab.http_get_from(
                lb_integration::lab::CLIENT_IP,
                80,
                Duration::from_millis(300)
            )
            .is_err(),
            "a connection through a peer without NAPI cannot succeed"
        );
    }
    let (redirect, tx) = lost(&lab, "l1");
    let sent = lab.reason("forward").unwrap() - forwarded;
    assert!(sent >= 3, "the SYNs were counted as forwarded: {sent}");
    assert_eq!(
        redirect, sent,
        "every frame forwarded into l1 is counted as lost there"
    );
    assert_eq!(tx, 0);
    assert_eq!(lost(&lab, "l0"), (0, 0));
    // Status and the metrics say the same.
    let status = lab.lb_json(&["status"]).unwrap();
    let l1 = status["xmit_failures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["interface"] == "l1")
        .unwrap()
        .clone();
    assert_eq!(l1["redirect"], redirect, "{status}");
    let text = lab.lb(&["stats"]).unwrap();
    assert!(
        text.contains("frames were lost after the program sent them"),
        "{text}"
    );

    // `lb peer attach` gives the peer NAPI (GRO still off): the same connection now works.
    let lb = lb_integration::lab::workspace_bin("lb").unwrap();
    let pins = lab.pin_dir.join("peer");
    let pins = pins.to_str().unwrap();
    let peer = |verb: &str| {
        let out = lab.backends[0]
            .ns
            .command(&lb)
            .args(["peer", verb, "eth0", "--pin-dir", pins])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = peer("attach");
    assert!(ok, "{out}");
    assert!(
        out.contains("eth0: xdp_pass attached in native mode"),
        "{out}"
    );
    assert_eq!(lab.http_get(80).unwrap(), "b1");
    assert_eq!(lost(&lab, "l1").0, redirect, "nothing more was lost");
    let (ok, out) = peer("detach");
    assert!(ok, "{out}");
    // A second detach names what is missing instead of passing for success.
    let (ok, out) = peer("detach");
    assert!(
        !ok && out.contains("no attachment of `lb peer attach`"),
        "{out}"
    );
    assert!(
        lab.http_get_from(
            lb_integration::lab::CLIENT_IP,
            80,
            Duration::from_millis(300)
        )
        .is_err(),
        "detached, the peer cannot receive again"
    );
}

#[test]
fn an_agent_under_ip_netns_exec_is_refused_with_the_nsenter_fix() {
    let lab = Lab::new(0).unwrap();
    let lb = lb_integration::lab::workspace_bin("lb").unwrap();
    let pins = lab.pin_dir.join("exec");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.lb.name])
        .arg(&lb)
        .args(["agent", "--iface", "l0", "--pin-dir"])
        .arg(&pins)
        .arg("--socket")
        .arg(lab.tmp.join("exec.sock"))
        .arg("--state-file")
        .arg(lab.tmp.join("exec-state.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("is not on a bpffs") && err.contains("nsenter --net=/run/netns/NAME lb agent"),
        "{err}"
    );
}

#[test]
fn echo_replies_go_back_out_of_a_veth_whose_peer_runs_no_program() {
    let mut lab = Lab::new(1).unwrap();
    assert!(lab.peer_xdp.is_empty(), "the lab attaches no peer program");
    lab.start_agent(CONFIG).unwrap();
    lab.wait_ready().unwrap();
    let log = lab.agent_log();
    assert!(log.contains("use a redirect to it"), "{log}");
    // Each ping is answered before the next is sent: a reply that waited for the next packet
    // (XDP_TX into a veth peer without a program) would time out here.
    for i in 0..5 {
        let from = lb_integration::lab::ping(&lab.client, VIP, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("ping {i}: {e:#}"));
        assert_eq!(from, VIP);
    }
    assert_eq!(lab.reason("echo_reply").unwrap(), 5);
    assert_eq!(lost(&lab, "l0"), (0, 0));
}
