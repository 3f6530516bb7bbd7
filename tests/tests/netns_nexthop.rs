//! Next hops follow the kernel as it changes, through the netlink events the agent subscribes
//! to. The agent runs with a one-hour resync interval, so the periodic safety net cannot be
//! what moved them.

use std::{collections::BTreeSet, time::Duration};

use lb_integration::lab::{DEMO_CONFIG, Lab};

/// The destination MAC the agent wrote for one backend of the web service.
fn dmac_of(lab: &Lab, backend: &str) -> Option<String> {
    let list = lab
        .lb_json(&["backend", "list", "203.0.113.10:80/tcp"])
        .ok()?;
    list["backends"]
        .as_array()?
        .iter()
        .find(|b| b["backend"] == backend)?["next_hop"]["dmac"]
        .as_str()
        .map(str::to_owned)
}

/// A backend moves to another MAC address and the LB's kernel learns it (as from the
/// gratuitous ARP a moved VM sends): the agent rewrites that backend's entry at once, and
/// traffic reaches the backend at its new address.
#[test]
fn a_backend_mac_change_is_followed_without_waiting_for_the_resync() {
    let mut lab = Lab::new(3).unwrap();
    lab.start_agent_with(DEMO_CONFIG, &["--resync-interval", "3600"])
        .unwrap();
    lab.wait_ready().unwrap();
    let old = dmac_of(&lab, "192.0.2.11:80").expect("b1 resolved");
    // A documentation MAC (RFC 7042), unicast.
    let new = "00:00:5e:00:53:11";
    assert_ne!(old, new);
    lab.backends[0]
        .ns
        .ip(&["link", "set", "dev", "eth0", "address", new])
        .unwrap();
    lab.lb
        .ip(&[
            "neigh",
            "replace",
            "192.0.2.11",
            "lladdr",
            new,
            "dev",
            "l1",
            "nud",
            "reachable",
        ])
        .unwrap();
    lb_integration::wait_until(
        "b1's next hop to follow the neighbour change",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || dmac_of(&lab, "192.0.2.11:80").as_deref() == Some(new),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.agent_log()));
    // Frames to the old MAC would be dropped by b1's stack; new connections reach it.
    let names: BTreeSet<String> = (0..40)
        .map(|i| {
            lab.http_get(80)
                .unwrap_or_else(|e| panic!("request {i}: {e:#}\n{}", lab.agent_log()))
        })
        .collect();
    assert!(
        names.contains("b1"),
        "b1 unreachable at its new MAC: {names:?}"
    );
    // Only b1's entry moved.
    assert_ne!(dmac_of(&lab, "192.0.2.12:80").as_deref(), Some(new));
}
