//! The compiled XDP object holds no hidden work: no call of `memset`, `memcpy`, `memmove`,
//! `memcmp` or `bcmp`. LLVM emits such calls for zeroed or copied structs it cannot lower to
//! plain stores (a byte-aligned struct, four zero words in a row); in the BPF program each is
//! a bpf-to-bpf call into a byte loop. Keys and entries are built from words instead, and this
//! test keeps it so. It reads the same objects the agent embeds (the XDP program and the
//! backends' decapsulation program).
//!
//! The baseline object, which the lab loads on every veth peer without a pin directory,
//! declares no pinned map: aya would pin such a map into `/sys/fs/bpf` itself and leave it.

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};

const HIDDEN: [&str; 5] = ["memset", "memcpy", "memmove", "memcmp", "bcmp"];

#[test]
fn the_program_calls_no_memset_or_memcpy() {
    hidden_calls(lb_userspace::dataplane::LB_OBJ);
}

/// The backends' decapsulation program too.
#[test]
fn the_decapsulation_program_calls_no_memset_or_memcpy() {
    hidden_calls(lb_userspace::dataplane::DECAP_OBJ);
}

fn hidden_calls(elf: &[u8]) {
    let obj = object::File::parse(elf).expect("parse the object");
    let mut calls = Vec::new();
    let mut programs = 0;
    for section in obj.sections() {
        let name = section.name().unwrap_or_default().to_owned();
        if section.kind() != object::SectionKind::Text {
            continue;
        }
        programs += 1;
        for (off, r) in section.relocations() {
            if let RelocationTarget::Symbol(i) = r.target()
                && let Ok(sym) = obj.symbol_by_index(i)
                && let Ok(s) = sym.name()
                && HIDDEN.contains(&s)
            {
                calls.push(format!("{name}+{off:#x} calls {s}"));
            }
        }
    }
    assert!(programs >= 2, "no program sections found ({programs})");
    assert!(
        calls.is_empty(),
        "hidden helper calls:\n{}",
        calls.join("\n")
    );
}

/// aya's legacy map definition: type, key size, value size, max entries, flags, id, pinning.
const MAP_DEF_LEN: usize = 28;
const PINNING_AT: usize = 24;

#[test]
fn the_baseline_object_pins_nothing() {
    let obj = object::File::parse(lb_userspace::dataplane::BASELINE_OBJ).expect("parse");
    let maps = obj.section_by_name("maps").expect("a maps section");
    let data = maps.data().expect("its data");
    let mut seen = 0;
    for sym in obj.symbols() {
        if sym.section_index() != Some(maps.index()) {
            continue;
        }
        let at = usize::try_from(sym.address() - maps.address()).expect("offset");
        let def = &data[at..at + MAP_DEF_LEN];
        let pinning = u32::from_le_bytes(def[PINNING_AT..PINNING_AT + 4].try_into().expect("4"));
        assert_eq!(pinning, 0, "map {} is pinned", sym.name().unwrap_or("?"));
        seen += 1;
    }
    assert!(seen >= 4, "only {seen} maps found");
    // The check reads pinning where the agent's object has it set.
    let lb = object::File::parse(lb_userspace::dataplane::LB_OBJ).expect("parse");
    let lm = lb.section_by_name("maps").expect("maps");
    let ld = lm.data().expect("data");
    let pinned = lb
        .symbols()
        .filter(|s| s.section_index() == Some(lm.index()))
        .filter(|s| {
            let at = usize::try_from(s.address() - lm.address()).expect("offset");
            ld[at + PINNING_AT] != 0
        })
        .count();
    assert!(pinned >= 10, "the agent's maps read as unpinned ({pinned})");
}
