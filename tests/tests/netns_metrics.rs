//! `lb agent --metrics`: a real scrape of the running agent after real traffic, and no TCP
//! listener at all without the flag.

use lb_integration::lab::Lab;

const CONFIG: &str = r#"[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11", "192.0.2.12"]
table_size = 251
"#;
const SERVICE: &str = "203.0.113.10:80/tcp";
const METRICS: &str = "127.0.0.1:9464";
const REQUESTS: u64 = 20;

/// One HTTP/1.1 GET of `path` from inside the LB namespace; the whole answer, head and body.
fn scrape(lab: &Lab, path: &str) -> std::io::Result<String> {
    lab.scrape(METRICS, path)
}

#[test]
fn scrape_shows_traffic_backends_and_agent_health() {
    let mut lab = Lab::new(2).unwrap();
    lab.start_agent_with(CONFIG, &["--metrics", METRICS])
        .unwrap();
    lab.wait_ready().unwrap();
    assert!(
        lab.agent_log()
            .contains(&format!("http://{METRICS}/metrics")),
        "the bound address is not logged:\n{}",
        lab.agent_log()
    );
    for i in 0..REQUESTS {
        lab.http_get(80)
            .unwrap_or_else(|e| panic!("HTTP request {i}: {e:#}\n{}", lab.agent_log()));
    }

    let answer = scrape(&lab, "/metrics").unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.contains("\r\nContent-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let value = |series: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{body}"))
    };
    // SYN, ACK and the request at least, per connection.
    let forwarded = value(r#"lb_packets_total{reason="forward"}"#);
    assert!(forwarded >= 3 * REQUESTS, "forward = {forwarded}\n{body}");
    assert_eq!(
        value(&format!(
            r#"lb_service_new_flows_total{{service="{SERVICE}"}}"#
        )),
        REQUESTS,
        "one new flow per connection\n{body}"
    );
    for b in ["192.0.2.11:80", "192.0.2.12:80"] {
        assert_eq!(
            value(&format!(
                r#"lb_backend_up{{service="{SERVICE}",backend="{b}"}}"#
            )),
            1,
            "{b}\n{body}"
        );
        assert_eq!(
            value(&format!(
                r#"lb_backend_health{{service="{SERVICE}",backend="{b}",state="unprobed"}}"#
            )),
            1,
            "{b}\n{body}"
        );
    }
    assert_eq!(value("lb_agent_up"), 1);
    assert_eq!(value("lb_backends"), 2);

    let other = scrape(&lab, "/").unwrap();
    assert!(other.starts_with("HTTP/1.1 404 "), "{other}");
}

#[test]
fn no_tcp_listener_without_the_flag() {
    let mut lab = Lab::new(2).unwrap();
    lab.start_agent(CONFIG).unwrap();
    lab.wait_ready().unwrap();
    let err = scrape(&lab, "/metrics").expect_err("something answers on 127.0.0.1:9464");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    // Nothing else runs in the LB namespace, so any listening TCP socket would be the agent's.
    let listening = lab.lb.exec("ss", &["-Hltn"]).unwrap();
    assert!(listening.trim().is_empty(), "TCP listeners: {listening}");
}
