//! Every input through the real XDP program and through the model: they must agree
//! (`lb_integration::differential::compare`: the verdict, the one counter, the backend, the
//! output bytes and their checksums). A disagreement panics with both sides' answers and the
//! frame, and libFuzzer keeps the input.
//!
//! The object is loaded once per process, in a namespace of its own that the main thread
//! enters, and provisioned through the agent's reconciler with the differential test's state
//! (`differential::CONFIG`). Each input starts from no tracked flows on either side
//! (`forget_flows`), so an input means the same thing whenever it runs.
//!
//! An input is either a raw frame (first byte even: the rest is the frame; the seeds from the
//! fixtures and the corpus have this form) or, first byte odd, a description of up to four
//! frames (`arbitrary`): each with its family, an optional VLAN tag, addresses and ports drawn
//! from the state's clients, VIPs, backends and the LB's own address (or any), TCP flags, UDP,
//! ICMP (errors embedding an earlier frame of the input among them) or another protocol, TTL,
//! IPv4 options and fragment fields, IPv6 extension-header chains, then bit flips and a cut.
//! The frames of one input share their tracked flows, so a SYN, its ACK, the backend's reply
//! and an error about it can meet.
#![no_main]

use std::{
    cell::RefCell,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    sync::OnceLock,
};

use arbitrary::{Arbitrary, Unstructured};
use lb_common::{hdr::ext, model::Model};
use lb_integration::{
    differential::{self, compare, forget_flows, model_of},
    fixture::Harness,
    netns::{Netns, unique_prefix},
    packet::{Frame, Frame6, L4, frame_file_name},
};
use libfuzzer_sys::fuzz_target;

/// The namespace's name, for the exit hook that deletes it and its pins.
static NAME: OnceLock<String> = OnceLock::new();

struct State {
    h: Harness,
    model: Model,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

extern "C" fn clean_up() {
    if let Some(name) = NAME.get() {
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/{name}"));
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", name])
            .status();
    }
}

fn init() {
    lb_integration::require_root();
    let ns = Netns::new(&format!("{}-kfuzz", unique_prefix())).expect("namespace");
    NAME.set(ns.name.clone()).expect("one init");
    // SAFETY: registers a plain function; libFuzzer ends with exit(), which runs it.
    unsafe { libc::atexit(clean_up) };
    // The main thread (libFuzzer's) joins the namespace: nothing it does can reach out.
    let fd = std::fs::File::open(format!("/run/netns/{}", ns.name)).expect("netns file");
    // SAFETY: a valid namespace descriptor, for this thread.
    let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
    // A small conntrack: emptied before every input, and walked to empty it.
    let config = differential::CONFIG.replace("conntrack_flows = 65536", "conntrack_flows = 4096");
    let h = Harness::load(&ns, &config, differential::resolver()).expect("load the program");
    let model = model_of(&h);
    // The namespace is deleted by the exit hook, not when this handle goes.
    std::mem::forget(ns);
    STATE.with(|s| *s.borrow_mut() = Some(State { h, model }));
}

/// A host of either family, mostly one the state knows.
#[derive(Arbitrary, Debug)]
enum Host {
    Client(u8),
    Vip(u8),
    Backend(u8),
    /// The LB's own address (its probes' source).
    Local,
    /// An address of the prefixes that is nothing of ours.
    Other,
    Any([u8; 16]),
}

/// Clients 198.51.100.1–4 / `2001:db8:1::1`–4 (inside and outside the ACL and the internal
/// prefixes), VIPs 203.0.113.10–18 / `2001:db8:3::10`–18 (the PIP at .17), backends
/// 192.0.2.11–41 / `2001:db8:2::11`–41 (the HA-ports ones at .30 and .31, the hairpin-SNAT
/// ones at .40 and .41), the LB 192.0.2.1 / `2001:db8:2::1`.
fn host(h: &Host, v6: bool) -> [u8; 16] {
    let (net, last): (u16, u8) = match h {
        Host::Client(i) => (1, 1 + i % 4),
        Host::Vip(i) => (3, 0x10 + i % 5),
        Host::Backend(i) => (
            2,
            [
                0x11, 0x12, 0x13, 0x14, 0x15, 0x18, 0x20, 0x21, 0x30, 0x31, 0x40, 0x41,
            ][usize::from(i % 12)],
        ),
        Host::Local => (2, 1),
        Host::Other => (2, 0x99),
        Host::Any(a) => return *a,
    };
    if v6 {
        Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, u16::from(last)).octets()
    } else {
        let third = match net {
            1 => [198, 51, 100],
            3 => [203, 0, 113],
            _ => [192, 0, 2],
        };
        // The same digits: 2001:db8:2::11 (hex) is 192.0.2.11 (decimal).
        let last = (last >> 4) * 10 + (last & 0xf);
        let mut a = [0u8; 16];
        a[12..].copy_from_slice(&[third[0], third[1], third[2], last]);
        a
    }
}

#[derive(Arbitrary, Debug)]
enum Port {
    Known(u8),
    Any(u16),
}

fn port(p: &Port) -> u16 {
    match p {
        Port::Known(i) => {
            [80, 53, 443, 444, 8080, 8443, 81, 1024, 1025, 40000][usize::from(i % 10)]
        }
        Port::Any(p) => *p,
    }
}

#[derive(Arbitrary, Debug)]
enum Transport {
    Tcp {
        flags: u8,
    },
    Udp {
        no_csum: bool,
    },
    Icmp {
        ty: u8,
        code: u8,
        body: Vec<u8>,
    },
    /// An ICMP error (type and code as given) embedding an earlier frame of the input from
    /// its network header on, cut to `keep` bytes: so that errors about tracked flows, to a
    /// VIP or from a backend's side, meet their flows. The embedded destination can be
    /// replaced first (`to`: the backend a client's packet went to), and the embedded packet
    /// turned around (`turn`: the reply a VIP sent the client).
    IcmpAbout {
        ty: u8,
        code: u8,
        earlier: u8,
        keep: u8,
        to: Option<(Host, Port)>,
        turn: bool,
    },
    Other {
        proto: u8,
        body: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
enum Ttl {
    Normal,
    One,
    Zero,
    Any(u8),
}

#[derive(Arbitrary, Debug)]
enum Ext {
    HopByHop { units: u8 },
    DestOpts { units: u8 },
    Routing { kind: u8, left: u8 },
    Fragment { offset: u16, more: bool },
    Other { kind: u8, units: u8 },
}

fn ext_header(e: &Ext) -> (u8, Vec<u8>) {
    let sized = |kind: u8, units: u8| {
        let units = 1 + usize::from(units % 2);
        let mut b = vec![0u8; 8 * units];
        b[1] = u8::try_from(units - 1).expect("small");
        (kind, b)
    };
    match e {
        Ext::HopByHop { units } => sized(ext::HOP_BY_HOP, *units),
        Ext::DestOpts { units } => sized(ext::DEST_OPTS, *units),
        Ext::Routing { kind, left } => {
            let (k, mut b) = sized(ext::ROUTING, 0);
            (b[2], b[3]) = (*kind, *left % 3);
            (k, b)
        }
        Ext::Fragment { offset, more } => {
            let mut b = vec![0u8; 8];
            let field = (offset % 8192) << 3 | u16::from(*more);
            b[2..4].copy_from_slice(&field.to_be_bytes());
            (ext::FRAGMENT, b)
        }
        Ext::Other { kind, units } => sized(*kind, *units),
    }
}

#[derive(Arbitrary, Debug)]
struct Packet {
    v6: bool,
    vlan: Option<u16>,
    src: Host,
    dst: Host,
    sport: Port,
    dport: Port,
    transport: Transport,
    ttl: Ttl,
    /// IPv6 only, at most six (the fast path walks four).
    ext: Vec<Ext>,
    /// IPv4 only: options (padded to 4-byte words, at most 40 bytes) and the flags and
    /// fragment-offset field (DF when none).
    ip_options: Vec<u8>,
    frag: Option<u16>,
    payload: Vec<u8>,
    /// (offset, xor) in the first 128 bytes, at most four.
    flips: Vec<(u8, u8)>,
    /// Keep 14 + n bytes.
    cut: Option<u8>,
}

/// An embedded packet (network header on) with its destination replaced by `to` and then, if
/// `turn`, its addresses and ports swapped; what is not in it is left alone.
fn readdress(inner: &mut [u8], to: Option<&(Host, Port)>, turn: bool) {
    let Some(&first) = inner.first() else {
        return;
    };
    let v6 = first >> 4 == 6;
    let (src, dst, alen, l4) = if v6 {
        (8, 24, 16, 40)
    } else {
        (12, 16, 4, usize::from(first & 0x0f) * 4)
    };
    if let Some((h, p)) = to {
        let a = host(h, v6);
        if let Some(d) = inner.get_mut(dst..dst + alen) {
            d.copy_from_slice(&a[16 - alen..]);
        }
        if let Some(d) = inner.get_mut(l4 + 2..l4 + 4) {
            d.copy_from_slice(&port(p).to_be_bytes());
        }
    }
    if turn {
        if inner.len() >= dst + alen {
            for i in 0..alen {
                inner.swap(src + i, dst + i);
            }
        }
        if inner.len() >= l4 + 4 {
            inner.swap(l4, l4 + 2);
            inner.swap(l4 + 1, l4 + 3);
        }
    }
}

/// The message of a [`Transport::IcmpAbout`]: type and code, four bytes, then the earlier
/// frame `e` (modulo their number) from its network header on, readdressed and cut to `keep`
/// bytes; an IPv4 message's checksum computed (an IPv6 one's is the frame builder's, over its
/// pseudo-header).
fn icmp_about(
    v6: bool,
    (ty, code): (u8, u8),
    earlier: &[Vec<u8>],
    (e, keep): (u8, u8),
    to: Option<&(Host, Port)>,
    turn: bool,
) -> Vec<u8> {
    let mut b = vec![ty, code, 0, 0, 0, 0, 0, 0];
    if let Some(f) = (!earlier.is_empty()).then(|| &earlier[usize::from(e) % earlier.len()]) {
        let l3 = if f.get(12..14) == Some(&[0x81, 0x00]) {
            18
        } else {
            14
        };
        let mut inner = f.get(l3..).unwrap_or_default().to_vec();
        readdress(&mut inner, to, turn);
        b.extend(inner.iter().take(usize::from(keep)));
    }
    if !v6 {
        let c = lb_common::csum::ipv4_header(&b);
        b[2..4].copy_from_slice(&c.to_be_bytes());
    }
    b
}

/// The frame `p` describes; `earlier` are the input's frames before it.
fn build(p: &Packet, earlier: &[Vec<u8>]) -> Vec<u8> {
    let (src, dst) = (host(&p.src, p.v6), host(&p.dst, p.v6));
    let (sport, dport) = (port(&p.sport), port(&p.dport));
    let ttl = match p.ttl {
        Ttl::Normal => 64,
        Ttl::One => 1,
        Ttl::Zero => 0,
        Ttl::Any(t) => t,
    };
    let mut payload = p.payload.clone();
    payload.truncate(64);
    let l4 = match &p.transport {
        Transport::Tcp { flags } => L4::Tcp {
            sport,
            dport,
            flags: *flags,
        },
        Transport::Udp { no_csum } => L4::Udp {
            sport,
            dport,
            no_csum: *no_csum,
        },
        Transport::Icmp { ty, code, body } => {
            let mut b = vec![*ty, *code, 0, 0];
            b.extend(body.iter().take(64));
            L4::Raw {
                proto: if p.v6 { 58 } else { 1 },
                bytes: b,
            }
        }
        Transport::IcmpAbout {
            ty,
            code,
            earlier: e,
            keep,
            to,
            turn,
        } => L4::Raw {
            proto: if p.v6 { 58 } else { 1 },
            bytes: icmp_about(p.v6, (*ty, *code), earlier, (*e, *keep), to.as_ref(), *turn),
        },
        Transport::Other { proto, body } => L4::Raw {
            proto: *proto,
            bytes: body.iter().take(64).copied().collect(),
        },
    };
    let raw = matches!(l4, L4::Raw { .. });
    let mut bytes = if p.v6 {
        let (s, d) = (Ipv6Addr::from(src), Ipv6Addr::from(dst));
        let mut f = Frame6::tcp(
            SocketAddrV6::new(s, 0, 0, 0),
            SocketAddrV6::new(d, 0, 0, 0),
            0,
        );
        (f.l4, f.hop_limit, f.vlan) = (l4, ttl, p.vlan);
        f.payload = if raw { Vec::new() } else { payload };
        f.ext = p.ext.iter().take(6).map(ext_header).collect();
        f.build()
    } else {
        let ip4 = |a: [u8; 16]| Ipv4Addr::new(a[12], a[13], a[14], a[15]);
        let mut f = Frame::tcp(
            SocketAddrV4::new(ip4(src), 0),
            SocketAddrV4::new(ip4(dst), 0),
            0,
        );
        (f.l4, f.ttl, f.vlan) = (l4, ttl, p.vlan);
        f.payload = if raw { Vec::new() } else { payload };
        let mut opts: Vec<u8> = p.ip_options.iter().take(40).copied().collect();
        opts.resize(opts.len().div_ceil(4) * 4, 0);
        f.ip_options = opts;
        if let Some(frag) = p.frag {
            f.frag = frag;
        }
        f.build()
    };
    for &(at, x) in p.flips.iter().take(4) {
        let at = usize::from(at) % bytes.len().min(128);
        bytes[at] ^= x;
    }
    if let Some(n) = p.cut {
        bytes.truncate(14 + usize::from(n));
    }
    bytes
}

/// The frames an input stands for. Frames shorter than an Ethernet header are left out:
/// `BPF_PROG_TEST_RUN` refuses them (a NIC never delivers one), so the program cannot be
/// asked (the corpus's `pass_short` frames are 14 bytes and more: cut IP or VLAN headers).
fn frames(data: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = match data.split_first() {
        None => Vec::new(),
        Some((mode, raw)) if mode % 2 == 0 => vec![raw.to_vec()],
        Some((_, rest)) => {
            let mut u = Unstructured::new(rest);
            let Ok(packets) = Vec::<Packet>::arbitrary(&mut u) else {
                return Vec::new();
            };
            let mut built: Vec<Vec<u8>> = Vec::new();
            for p in packets.iter().take(4) {
                let f = build(p, &built);
                built.push(f);
            }
            built
        }
    };
    frames.retain(|f| f.len() >= 14);
    frames
}

/// With `LB_FUZZ_FRAMES_OUT=DIR`, every frame an input stands for is also written to DIR (as
/// plain bytes, named by `frame_file_name`): so that a corpus can be replayed through the host model's own
/// target (`parse_classify`) to count the model's edges it reaches (README: Tests).
fn write_out(frames: &[Vec<u8>]) {
    static DIR: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    let Some(dir) = DIR.get_or_init(|| std::env::var_os("LB_FUZZ_FRAMES_OUT").map(Into::into))
    else {
        return;
    };
    for f in frames {
        std::fs::write(dir.join(frame_file_name(f)), f).expect("write a frame");
    }
}

fuzz_target!(init: init(), |data: &[u8]| {
    let frames = frames(data);
    write_out(&frames);
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let st = s.as_mut().expect("initialised");
        forget_flows(&mut st.h, &mut st.model);
        for (i, f) in frames.iter().enumerate() {
            if let Err(e) = compare(&mut st.h, &mut st.model, f) {
                panic!("kernel and model disagree on frame {i} of {}: {e}", frames.len());
            }
        }
    });
});
