//! Stable verdict reasons: every packet the program sees is counted under exactly one.
//!
//! The numbers are part of the interface (counters are read by number); a retired reason keeps
//! its number as `_UnusedN` (cilium's habit) and a new one takes a fresh number.

/// Why the program returned what it did. The action is fixed per reason, except that the
/// forwarding reasons use `XDP_TX` or `XDP_REDIRECT` depending on the egress device, and that
/// `drop_snat_exhausted` answers a dropped TCP SYN with a RST (`XDP_TX` or a redirect).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Reason {
    /// Client → VIP, DNAT to a backend, sent by XDP via the agent-resolved next hop.
    Forward = 0,
    /// Backend → client reply, reverse-NATed to the VIP, sent via the agent-resolved next hop.
    Reply = 1,
    /// Translated and sent, but the next hop came from the `bpf_fib_lookup` fallback.
    ForwardFib = 2,
    /// Translated, but no next hop resolved: handed to the kernel to route (`XDP_PASS`).
    PassNoNextHop = 3,
    /// Neither IPv4 nor IPv6 (ARP, QinQ, ...): `XDP_PASS`. The name is older than IPv6
    /// support, and stable.
    PassNotIpv4 = 4,
    /// IPv4, but neither to a VIP nor a reply of a tracked flow: `XDP_PASS`.
    PassNotOurs = 5,
    /// Too short to read the destination address, so it cannot be ours: `XDP_PASS`.
    PassShort = 6,
    /// To a VIP, but truncated headers, bad IHL, total length beyond the frame, bad TCP offset.
    DropMalformed = 7,
    /// To a VIP with IP options (not supported yet).
    DropIpOptions = 8,
    /// An IP fragment to a VIP (not reassembled; ports unknown for non-first fragments).
    DropFragment = 9,
    /// To a VIP address, but no service on that port and protocol.
    DropNoService = 10,
    /// The service has no eligible backend.
    DropNoBackend = 11,
    /// TTL (IPv4) or hop limit (IPv6) would expire on forwarding.
    DropTtl = 12,
    /// Neither TCP nor UDP to a VIP: only those are balanced.
    DropProto = 13,
    /// A new flow the endpoint's ACL denies.
    DropAcl = 14,
    /// A new flow to an internal VIP from outside its internal prefixes.
    DropNotInternal = 15,
    /// A backend of an internal VIP connecting to that VIP (hairpin; the reference drops it).
    DropHairpin = 16,
    /// To an instance-level public IP: translated to its instance (any protocol) and sent.
    PipIn = 17,
    /// From an instance with a public IP: source translated to the PIP and sent.
    PipOut = 18,
    /// An ICMP echo request to a VIP, answered by the LB itself (`XDP_TX`).
    EchoReply = 19,
    /// An ICMP echo request to a VIP over the rate limit (or echo turned off for the VIP).
    DropEchoLimited = 20,
    /// An ICMP error to a VIP about a tracked flow, translated and sent to its backend.
    IcmpToBackend = 21,
    /// An ICMP error from a backend about a tracked flow, translated to the VIP and sent.
    IcmpToClient = 22,
    /// An ICMP error to a VIP whose embedded packet is truncated or matches no tracked flow.
    DropIcmpUnmatched = 23,
    /// A backend of an internal VIP with `--hairpin snat` connecting to that VIP: DNAT to a
    /// backend and SNAT to the VIP, sent.
    HairpinSnat = 24,
    /// The reply of a hairpin flow: translated back (source the VIP, destination the connecting
    /// backend) and sent.
    HairpinReply = 25,
    /// A new hairpin flow for which no SNAT port was free.
    DropHairpinNoPort = 26,
    /// A hairpin flow, but the hairpin program is not installed (the tail call failed).
    DropHairpinUnavailable = 27,
    /// A TCP packet to a service with a flag combination no stack sends (SYN+FIN, SYN+RST, no
    /// flags, FIN+PSH+URG): never forwarded, never tracked.
    DropTcpFlags = 28,
    /// A packet from a backend's service port to a tracked flow's client that is not that flow's
    /// reply (the flow names another backend, closed a while ago, or the client reused its port
    /// to reach the backend directly): passed to the kernel untranslated.
    PassNotReply = 29,
    /// A covered backend's outbound flow to an address outside its rule's inside prefixes:
    /// source translated to the frontend address and a port of the backend's block, sent.
    Outbound = 30,
    /// A packet of an outbound flow returning to frontend:port: destination translated back
    /// to the backend, sent.
    OutboundReturn = 31,
    /// A new outbound flow for which no port of its backend's block was free (towards that
    /// destination): port exhaustion.
    DropSnatExhausted = 32,
    /// A covered backend's packet to one of its rule's inside prefixes: it keeps the backend's
    /// own address, so it is the kernel's to route.
    PassOutboundInside = 33,
    /// An outbound flow, but the outbound program is not installed (the tail call failed).
    DropOutboundUnavailable = 34,
    /// A stateless outbound rule's backend sent from a source port outside its block (its
    /// ephemeral port range is not set to the block), or a packet returned to a frontend port
    /// no block of a stateless rule holds.
    DropOutboundPort = 35,
    /// An IPv6 packet to a VIP whose extension-header chain is longer than the parser walks
    /// (`lb_common::hdr::IPV6_MAX_EXT`), or truncated inside it.
    DropExtHeaders = 36,
    /// An IPv6 packet to a VIP with a routing header whose segments left is not zero: its
    /// final destination is another address, not the VIP.
    DropRoutingHeader = 37,
    /// An ICMPv6 neighbour-discovery or router message (types 133–137): always the kernel's,
    /// untouched, even to a VIP.
    PassNdp = 38,
    /// Client → VIP of a floating-IP (direct server return) service, sent to its backend
    /// with the VIP kept as its destination: encapsulated (IPIP, GUE), or for `l2` with only
    /// the MACs rewritten. The backend answers the client itself.
    ForwardEncap = 39,
    /// A floating-IP packet with no way to its backend: no next hop the agent resolved nor
    /// one the kernel FIB gives, or for `l2` a backend that is not on a connected link (its
    /// next hop is a gateway, which would route the packet straight back to the VIP).
    DropNoNextHop = 40,
    /// A floating-IP packet that cannot be encapsulated: once encapsulated it would exceed
    /// the MTU of its egress link and it may be fragmented (IPv4 without DF), or the answer
    /// to it is rate-limited (`icmp_too_big_sent`), or it is an ICMP error (never answered
    /// with one), or the frame cannot grow by the outer headers (the driver's headroom).
    DropEncapMtu = 41,
    /// A floating-IP packet, but the encapsulating program is not installed (the tail call
    /// failed).
    DropEncapUnavailable = 42,
    /// A floating-IP packet (IPv4 with DF, or IPv6) that would exceed its egress link's MTU
    /// once encapsulated, answered with an ICMP "fragmentation needed" / ICMPv6 "packet too
    /// big" from the VIP giving that MTU minus the outer headers, rate-limited per CPU.
    IcmpTooBigSent = 43,
}

/// Every reason, in number order.
pub const ALL_REASONS: [Reason; 44] = [
    Reason::Forward,
    Reason::Reply,
    Reason::ForwardFib,
    Reason::PassNoNextHop,
    Reason::PassNotIpv4,
    Reason::PassNotOurs,
    Reason::PassShort,
    Reason::DropMalformed,
    Reason::DropIpOptions,
    Reason::DropFragment,
    Reason::DropNoService,
    Reason::DropNoBackend,
    Reason::DropTtl,
    Reason::DropProto,
    Reason::DropAcl,
    Reason::DropNotInternal,
    Reason::DropHairpin,
    Reason::PipIn,
    Reason::PipOut,
    Reason::EchoReply,
    Reason::DropEchoLimited,
    Reason::IcmpToBackend,
    Reason::IcmpToClient,
    Reason::DropIcmpUnmatched,
    Reason::HairpinSnat,
    Reason::HairpinReply,
    Reason::DropHairpinNoPort,
    Reason::DropHairpinUnavailable,
    Reason::DropTcpFlags,
    Reason::PassNotReply,
    Reason::Outbound,
    Reason::OutboundReturn,
    Reason::DropSnatExhausted,
    Reason::PassOutboundInside,
    Reason::DropOutboundUnavailable,
    Reason::DropOutboundPort,
    Reason::DropExtHeaders,
    Reason::DropRoutingHeader,
    Reason::PassNdp,
    Reason::ForwardEncap,
    Reason::DropNoNextHop,
    Reason::DropEncapMtu,
    Reason::DropEncapUnavailable,
    Reason::IcmpTooBigSent,
];
const _: () = assert!((ALL_REASONS.len() as u32) <= crate::consts::REASON_SLOTS);

impl Reason {
    /// Stable snake-case name, used by the CLI, JSON output and metrics.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::Reply => "reply",
            Self::ForwardFib => "forward_fib",
            Self::PassNoNextHop => "pass_no_next_hop",
            Self::PassNotIpv4 => "pass_not_ipv4",
            Self::PassNotOurs => "pass_not_ours",
            Self::PassShort => "pass_short",
            Self::DropMalformed => "drop_malformed",
            Self::DropIpOptions => "drop_ip_options",
            Self::DropFragment => "drop_fragment",
            Self::DropNoService => "drop_no_service",
            Self::DropNoBackend => "drop_no_backend",
            Self::DropTtl => "drop_ttl",
            Self::DropProto => "drop_proto",
            Self::DropAcl => "drop_acl",
            Self::DropNotInternal => "drop_not_internal",
            Self::DropHairpin => "drop_hairpin",
            Self::PipIn => "pip_in",
            Self::PipOut => "pip_out",
            Self::EchoReply => "echo_reply",
            Self::DropEchoLimited => "drop_echo_limited",
            Self::IcmpToBackend => "icmp_to_backend",
            Self::IcmpToClient => "icmp_to_client",
            Self::DropIcmpUnmatched => "drop_icmp_unmatched",
            Self::HairpinSnat => "hairpin_snat",
            Self::HairpinReply => "hairpin_reply",
            Self::DropHairpinNoPort => "drop_hairpin_no_port",
            Self::DropHairpinUnavailable => "drop_hairpin_unavailable",
            Self::DropTcpFlags => "drop_tcp_flags",
            Self::PassNotReply => "pass_not_reply",
            Self::Outbound => "outbound",
            Self::OutboundReturn => "outbound_return",
            Self::DropSnatExhausted => "drop_snat_exhausted",
            Self::PassOutboundInside => "pass_outbound_inside",
            Self::DropOutboundUnavailable => "drop_outbound_unavailable",
            Self::DropOutboundPort => "drop_outbound_port",
            Self::DropExtHeaders => "drop_ext_headers",
            Self::DropRoutingHeader => "drop_routing_header",
            Self::PassNdp => "pass_ndp",
            Self::ForwardEncap => "forward_encap",
            Self::DropNoNextHop => "drop_no_next_hop",
            Self::DropEncapMtu => "drop_encap_mtu",
            Self::DropEncapUnavailable => "drop_encap_unavailable",
            Self::IcmpTooBigSent => "icmp_too_big_sent",
        }
    }

    /// Whether packets counted under this reason are dropped.
    #[must_use]
    pub const fn is_drop(self) -> bool {
        !matches!(
            self,
            Self::Forward
                | Self::Reply
                | Self::ForwardFib
                | Self::PassNoNextHop
                | Self::PassNotIpv4
                | Self::PassNotOurs
                | Self::PassShort
                | Self::PassNotReply
                | Self::PassOutboundInside
                | Self::PassNdp
                | Self::Outbound
                | Self::OutboundReturn
                | Self::PipIn
                | Self::PipOut
                | Self::EchoReply
                | Self::IcmpToBackend
                | Self::IcmpToClient
                | Self::HairpinSnat
                | Self::HairpinReply
                | Self::ForwardEncap
                | Self::IcmpTooBigSent
        )
    }
}

/// Defines one class of reasons (drops, passes, sends) as its own enum, each variant the
/// reason of the same name: the fast path's verdict holds one of these, so a drop can only be
/// counted under a drop reason, a pass under a pass reason.
macro_rules! reason_class {
    ($(#[$m:meta])* $name:ident { $($v:ident => $r:ident),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u32)]
        pub enum $name {
            $($v),+
        }

        impl $name {
            /// Every variant.
            pub const ALL: &'static [Self] = &[$(Self::$v),+];

            /// The reason this is.
            #[must_use]
            pub const fn reason(self) -> Reason {
                match self {
                    $(Self::$v => Reason::$r),+
                }
            }
        }

        impl From<$name> for Reason {
            fn from(c: $name) -> Self {
                c.reason()
            }
        }
    };
}

reason_class!(
    /// Why a packet was dropped.
    DropReason {
        Malformed => DropMalformed,
        IpOptions => DropIpOptions,
        Fragment => DropFragment,
        NoService => DropNoService,
        NoBackend => DropNoBackend,
        Ttl => DropTtl,
        Proto => DropProto,
        Acl => DropAcl,
        NotInternal => DropNotInternal,
        Hairpin => DropHairpin,
        EchoLimited => DropEchoLimited,
        IcmpUnmatched => DropIcmpUnmatched,
        HairpinNoPort => DropHairpinNoPort,
        HairpinUnavailable => DropHairpinUnavailable,
        TcpFlags => DropTcpFlags,
        SnatExhausted => DropSnatExhausted,
        OutboundUnavailable => DropOutboundUnavailable,
        OutboundPort => DropOutboundPort,
        ExtHeaders => DropExtHeaders,
        RoutingHeader => DropRoutingHeader,
        NoNextHop => DropNoNextHop,
        EncapMtu => DropEncapMtu,
        EncapUnavailable => DropEncapUnavailable,
    }
);

reason_class!(
    /// Why a packet was passed to the kernel untouched (or, for `NoNextHop`, translated but
    /// left to the kernel to route).
    PassReason {
        NoNextHop => PassNoNextHop,
        NotIpv4 => PassNotIpv4,
        NotOurs => PassNotOurs,
        Short => PassShort,
        NotReply => PassNotReply,
        OutboundInside => PassOutboundInside,
        Ndp => PassNdp,
    }
);

reason_class!(
    /// Why a packet was sent on by the program itself (`XDP_TX` or a redirect).
    SendReason {
        Forward => Forward,
        Reply => Reply,
        ForwardFib => ForwardFib,
        PipIn => PipIn,
        PipOut => PipOut,
        EchoReply => EchoReply,
        IcmpToBackend => IcmpToBackend,
        IcmpToClient => IcmpToClient,
        HairpinSnat => HairpinSnat,
        HairpinReply => HairpinReply,
        Outbound => Outbound,
        OutboundReturn => OutboundReturn,
        ForwardEncap => ForwardEncap,
        IcmpTooBigSent => IcmpTooBigSent,
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_dense_and_names_unique() {
        for (i, r) in ALL_REASONS.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?} is out of order");
        }
        let mut names: Vec<_> = ALL_REASONS.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL_REASONS.len());
        assert!(Reason::DropProto.is_drop() && !Reason::PassShort.is_drop());
    }

    /// Every reason is in exactly one class, and the drop class is exactly the drops.
    #[test]
    fn every_reason_has_one_class() {
        let drops: Vec<Reason> = DropReason::ALL.iter().map(|d| d.reason()).collect();
        let passes: Vec<Reason> = PassReason::ALL.iter().map(|d| d.reason()).collect();
        let sends: Vec<Reason> = SendReason::ALL.iter().map(|d| d.reason()).collect();
        for r in ALL_REASONS {
            let n = [&drops, &passes, &sends]
                .iter()
                .filter(|c| c.contains(&r))
                .count();
            assert_eq!(n, 1, "{r:?} is in {n} classes");
            assert_eq!(r.is_drop(), drops.contains(&r), "{r:?}");
        }
    }
}
