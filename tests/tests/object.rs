//! The compiled XDP object holds no hidden work: no call of `memset`, `memcpy`, `memmove`,
//! `memcmp` or `bcmp`. LLVM emits such calls for zeroed or copied structs it cannot lower to
//! plain stores (a byte-aligned struct, four zero words in a row); in the BPF program each is
//! a bpf-to-bpf call into a byte loop. Keys and entries are built from words instead, and this
//! test keeps it so. It reads the same object the agent embeds.

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};

const HIDDEN: [&str; 5] = ["memset", "memcpy", "memmove", "memcmp", "bcmp"];

#[test]
fn the_program_calls_no_memset_or_memcpy() {
    let obj = object::File::parse(lb_userspace::dataplane::LB_OBJ).expect("parse the object");
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
