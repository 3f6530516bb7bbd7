//! Pinned maps across agent generations: a pin directory of this build's layout is reused,
//! one of another layout (or from before layouts were versioned) is refused with an error that
//! says what to do, never silently misread.

use aya::maps::{Array, Map, MapData};
use lb_common::consts::{map_layout_version, map_names};
use lb_integration::fixture::{in_fresh_ns, pin_dir};
use lb_userspace::{
    dataplane::{Dataplane, LoadOptions},
    error::LoadError,
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
