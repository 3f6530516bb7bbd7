//! Reads run off the writer: a `lb status` walks the whole conntrack map on a handle of its
//! own, so the writer keeps applying changes meanwhile. Shown by ordering, not timing: the walk
//! over a large planted map is held at its first batch until a health transition's table
//! switch has completed; if the walk ran on the writer, the switch could never happen first
//! and the bounded wait below would fail.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, mpsc as std_mpsc},
    time::Duration,
};

use aya::maps::{HashMap, Map, MapData};
use lb_common::{
    consts::map_names,
    flow::{FlowKey4, proto},
    maps::{ConnEntry4, Counters, ServiceInfo, ServiceKey4},
};
use lb_integration::fixture::{FixedResolver, Harness, in_fresh_ns, pin_dir};
use lb_userspace::{
    agent::{Tasks, run_writer},
    api::{Query, Request, Response},
    dataplane::{MapReader, SideMaps},
    error::MapOpError,
    reconcile::{Event, ProbeReport},
};
use tokio::sync::{mpsc, oneshot, watch};

const CONFIG: &str = r#"
[agent]
ring_slots = 4096
conntrack_flows = 262144

[[service]]
vip = "203.0.113.10:80/tcp"
table_size = 251
probe = "tcp"
unhealthy_after = 2
backends = ["192.0.2.11", "192.0.2.12"]
"#;

/// Flows planted: dozens of batches for the walk.
const PLANTED: u32 = 200_000;

/// A reader over the agent's own side handle whose conntrack walk stops after its first
/// batch, says so, and waits to be let go.
struct HeldWalk {
    side: SideMaps,
    started: Mutex<std_mpsc::Sender<usize>>,
    go: Mutex<std_mpsc::Receiver<()>>,
}

impl MapReader for HeldWalk {
    fn service_counters(&self, id: u32) -> Result<Counters, MapOpError> {
        self.side.service_counters(id)
    }
    fn backend_counters(&self, id: u32) -> Result<Counters, MapOpError> {
        self.side.backend_counters(id)
    }
    fn reason_counters(&self) -> Result<Vec<u64>, MapOpError> {
        self.side.reason_counters()
    }
    fn probe_tunnel(&self) -> Result<Vec<u64>, MapOpError> {
        self.side.probe_tunnel()
    }
    fn each_flow(
        &self,
        f: &mut dyn FnMut(lb_userspace::dataplane::TrackedFlow<'_>),
    ) -> Result<(), MapOpError> {
        self.side.each_flow(f)
    }
    fn flows_per_backend(&self) -> Result<std::collections::HashMap<u32, u64>, MapOpError> {
        let mut first = true;
        self.side.flows_per_backend_with(&mut |seen| {
            if std::mem::take(&mut first) {
                let _ = self.started.lock().unwrap().send(seen);
                // Bounded, so a broken writer fails the test instead of hanging it (and longer than the
                // test waits for the writer's answer below).
                let _ = self.go.lock().unwrap().recv_timeout(Duration::from_mins(1));
            }
        })
    }
}

fn plant(ns: &lb_integration::netns::Netns, n: u32) {
    let data = MapData::from_pin(pin_dir(ns).join(map_names::CONNTRACK)).unwrap();
    let mut ct: HashMap<_, FlowKey4, ConnEntry4> =
        HashMap::try_from(Map::LruHashMap(data)).unwrap();
    let entry = ConnEntry4::forward(1, 0, 0, 0, lb_integration::coarse_now_s(), (0, 0));
    for i in 0..n {
        let key = FlowKey4::of(
            [198, 51, 100, u8::try_from(i % 200).unwrap()],
            [203, 0, 113, 10],
            u16::try_from(1024 + i / 200).unwrap().to_be_bytes(),
            80u16.to_be_bytes(),
            proto::TCP,
        );
        ct.insert(key, entry, 0).unwrap();
    }
}

/// The web service's live entry, read from the pinned map (a third handle, neither the
/// writer's nor the reader's).
fn live_service(ns: &lb_integration::netns::Netns) -> ServiceInfo {
    let data = MapData::from_pin(pin_dir(ns).join(map_names::SERVICES4)).unwrap();
    let m: HashMap<_, ServiceKey4, ServiceInfo> = HashMap::try_from(Map::HashMap(data)).unwrap();
    let key = "203.0.113.10:80/tcp"
        .parse::<lb_userspace::spec::ServiceSpec>()
        .unwrap()
        .key()
        .v4()
        .unwrap();
    m.get(&key, 0).unwrap()
}

fn probe(backend: &str, ok: bool) -> Event {
    Event::Probe(ProbeReport {
        service: "203.0.113.10:80/tcp".parse().unwrap(),
        backend: backend.parse::<SocketAddr>().unwrap(),
        ok,
        detail: if ok { "connected" } else { "refused" }.into(),
    })
}

#[test]
fn a_health_switch_completes_while_a_status_walk_is_in_progress() {
    in_fresh_ns("reads", |ns| {
        let mut h = Harness::load(ns, CONFIG, FixedResolver::all_on_lo([2, 0, 0, 0, 0, 0x11]))
            .expect("load");
        for b in ["192.0.2.11:80", "192.0.2.12:80"] {
            h.rec.handle_now(probe(b, true));
        }
        let both = live_service(ns);
        assert_eq!(both.table_len, 251);
        plant(ns, PLANTED);

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (started_tx, started_rx) = std_mpsc::channel();
        let (go_tx, go_rx) = std_mpsc::channel();
        let (resolve_tx, _resolve_rx) = std_mpsc::channel();
        let (purge_tx, _purge_rx) = std_mpsc::channel();
        let (events, events_rx) = mpsc::channel(64);
        let tasks = Tasks {
            config: None,
            events: events.downgrade(),
            reader: Arc::new(HeldWalk {
                side: SideMaps::open(&pin_dir(ns)).unwrap(),
                started: Mutex::new(started_tx),
                go: Mutex::new(go_rx),
            }),
            resolve: resolve_tx,
            purge: purge_tx,
            save: watch::channel(None).0,
            probes: watch::channel(Vec::new()).0,
            sweep: watch::channel(None).0,
            announce: None,
            runtime: rt.handle().clone(),
        };
        let Harness { dp, rec, .. } = h;
        let writer = std::thread::spawn(move || {
            drop(run_writer(rec, events_rx, &tasks, String::new()));
        });

        let (status_tx, mut status_rx) = oneshot::channel();
        events
            .blocking_send(Event::Api(Request::Query(Query::Status), status_tx))
            .unwrap();
        let seen = started_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the status walk started");
        assert!(
            (seen as u32) < PLANTED,
            "the walk must be held part way: {seen} of {PLANTED}"
        );

        // The writer takes the probe results and switches the table while the walk is held.
        events.blocking_send(probe("192.0.2.12:80", false)).unwrap();
        events.blocking_send(probe("192.0.2.12:80", false)).unwrap();
        let (list_tx, list_rx) = oneshot::channel();
        events
            .blocking_send(Event::Api(Request::Query(Query::VipList), list_tx))
            .unwrap();
        let list = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), list_rx).await })
            .expect("the writer answered while the walk was held")
            .unwrap();
        let Response::Vips { vips } = list else {
            panic!("{list:?}")
        };
        assert_eq!(vips[0].in_rotation, 1, "{vips:?}");
        let one = live_service(ns);
        assert!(
            one.table_off != both.table_off && one.table_len == 251,
            "the switch to the one-backend table is in the map: {one:?} (was {both:?})"
        );
        assert!(
            status_rx.try_recv().is_err(),
            "the status answer came before its walk was let go"
        );

        go_tx.send(()).unwrap();
        let status = rt
            .block_on(async { tokio::time::timeout(Duration::from_mins(1), status_rx).await })
            .expect("the status answer")
            .unwrap();
        let Response::Status(s) = status else {
            panic!("{status:?}")
        };
        let flows: u64 = s.vips[0].backends.iter().map(|b| b.flows).sum();
        assert_eq!(
            flows,
            u64::from(PLANTED),
            "the walk counted every planted flow"
        );
        events.blocking_send(Event::Stop).unwrap();
        writer.join().unwrap();
        drop(dp);
    });
}
