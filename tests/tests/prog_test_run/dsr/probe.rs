//! Probes through the tunnel (`--probe-via tunnel`): the probe device's tc program,
//! `lb_probe_encap`, run with `BPF_PROG_TEST_RUN` on a probe's packet as the kernel's TCP
//! sends it (a SYN from the encap source to VIP:port), its mark naming the backend's entry
//! and the service's mode. Each mode's exact output, as the fast path encapsulates a client's
//! packet to the same backend, and each refusal with its counter.
//!
//! The GUE source port and the IPv6 flow label come from the kernel's flow hash of the skb
//! (`bpf_get_hash_recalc`), whose key is random per boot: those fields are read back from the
//! output, checked to be the encoding of a hash (`gue_sport`'s range), and every other byte,
//! the outer checksums included, is compared exactly.

use std::net::{IpAddr, SocketAddrV4, SocketAddrV6};

use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use lb_common::encap::{
    mode,
    probe::{self, Outcome},
};
use lb_integration::packet::{Frame, Frame6, LB_MAC, Outer, TCP_SYN, encapsulated, remac};

use super::{
    super::{B1, B1_MAC, B2, B2_MAC},
    B62, B62_MAC, Fixture, GUE_PORT, SRC4, SRC6, VIP, VIP6, with_dsr,
};

/// `TC_ACT_REDIRECT` and `TC_ACT_SHOT`.
const REDIRECT: u32 = 7;
const SHOT: u32 = 2;

/// The live backend entry of `service`'s backend at `ip`.
fn entry(fx: &Fixture, service: &str, ip: IpAddr) -> u32 {
    let spec = service.parse().unwrap();
    fx.h.rec
        .live()
        .backends_of_spec(&spec)
        .find(|(a, _)| a.ip() == ip)
        .map_or_else(|| panic!("{service} has no entry for {ip}"), |(_, id)| *id)
}

/// The program's counter of each outcome, summed over CPUs.
fn counts(fx: &Fixture) -> Vec<u64> {
    let m = &fx.h.rec.maps().side.probe_stats;
    probe::ALL
        .iter()
        .map(|o| m.get(&(*o as u32), 0).unwrap().iter().sum())
        .collect()
}

/// Runs `frame` through `lb_probe_encap` with `mark` on its skb; the action and the output,
/// and checks that exactly the counter of `outcome` moved, by one.
fn run(fx: &mut Fixture, frame: &[u8], mark: u32, outcome: Outcome) -> (u32, Vec<u8>) {
    let before = counts(fx);
    // struct __sk_buff up to `mark` (offset 8): `len` and `pkt_type` must be 0 on input.
    let mut ctx = [0u8; 12];
    ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let p: &mut SchedClassifier =
        fx.h.dp
            .ebpf
            .program_mut(probe::PROGRAM)
            .expect(probe::PROGRAM)
            .try_into()
            .unwrap();
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    let after = counts(fx);
    let moved: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let mut want = vec![0; probe::ALL.len()];
    want[outcome as usize] = 1;
    assert_eq!(moved, want, "counters by outcome {:?}", probe::ALL);
    (r.return_value, out)
}

/// A probe's SYN from the encap source to VIP:`port`.
fn syn4(port: u16) -> Vec<u8> {
    Frame::tcp(
        SocketAddrV4::new(SRC4, 41000),
        SocketAddrV4::new(VIP, port),
        TCP_SYN,
    )
    .build()
}

#[test]
fn tunnel_probes_leave_encapsulated_to_their_backend_in_each_mode() {
    with_dsr(|fx, _| {
        let src = IpAddr::V4(SRC4);
        // IPIP: the 53/udp service's backend 1 (a TCP probe of a UDP service, as `tcp:80`).
        let id = entry(fx, "203.0.113.60:53/udp", IpAddr::V4(B1));
        let syn = syn4(53);
        let (act, out) = run(
            fx,
            &syn,
            probe::mark(mode::IPIP, id).unwrap(),
            Outcome::Sent,
        );
        assert_eq!(act, REDIRECT);
        let want = encapsulated(
            &syn,
            (src, IpAddr::V4(B1)),
            Outer::Ipip,
            0,
            (LB_MAC, B1_MAC),
        );
        assert_eq!(out, want, "IPIP");

        // GUE: the 443/tcp service's backend 2.
        let id = entry(fx, "203.0.113.60:443/tcp", IpAddr::V4(B2));
        let syn = syn4(443);
        let (act, out) = run(fx, &syn, probe::mark(mode::GUE, id).unwrap(), Outcome::Sent);
        assert_eq!(act, REDIRECT);
        let sport = u16::from_be_bytes([out[34], out[35]]);
        assert_eq!(sport & 0xc000, 0xc000, "a hash's GUE source port: {sport}");
        let want = encapsulated(
            &syn,
            (src, IpAddr::V4(B2)),
            Outer::Gue {
                sport,
                dport: GUE_PORT,
            },
            0,
            (LB_MAC, B2_MAC),
        );
        assert_eq!(out, want, "GUE");

        // l2: the MACs only, to the 80/tcp service's backend 1.
        let id = entry(fx, "203.0.113.60:80/tcp", IpAddr::V4(B1));
        let syn = syn4(80);
        let (act, out) = run(fx, &syn, probe::mark(mode::L2, id).unwrap(), Outcome::Sent);
        assert_eq!(act, REDIRECT);
        assert_eq!(out, remac(&syn, LB_MAC, B1_MAC), "l2");

        // GUE over IPv6: the outer UDP checksum over the whole datagram.
        let id = entry(fx, "[2001:db8:3::60]:443/tcp", IpAddr::V6(B62));
        let syn = Frame6::tcp(
            SocketAddrV6::new(SRC6, 41000, 0, 0),
            SocketAddrV6::new(VIP6, 443, 0, 0),
            TCP_SYN,
        )
        .build();
        let (act, out) = run(fx, &syn, probe::mark(mode::GUE, id).unwrap(), Outcome::Sent);
        assert_eq!(act, REDIRECT);
        let label = u32::from_be_bytes([0, out[15] & 0x0f, out[16], out[17]]);
        let sport = u16::from_be_bytes([out[54], out[55]]);
        assert_eq!(sport & 0xc000, 0xc000, "a hash's GUE source port: {sport}");
        let want = encapsulated(
            &syn,
            (IpAddr::V6(SRC6), IpAddr::V6(B62)),
            Outer::Gue {
                sport,
                dport: GUE_PORT,
            },
            label,
            (LB_MAC, B62_MAC),
        );
        assert_eq!(out, want, "GUE6");
    });
}

#[test]
fn tunnel_probes_that_cannot_go_are_dropped_and_counted() {
    with_dsr(|fx, _| {
        let syn = syn4(53);
        // No probe's mark (another mark, or none): not ours to send.
        for mark in [0, 0x1234, probe::MARK_TAG ^ (1 << 20)] {
            let (act, out) = run(fx, &syn, mark, Outcome::NoBackend);
            assert_eq!((act, out), (SHOT, syn.clone()), "mark {mark:#x}");
        }
        // A probe's mark whose entry is empty (no backend has it).
        let (act, _) = run(
            fx,
            &syn,
            probe::mark(mode::IPIP, 0xfff0).unwrap(),
            Outcome::NoBackend,
        );
        assert_eq!(act, SHOT);
        // A backend whose next hop the agent has not resolved: no route (the next probe,
        // after the agent resolves it, goes).
        let id = entry(
            fx,
            "203.0.113.60:82/tcp",
            IpAddr::V4("192.0.2.15".parse().unwrap()),
        );
        let (act, _) = run(
            fx,
            &syn,
            probe::mark(mode::L2, id).unwrap(),
            Outcome::NoRoute,
        );
        assert_eq!(act, SHOT);
        // Not IP: malformed, untouched.
        let id = entry(fx, "203.0.113.60:53/udp", IpAddr::V4(B1));
        let mut arp = syn.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let (act, out) = run(
            fx,
            &arp,
            probe::mark(mode::IPIP, id).unwrap(),
            Outcome::Malformed,
        );
        assert_eq!((act, out), (SHOT, arp));
    });
}
