//! HA ports end to end: an internal VIP's `ADDR:0/any` balances every TCP and UDP port to its
//! backends and keeps the port; an exact service on the same VIP wins.

use std::{collections::BTreeSet, net::Ipv4Addr};

use lb_integration::lab::Lab;

const HA_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);

const CONFIG: &str = r#"
[[service]]
vip = "203.0.113.20:0/any"
backends = ["192.0.2.11", "192.0.2.12"]
table_size = 251
internal = ["198.51.100.0/24"]

[[service]]
vip = "203.0.113.20:8080/tcp"
backends = ["192.0.2.13:80"]
table_size = 251
internal = ["198.51.100.0/24"]
"#;

#[test]
fn ha_ports_reach_the_backends_on_every_port_with_the_port_kept() {
    let mut lab = Lab::new(3).unwrap();
    // b1 and b2 serve several ports of each protocol; only the port a flow kept answers it.
    for b in &mut lab.backends[..2] {
        b.start_server_on(200, &[80, 5432, 8080], &[53, 5353])
            .unwrap();
    }
    lab.start_agent(CONFIG).unwrap();
    lab.wait_ready().unwrap();
    let vips = lab.lb_json(&["vip", "list"]).unwrap();
    assert!(
        vips["vips"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["service"] == "203.0.113.20:0/any"),
        "{vips}"
    );
    for port in [80u16, 5432] {
        let seen: BTreeSet<String> = (0..20)
            .map(|i| {
                lab.http_get_at(HA_VIP, port)
                    .unwrap_or_else(|e| panic!(":{port} request {i}: {e:#}\n{}", lab.agent_log()))
            })
            .collect();
        assert_eq!(
            seen,
            BTreeSet::from(["b1".to_owned(), "b2".to_owned()]),
            "TCP :{port}"
        );
    }
    for port in [53u16, 5353] {
        let seen: BTreeSet<String> = (0..20)
            .map(|i| {
                lab.udp_flow_at(HA_VIP, port)
                    .unwrap()
                    .ask(&format!("q{i}"))
                    .unwrap_or_else(|e| panic!("UDP :{port} {i}: {e:#}"))
            })
            .collect();
        assert_eq!(
            seen,
            BTreeSet::from(["b1".to_owned(), "b2".to_owned()]),
            "UDP :{port}"
        );
    }
    // 8080/tcp is an exact service on the same VIP: it wins over the catch-all (b1 and b2 also
    // listen on 8080, and would answer if the catch-all took it).
    for _ in 0..5 {
        assert_eq!(lab.http_get_at(HA_VIP, 8080).unwrap(), "b3");
    }
    // A public VIP cannot have HA ports.
    let e = lab
        .lb(&["vip", "add", "203.0.113.21:0/any"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("internal VIPs only"), "{e}");
}
