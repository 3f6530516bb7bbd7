//! A flood of new flows at 10× the conntrack capacity, through the real program
//! (`BPF_PROG_TEST_RUN`): established flows keep their backends, new flows keep being
//! admitted, and the evictions show in the service's `conntrack_misses` counter. Above the
//! flood guard's rate, the flood is forwarded untracked and evicts nothing.
//!
//! Why established flows survive their entries' eviction: conntrack is an LRU, so a flood
//! evicts them, but a packet without an entry is re-picked from the service's consistent
//! table with the same hash, which gives the same backend while the backend set is unchanged.

use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::verdict::Reason;
use lb_integration::{
    fixture::{FixedResolver, Harness, XDP_TX, in_fresh_ns},
    packet::{Frame, TCP_ACK, TCP_SYN},
};
use lb_userspace::api::{Query, Request, Response};

const CAPACITY: u32 = 256;

fn config() -> String {
    format!(
        "[agent]\nring_slots = 4096\nconntrack_flows = {CAPACITY}\n\n\
         [[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.11\", \"192.0.2.12\", \"192.0.2.13\"]\ntable_size = 251\n"
    )
}

/// The backend a forwarded frame went to (destination address of the output).
fn backend_of(out: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(out[30], out[31], out[32], out[33])
}

#[test]
fn a_flood_at_ten_times_capacity_moves_no_established_flow() {
    in_fresh_ns("flood", |ns| {
        let resolver = FixedResolver::all_on_lo([2, 0, 0, 0, 0, 0x11]);
        let mut h = Harness::load(ns, &config(), resolver).expect("load");
        let vip = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80);
        let client = |i: u32| {
            SocketAddrV4::new(
                Ipv4Addr::new(198, 51, 100, u8::try_from(1 + i % 200).expect("small")),
                u16::try_from(10_000 + i / 200).expect("small"),
            )
        };

        // 32 established flows and their backends.
        let established: Vec<(SocketAddrV4, Ipv4Addr)> = (0..32)
            .map(|i| {
                let c = client(i);
                let (a, out, _) = h.run(&Frame::tcp(c, vip, TCP_SYN).build());
                assert_eq!(a, XDP_TX, "SYN of flow {i}");
                (c, backend_of(&out))
            })
            .collect();
        let spread: std::collections::BTreeSet<_> = established.iter().map(|e| e.1).collect();
        assert!(
            spread.len() > 1,
            "the flows should spread over backends: {spread:?}"
        );

        // The flood: 10× the capacity in new flows, every one admitted.
        let before = h.counts()[Reason::Forward as usize];
        let flood = 10 * CAPACITY;
        for i in 0..flood {
            let (a, _, _) = h.run(&Frame::tcp(client(1_000 + i), vip, TCP_SYN).build());
            assert_eq!(a, XDP_TX, "flood flow {i} was not admitted");
        }
        assert_eq!(
            h.counts()[Reason::Forward as usize] - before,
            u64::from(flood)
        );

        // Every established flow still reaches its backend.
        for (i, (c, b)) in established.iter().enumerate() {
            let (a, out, _) = h.run(&Frame::tcp(*c, vip, TCP_ACK).build());
            assert_eq!(a, XDP_TX);
            assert_eq!(backend_of(&out), *b, "established flow {i} moved");
        }

        // The flood evicted entries, and that is visible.
        let Response::Stats(stats) = h.rec.handle(Request::Query(Query::Stats)).response else {
            panic!("stats")
        };
        let misses = stats.services[0].counters.conntrack_misses;
        assert!(
            misses > 0,
            "a flood at 10× capacity must evict established entries: {stats:?}"
        );
        let entries = h.rec.maps().side.conntrack.keys().count();
        assert!(
            entries <= CAPACITY as usize,
            "conntrack holds {entries} entries, above its capacity"
        );
    });
}

/// A flood above the flood guard's rate (`agent.new_flow_rate`, here 1 per second per CPU):
/// every new flow is still forwarded by the table, but beyond the rate none is tracked, so the
/// established flows' entries stay (no conntrack miss at all) and the untracked flows are
/// counted. The bound on tracked flows is the bucket's law over the measured time: at most
/// the burst (1) plus one per second the flood took.
#[test]
fn a_flood_above_the_new_flow_rate_evicts_nothing() {
    use lb_common::{
        flow::{FlowKey4, proto},
        maps::ConnEntry4,
    };
    in_fresh_ns("flood-guard", |ns| {
        let resolver = FixedResolver::all_on_lo([2, 0, 0, 0, 0, 0x11]);
        let config = config().replace("[agent]\n", "[agent]\nnew_flow_rate = 1\n");
        let mut h = Harness::load(ns, &config, resolver).expect("load");
        let vip = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80);
        let client = |i: u32| {
            SocketAddrV4::new(
                Ipv4Addr::new(198, 51, 100, u8::try_from(1 + i % 200).expect("small")),
                u16::try_from(10_000 + i / 200).expect("small"),
            )
        };
        // 32 established flows: their SYNs are forwarded (the guard tracks at most one of
        // them), and their entries are planted as the agent's fixtures do, naming the backend
        // the table chose.
        let service = h.rec.live().services.values().next().expect("a service").id;
        let established: Vec<(SocketAddrV4, Ipv4Addr)> = (0..32)
            .map(|i| {
                let c = client(i);
                let (a, out, _) = h.run(&Frame::tcp(c, vip, TCP_SYN).build());
                assert_eq!(a, XDP_TX, "SYN of flow {i}");
                let b = backend_of(&out);
                let id = h
                    .rec
                    .live()
                    .backends
                    .iter()
                    .find(|(_, e)| e.addr == lb_common::addr::v4_mapped(b.octets()))
                    .map(|(id, _)| *id)
                    .expect("the backend's id");
                h.plant_flow(
                    &FlowKey4::new(c, vip, proto::TCP),
                    &ConnEntry4::forward(id, service, 0, 0, lb_integration::coarse_now_s(), (0, 0)),
                );
                (c, b)
            })
            .collect();

        let entries_before = h.rec.maps().side.conntrack.keys().count();
        let untracked = |h: &mut Harness| {
            let Response::Stats(stats) = h.rec.handle(Request::Query(Query::Stats)).response else {
                panic!("stats")
            };
            stats.services[0].counters.untracked_flows
        };
        let untracked_before = untracked(&mut h);
        let started = std::time::Instant::now();
        let flood = 10 * CAPACITY;
        for i in 0..flood {
            let (a, _, _) = h.run(&Frame::tcp(client(1_000 + i), vip, TCP_SYN).build());
            assert_eq!(a, XDP_TX, "flood flow {i} was not forwarded");
        }
        let took = started.elapsed().as_secs();
        let tracked = u64::from(flood) - (untracked(&mut h) - untracked_before);
        assert!(
            tracked <= 1 + took + 1,
            "{tracked} flood flows tracked in {took} s at 1 per second"
        );
        let entries = h.rec.maps().side.conntrack.keys().count();
        assert!(
            entries <= entries_before + usize::try_from(tracked).unwrap(),
            "{entries} entries"
        );
        for (i, (cl, b)) in established.iter().enumerate() {
            let (a, out, _) = h.run(&Frame::tcp(*cl, vip, TCP_ACK).build());
            assert_eq!(a, XDP_TX);
            assert_eq!(backend_of(&out), *b, "established flow {i} moved");
        }
        let Response::Stats(stats) = h.rec.handle(Request::Query(Query::Stats)).response else {
            panic!("stats")
        };
        assert_eq!(
            stats.services[0].counters.conntrack_misses, 0,
            "no established entry was evicted: {stats:?}"
        );
    });
}
