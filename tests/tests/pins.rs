//! Pinned maps across agent generations: a pin directory of this build's layout is reused,
//! one of another layout (or from before layouts were versioned) is refused with an error that
//! says what to do, never silently misread.

use aya::maps::{Array, Map, MapData};
use lb_common::consts::{map_layout_version, map_names};
use lb_integration::fixture::{FixedResolver, Harness, in_fresh_ns, pin_dir};
use lb_userspace::{
    api::{Request, Response},
    dataplane::{Dataplane, LiveMaps, LoadOptions, MapOps as _},
    error::LoadError,
    state::Command,
};

fn opts(ns: &lb_integration::netns::Netns) -> LoadOptions {
    LoadOptions {
        ring_slots: 4096,
        conntrack_flows: 1024,
        ..LoadOptions::new(pin_dir(ns))
    }
}

fn set_layout(ns: &lb_integration::netns::Netns, v: u64) {
    let data = MapData::from_pin(pin_dir(ns).join(map_names::LAYOUT)).expect("LB_LAYOUT pin");
    let mut a: Array<_, u64> = Array::try_from(Map::Array(data)).expect("array");
    a.set(0, v, 0).expect("write");
}

#[test]
fn pins_of_another_map_layout_are_refused_with_the_way_forward() {
    in_fresh_ns("pins", |ns| {
        // First generation: creates and stamps the pins.
        drop(Dataplane::load(&opts(ns)).expect("first load"));
        // The same build again: reused.
        drop(Dataplane::load(&opts(ns)).expect("a second agent of the same build reuses the pins"));

        // Pins stamped by another build.
        set_layout(ns, map_layout_version() ^ 1);
        let Err(e) = Dataplane::load(&opts(ns)) else {
            panic!("pins of another layout were reused")
        };
        assert!(matches!(e, LoadError::Layout { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("incompatible build") && msg.contains("rm -r"),
            "{msg}"
        );

        // Pins from before layouts were versioned: maps, but no LB_LAYOUT.
        set_layout(ns, map_layout_version());
        std::fs::remove_file(pin_dir(ns).join(map_names::LAYOUT)).expect("unpin");
        let Err(e) = Dataplane::load(&opts(ns)) else {
            panic!("unversioned pins were reused")
        };
        assert!(
            e.to_string().contains("before layouts were versioned"),
            "{e}"
        );

        // The documented way forward: remove the directory; a fresh start works.
        std::fs::remove_dir_all(pin_dir(ns)).expect("remove pins");
        drop(Dataplane::load(&opts(ns)).expect("a fresh start"));
    });
}

/// A pinned map keeps its size, so an agent configured for another ring or conntrack size is
/// refused (aya would reuse the map and report the new size), with the way forward.
#[test]
fn pins_of_another_size_are_refused_with_the_way_forward() {
    in_fresh_ns("sizes", |ns| {
        drop(Dataplane::load(&opts(ns)).expect("first load"));
        for (bigger, setting, pinned) in [
            (
                LoadOptions {
                    ring_slots: 8192,
                    ..opts(ns)
                },
                "agent.ring_slots",
                "4096",
            ),
            (
                LoadOptions {
                    conntrack_flows: 2048,
                    ..opts(ns)
                },
                "agent.conntrack_flows",
                "1024",
            ),
        ] {
            let Err(e) = Dataplane::load(&bigger) else {
                panic!("{setting}: pins of another size were reused")
            };
            assert!(matches!(e, LoadError::Size { .. }), "{e}");
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("{setting} back to {pinned}")) && msg.contains("rm -r"),
                "{msg}"
            );
        }
        drop(Dataplane::load(&opts(ns)).expect("the pinned sizes again"));
    });
}

const ADOPT_CONFIG: &str = r#"
[agent]
ring_slots = 4096
conntrack_flows = 1024

[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11", "192.0.2.12:8080"]
table_size = 251
"#;

/// [`ADOPT_CONFIG`] goes on with these services.
const ADOPT_REST: &str = r#"
[[service]]
vip = "203.0.113.10:8080/tcp"
backends = ["192.0.2.11"]
table_size = 251
acl = [
  { order = 10, action = "permit", prefix = "198.51.100.0/26" },
  { order = 20, action = "deny", prefix = "198.51.100.0/24" },
]

[[service]]
vip = "203.0.113.20:80/tcp"
backends = ["192.0.2.11"]
table_size = 251
internal = ["198.51.100.0/26"]
"#;

/// The live maps as comparable values (map walks come in no fixed order).
fn canonical(l: &LiveMaps) -> String {
    let mut lines: Vec<String> = l
        .services
        .iter()
        .map(|(k, v)| format!("{k:?} {v:?}"))
        .chain(l.vips.iter().map(|(k, v)| format!("{k:?} {v:?}")))
        .chain(l.backends.iter().map(|(k, v)| format!("{k} {v:?}")))
        .chain(l.acl.iter().map(|(k, v)| format!("{k} {v:?}")))
        .collect();
    lines.sort();
    lines.join("\n")
}

/// What a restarted agent adopts is what the previous one wrote, read back from the kernel's
/// maps (slots in batches, which must equal slot-by-slot reads, also at the array's end); and a
/// second agent over the same pins adopts them without changing an entry. The first agent
/// deletes a service before it dies, so its ids and regions are not what a fresh start of the
/// remaining config would allocate: only adoption keeps them.
#[test]
fn a_second_agent_adopts_the_first_agents_maps_unchanged() {
    in_fresh_ns("adopt", |ns| {
        let resolver = || FixedResolver::all_on_lo([2, 0, 0, 0, 0, 0x11]);
        let config = format!("{ADOPT_CONFIG}{ADOPT_REST}");
        let mut first = Harness::load(ns, &config, resolver()).expect("first agent");
        let out = first.rec.handle(Request::Change(Command::VipDel {
            service: "203.0.113.10:80/tcp".parse().unwrap(),
        }));
        assert!(
            matches!(out.response, Response::Done(_)) && out.state_changed,
            "{out:?}"
        );
        let maps = first.rec.maps();
        let live = maps.read_live().expect("read the live maps");
        assert_eq!(live.services.len(), 2, "{live:?}");
        assert!(
            live.services
                .iter()
                .all(|(_, i)| i.id != 0 && i.table_off != 0),
            "the deleted service had id 0 and the first region: {live:?}"
        );
        let tables: Vec<Vec<u32>> = live
            .services
            .iter()
            .map(|(_, i)| maps.read_slots(i.table_off, i.table_len).unwrap())
            .collect();
        assert!(
            !live.acl.is_empty(),
            "an ACL set and an internal VIP's source set"
        );
        let slot = |i: u32| maps.ring.get(&i, 0).expect("one slot");
        for (_, info) in &live.services {
            let slots = maps
                .read_slots(info.table_off, info.table_len)
                .expect("read a table");
            let one_by_one: Vec<u32> = (info.table_off..info.table_off + info.table_len)
                .map(slot)
                .collect();
            assert_eq!(slots, one_by_one, "{info:?}");
            for id in &slots {
                assert!(
                    live.backends
                        .iter()
                        .any(|(b, e)| b == id && e.service == info.id),
                    "slot backend {id} is not an active entry of service {}",
                    info.id
                );
            }
        }
        let n = maps.ring.len();
        let end: Vec<u32> = (n - 3..n).map(slot).collect();
        assert_eq!(maps.read_slots(n - 3, 3).expect("the last slots"), end);
        assert!(
            maps.read_slots(n - 1, 2).is_err(),
            "a read past the end must fail, not come back short"
        );
        drop(first);

        let second = Harness::load(
            ns,
            &format!("[agent]\nring_slots = 4096\nconntrack_flows = 1024\n{ADOPT_REST}"),
            resolver(),
        )
        .expect("second agent");
        let again = second.rec.maps().read_live().expect("read again");
        assert_eq!(canonical(&again), canonical(&live));
        for ((_, i), before) in live.services.iter().zip(&tables) {
            let now = second
                .rec
                .maps()
                .read_slots(i.table_off, i.table_len)
                .unwrap();
            assert_eq!(&now, before, "the table of service {}", i.id);
        }
    });
}
