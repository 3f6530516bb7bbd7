//! The backends' decapsulation program (`lb_decap`) through `BPF_PROG_TEST_RUN`: IPIP and GUE
//! packets to a VIP of the backend stripped to the exact inner frame, to any other address
//! refused, malformed or truncated outer headers refused, everything else passed untouched;
//! each counted under its one outcome.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use lb_common::encap::decap::{ALL, Outcome};
use lb_integration::{
    fixture::{XDP_DROP, XDP_PASS, in_fresh_ns, pin_dir, run_once},
    packet::{Frame, Frame6, LB_MAC, Outer, TCP_SYN, encapsulated, remac},
};
use lb_userspace::dataplane::Decap;

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 60);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 0x60);
const LB4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const ME4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11));
const LB6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1));
const ME6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x11));
const ME_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const GUE: u16 = 6080;

struct Bench {
    d: Decap,
}

impl Bench {
    /// Runs `input`: checks the action, the output (`None`: untouched) and that exactly
    /// `outcome` was counted once.
    fn check(
        &mut self,
        what: &str,
        input: &[u8],
        action: u32,
        out: Option<&[u8]>,
        outcome: Outcome,
    ) {
        let before = self.d.counts().unwrap();
        let (got, bytes, _) = run_once(self.d.program(), input);
        let after = self.d.counts().unwrap();
        for o in ALL {
            let want = u64::from(o == outcome);
            assert_eq!(
                after[o as usize] - before[o as usize],
                want,
                "{what}: {} moved wrongly",
                o.name()
            );
        }
        assert_eq!(got, action, "{what}: action");
        if action == XDP_PASS {
            let want = out.unwrap_or(input);
            assert_eq!(
                lb_integration::packet::hex(&bytes),
                lb_integration::packet::hex(want),
                "{what}: output bytes (left: kernel, right: expected)"
            );
        }
    }
}

fn with_decap(f: impl FnOnce(&mut Bench) + Send + 'static) {
    in_fresh_ns("fxc", move |ns| {
        let mut d = Decap::load(&pin_dir(ns), GUE).expect("load the decapsulation program");
        d.set_vips(&[IpAddr::V4(VIP), IpAddr::V6(VIP6)]).unwrap();
        f(&mut Bench { d });
    });
}

fn client() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 40000)
}

fn client6() -> SocketAddrV6 {
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2), 40000, 0, 0)
}

/// `inner` as the LB sends it to this backend (from its MAC to ours).
fn wrapped(inner: &[u8], (src, dst): (IpAddr, IpAddr), outer: Outer) -> Vec<u8> {
    encapsulated(inner, (src, dst), outer, 0x12345, (LB_MAC, ME_MAC))
}

/// What the stack gets: the inner frame, from the outer frame's MACs.
fn stripped(inner: &[u8]) -> Vec<u8> {
    remac(inner, LB_MAC, ME_MAC)
}

#[test]
fn ipip_and_gue_to_a_vip_are_stripped_to_the_inner_packet() {
    with_decap(|b| {
        let gue = Outer::Gue {
            sport: 50000,
            dport: GUE,
        };
        let syn = Frame::tcp(client(), SocketAddrV4::new(VIP, 80), TCP_SYN).build();
        let syn6 = Frame6::tcp(client6(), SocketAddrV6::new(VIP6, 80, 0, 0), TCP_SYN).build();
        let udp = Frame::udp(client(), SocketAddrV4::new(VIP, 53)).build();
        for (what, inner, outer, ends) in [
            ("IPIP", &syn, Outer::Ipip, (LB4, ME4)),
            ("GUE", &udp, gue, (LB4, ME4)),
            ("IPIP6", &syn6, Outer::Ipip, (LB6, ME6)),
            ("GUE6", &syn6, gue, (LB6, ME6)),
        ] {
            let input = wrapped(inner, ends, outer);
            b.check(
                what,
                &input,
                XDP_PASS,
                Some(&stripped(inner)),
                Outcome::Stripped,
            );
        }
        // A tagged frame keeps its tag in front of the inner packet.
        let mut tagged = Frame::tcp(client(), SocketAddrV4::new(VIP, 80), TCP_SYN);
        tagged.vlan = Some(7);
        let tagged = tagged.build();
        let input = wrapped(&tagged, (LB4, ME4), gue);
        b.check(
            "GUE, tagged",
            &input,
            XDP_PASS,
            Some(&stripped(&tagged)),
            Outcome::Stripped,
        );
    });
}

#[test]
fn encapsulated_packets_to_other_addresses_or_malformed_are_refused() {
    with_decap(|b| {
        let gue = Outer::Gue {
            sport: 50000,
            dport: GUE,
        };
        // Inner destination not a VIP of this backend.
        let other = Frame::tcp(
            client(),
            SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 61), 80),
            TCP_SYN,
        )
        .build();
        b.check(
            "not a VIP",
            &wrapped(&other, (LB4, ME4), Outer::Ipip),
            XDP_DROP,
            None,
            Outcome::NotVip,
        );
        let other6 = Frame6::tcp(
            client6(),
            SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 0x61), 80, 0, 0),
            TCP_SYN,
        )
        .build();
        b.check(
            "not a VIP, v6",
            &wrapped(&other6, (LB6, ME6), gue),
            XDP_DROP,
            None,
            Outcome::NotVip,
        );

        let syn = Frame::tcp(client(), SocketAddrV4::new(VIP, 80), TCP_SYN).build();
        let ok = wrapped(&syn, (LB4, ME4), gue);
        // Truncated inside the inner header (the outer UDP header whole).
        b.check(
            "inner cut",
            &ok[..14 + 28 + 12],
            XDP_DROP,
            None,
            Outcome::Malformed,
        );
        // An inner version that is neither 4 nor 6.
        let mut v5 = ok.clone();
        v5[14 + 28] = 0x55;
        b.check("inner version 5", &v5, XDP_DROP, None, Outcome::Malformed);
        // An outer fragment (more fragments set).
        let mut frag = wrapped(&syn, (LB4, ME4), Outer::Ipip);
        frag[14 + 6] = 0x20;
        frag[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
        let c = lb_common::csum::ipv4_header(&frag[14..34]);
        frag[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
        b.check("outer fragment", &frag, XDP_DROP, None, Outcome::Malformed);
        // An outer IHL below 5.
        let mut ihl = wrapped(&syn, (LB4, ME4), Outer::Ipip);
        ihl[14] = 0x44;
        b.check("outer IHL 4", &ihl, XDP_DROP, None, Outcome::Malformed);
    });
}

#[test]
fn everything_else_passes_untouched() {
    with_decap(|b| {
        let syn = Frame::tcp(client(), SocketAddrV4::new(VIP, 80), TCP_SYN).build();
        b.check(
            "plain TCP to the VIP",
            &syn,
            XDP_PASS,
            None,
            Outcome::Passed,
        );
        // UDP to another port is no GUE.
        let other = wrapped(
            &syn,
            (LB4, ME4),
            Outer::Gue {
                sport: 50000,
                dport: 4789,
            },
        );
        b.check("UDP to 4789", &other, XDP_PASS, None, Outcome::Passed);
        // A UDP datagram cut inside its header.
        let cut = wrapped(
            &syn,
            (LB4, ME4),
            Outer::Gue {
                sport: 50000,
                dport: GUE,
            },
        );
        b.check(
            "UDP header cut",
            &cut[..14 + 20 + 4],
            XDP_PASS,
            None,
            Outcome::Passed,
        );
        // IPv6 in IPv4 (6in4) is not what the LB sends.
        let mut sixin4 = wrapped(&syn, (LB4, ME4), Outer::Ipip);
        sixin4[14 + 9] = 41;
        b.check("6in4", &sixin4, XDP_PASS, None, Outcome::Passed);
        // ARP, and an IPv4 frame with no room for its header (`BPF_PROG_TEST_RUN` takes no
        // frame shorter than Ethernet's 14 bytes).
        let mut arp = vec![0xff; 12];
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0; 28]);
        b.check("ARP", &arp, XDP_PASS, None, Outcome::Passed);
        b.check("no IP header", &syn[..20], XDP_PASS, None, Outcome::Passed);
    });
}
