//! The data plane across agent generations. Each XDP attachment is a pinned bpf_link, so the
//! program keeps forwarding while no agent runs (after `kill -9`, or a stop with
//! `--keep-attached`); the next agent swaps its own program into the same link atomically and
//! reuses the pinned maps, so open connections keep their backends; a plain stop detaches.

use lb_integration::lab::Lab;

const CONFIG: &str = "[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.11\", \"192.0.2.12\"]\ntable_size = 251\n";

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
}
