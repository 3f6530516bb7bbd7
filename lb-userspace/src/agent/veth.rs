//! The checks at attach: which served interfaces are veths, and whether each veth's peer can
//! take the frames the program sends into it.
//!
//! A frame redirected (or sent with `XDP_TX`) into a veth lands in its peer's receive ring,
//! which only a peer with NAPI drains: one with an XDP program, or with GRO on. Without, every
//! such frame is dropped, and only the lost-frame counters see it. With GRO on and TX checksum
//! offload on, the peer's own TCP and UDP leave with partial checksums that native XDP cannot
//! complete, and the far end counts `TcpInCsumErrors`. Both are one `ethtool` away, so the
//! agent says which command fixes what.
//!
//! The peer is often in another namespace (a container's `eth0`). The agent finds it through
//! the peer's namespace id: among `/run/netns/*` and the namespaces of running processes, the
//! one this namespace knows by that id; it reads the peer's settings from a thread that joins
//! that namespace. A peer it cannot find is reported as unchecked, not as fine.

use std::{
    fs::File,
    os::fd::{AsRawFd as _, RawFd},
    path::{Path, PathBuf},
};

use crate::netlink::{LinkFacts, Netlink};

/// What the agent learned about one served interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub iface: String,
    pub veth: bool,
    /// For a veth: its peer, if it could be read.
    pub peer: Option<Peer>,
    /// Why the peer could not be read.
    pub unchecked: Option<String>,
}

/// A veth's peer, as read in its own namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// How to run a command in the peer's namespace: `""` (here), or an `nsenter` prefix.
    pub enter: String,
    pub xdp: bool,
    /// `None`: the setting could not be read.
    pub gro: Option<bool>,
    pub tx_csum: Option<bool>,
}

/// The warnings for one report, each with the exact fix. Pure, so tested.
#[must_use]
pub fn findings(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    if !r.veth {
        return out;
    }
    let Some(p) = &r.peer else {
        out.push(format!(
            "{}: a veth whose peer could not be checked ({}): make sure the peer has GRO on \
             (`ethtool -K PEER gro on`) or an XDP program (`lb peer attach PEER`), or frames \
             the LB sends into {} are lost",
            r.iface,
            r.unchecked.as_deref().unwrap_or("unknown"),
            r.iface
        ));
        return out;
    };
    if !p.xdp && p.gro == Some(false) {
        out.push(format!(
            "{}: its veth peer {} has GRO off and no XDP program, so it cannot receive the \
             frames the LB sends into {} (veth needs NAPI on the peer): every one is lost. \
             Fix: `{}ethtool -K {} gro on`, or `{}lb peer attach {}`",
            r.iface, p.name, r.iface, p.enter, p.name, p.enter, p.name
        ));
    }
    if !p.xdp && p.gro == Some(true) && p.tx_csum == Some(true) {
        out.push(format!(
            "{}: its veth peer {} has TX checksum offload on: the TCP and UDP it sends carry \
             partial checksums that native XDP cannot complete, and receivers count \
             TcpInCsumErrors. Fix: `{}ethtool -K {} tx off`",
            r.iface, p.name, p.enter, p.name
        ));
    }
    out
}

/// Reads the facts of every served interface (blocking: the agent calls it once, at start).
#[must_use]
pub fn inspect(nl: &mut Netlink, served: &[(String, u32)]) -> Vec<Report> {
    served
        .iter()
        .map(|(name, ifindex)| inspect_one(nl, name, *ifindex))
        .collect()
}

fn inspect_one(nl: &mut Netlink, name: &str, ifindex: u32) -> Report {
    let mut r = Report {
        iface: name.to_owned(),
        ..Report::default()
    };
    let facts = match nl.link_facts(ifindex, None) {
        Ok(f) => f,
        Err(e) => {
            r.unchecked = Some(e.to_string());
            return r;
        }
    };
    r.veth = facts.veth;
    if !facts.veth {
        return r;
    }
    match peer_of(nl, &facts) {
        Ok(p) => r.peer = Some(p),
        Err(why) => r.unchecked = Some(why),
    }
    r
}

fn peer_of(nl: &mut Netlink, facts: &LinkFacts) -> Result<Peer, String> {
    let peer_index = facts.link.ok_or("the kernel names no peer")?;
    let peer = nl
        .link_facts(peer_index, facts.link_netnsid)
        .map_err(|e| e.to_string())?;
    let ns = match facts.link_netnsid {
        None => None,
        Some(id) => Some(find_netns(nl, id).ok_or_else(|| {
            format!("its namespace (id {id}) is neither in /run/netns nor any process's")
        })?),
    };
    let enter = ns
        .as_ref()
        .map_or_else(String::new, |p| format!("nsenter --net={} ", p.display()));
    let (gro, tx_csum) = read_offloads(ns.as_deref(), &peer.name);
    Ok(Peer {
        name: peer.name,
        enter,
        xdp: peer.xdp,
        gro,
        tx_csum,
    })
}

/// The namespace file of the namespace this one knows as `id`.
fn find_netns(nl: &mut Netlink, id: i32) -> Option<PathBuf> {
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path());
    let procs = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path().join("ns/net"));
    named.chain(procs).find(|p| {
        File::open(p).is_ok_and(|f| {
            nl.nsid_of_fd(f.as_raw_fd() as u32)
                .is_ok_and(|got| got == Some(id))
        })
    })
}

/// GRO and TX checksum offload of `dev`, read with ethtool ioctls from inside namespace `ns`
/// (a thread that joins it; the agent's own threads stay where they are).
fn read_offloads(ns: Option<&Path>, dev: &str) -> (Option<bool>, Option<bool>) {
    let ns = ns.map(Path::to_path_buf);
    let dev = dev.to_owned();
    std::thread::spawn(move || {
        if let Some(p) = ns {
            let Ok(f) = File::open(&p) else {
                return (None, None);
            };
            // SAFETY: setns on an open namespace file; it changes only this thread.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return (None, None);
            }
        }
        // SAFETY: a plain socket(2) call.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        if sock < 0 {
            return (None, None);
        }
        let out = (
            ethtool_value(sock, &dev, ETHTOOL_GGRO),
            ethtool_value(sock, &dev, ETHTOOL_GTXCSUM),
        );
        // SAFETY: closing the socket this thread opened.
        unsafe { libc::close(sock) };
        out
    })
    .join()
    .unwrap_or((None, None))
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_GGRO: u32 = 0x2b;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with `ifr_data`.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

fn ethtool_value(sock: RawFd, dev: &str, cmd: u32) -> Option<bool> {
    let mut v = EthtoolValue { cmd, data: 0 };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &raw mut v,
        _pad: [0; 16],
    };
    if dev.len() >= libc::IFNAMSIZ {
        return None;
    }
    for (d, s) in req.name.iter_mut().zip(dev.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCETHTOOL with an ifreq whose data points at a live ethtool_value.
    let rc = unsafe { libc::ioctl(sock, SIOCETHTOOL, &raw mut req) };
    (rc == 0).then_some(v.data != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn veth(peer: Peer) -> Report {
        Report {
            iface: "l0".into(),
            veth: true,
            peer: Some(peer),
            unchecked: None,
        }
    }

    fn peer(xdp: bool, gro: Option<bool>, tx: Option<bool>) -> Peer {
        Peer {
            name: "c0".into(),
            enter: "nsenter --net=/run/netns/client ".into(),
            xdp,
            gro,
            tx_csum: tx,
        }
    }

    #[test]
    fn a_peer_without_napi_gets_the_exact_fix() {
        let f = findings(&veth(peer(false, Some(false), Some(true))));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].contains("nsenter --net=/run/netns/client ethtool -K c0 gro on"),
            "{}",
            f[0]
        );
        assert!(f[0].contains("lb peer attach c0"), "{}", f[0]);
    }

    #[test]
    fn gro_with_tx_offload_gets_tx_off() {
        let f = findings(&veth(peer(false, Some(true), Some(true))));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("ethtool -K c0 tx off"), "{}", f[0]);
    }

    #[test]
    fn a_ready_peer_and_a_nic_say_nothing() {
        assert!(findings(&veth(peer(false, Some(true), Some(false)))).is_empty());
        assert!(findings(&veth(peer(true, Some(false), Some(true)))).is_empty());
        let nic = Report {
            iface: "eth0".into(),
            ..Report::default()
        };
        assert!(findings(&nic).is_empty());
    }

    #[test]
    fn an_unreadable_peer_is_unchecked_not_fine() {
        let r = Report {
            iface: "l0".into(),
            veth: true,
            peer: None,
            unchecked: Some("gone".into()),
        };
        let f = findings(&r);
        assert_eq!(f.len(), 1);
        assert!(f[0].contains("could not be checked (gone)"), "{}", f[0]);
    }
}
