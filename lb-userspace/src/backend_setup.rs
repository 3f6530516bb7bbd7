//! `lb backend setup l2|ipip|gue --vip ADDR [--iface IF] [--apply]`: what a Linux backend of
//! a floating-IP service needs, printed as the commands an operator would type, or done.
//!
//! A backend of a floating-IP (DSR) service receives packets addressed to the VIP and answers
//! from the VIP, straight to the client. So it must hold the VIP without claiming it on the
//! network: the VIP goes on loopback, and the ARP settings keep the backend from answering
//! (or announcing) the VIP on its real interface, where the LB is the VIP's owner. The
//! packets to the VIP arrive with the client's source on an interface the reply may not
//! leave by (it goes to a return-path router), so reverse-path filtering must be loose. For
//! `ipip` and `gue` the outer header must come off first: this kernel and many minimal ones
//! lack the tunnel modules, so the step attaches `lb_decap` (see [`crate::dataplane::Decap`]).
//!
//! [`plan`] is pure: the steps for a request, each with why it is there. [`render`] prints
//! them as a shell script; [`apply`] runs them in order (netlink for the address, `/proc/sys`
//! for the settings, aya for the program) and is idempotent: a second run changes nothing but
//! the decap program's VIP set, which becomes the request's.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use crate::{dataplane::Decap, link, netlink::Netlink};

/// The default pin directory of the decapsulation program (one directory per namespace and
/// interface under it).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb-decap";

/// A backend's floating-IP mode (the service's `floating_ip`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The LB rewrites only the MACs: nothing to strip.
    L2,
    /// IPv4-in-IPv4 / IPv6-in-IPv6.
    Ipip,
    /// GUE (UDP to the LB's GUE port).
    Gue,
}

impl Mode {
    /// The mode as the command line and the config spell it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::L2 => "l2",
            Self::Ipip => "ipip",
            Self::Gue => "gue",
        }
    }
}

/// One step of a backend's setup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The VIP on loopback, as a host address (/32, /128).
    VipOnLo(IpAddr),
    /// A sysctl under `/proc/sys/net/…`: its path components (an interface name with a dot
    /// stays one component) and value.
    Sysctl { path: Vec<String>, value: u8 },
    /// `lb_decap` on the interface, stripping IPIP and GUE (on `gue_port`) to these VIPs.
    Decap {
        mode: Mode,
        iface: String,
        vips: Vec<IpAddr>,
        gue_port: u16,
    },
    /// Undo: the VIP off loopback.
    VipOffLo(IpAddr),
    /// Undo: `lb_decap` off the interface: its pin directory `dir` removed (the pinned link
    /// was all that kept the program attached).
    RemoveDecap { iface: String, dir: PathBuf },
}

/// A step and the reason for it (printed as the comment above the command).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub step: Step,
    pub why: &'static str,
}

fn sysctl(path: &[&str], value: u8, why: &'static str) -> Planned {
    Planned {
        step: Step::Sysctl {
            path: path.iter().map(|s| (*s).to_owned()).collect(),
            value,
        },
        why,
    }
}

/// The steps that set up a backend of `vips` in `mode` on `iface`.
///
/// # Errors
/// No VIP, or a VIP that cannot be one (unspecified, loopback, multicast), named by value.
pub fn plan(
    mode: Mode,
    vips: &[IpAddr],
    iface: &str,
    gue_port: u16,
) -> anyhow::Result<Vec<Planned>> {
    if vips.is_empty() {
        bail!("--vip: at least one VIP is needed");
    }
    for v in vips {
        if v.is_unspecified() || v.is_loopback() || v.is_multicast() {
            bail!("--vip {v}: not a unicast address a VIP can have");
        }
    }
    if gue_port == 0 {
        bail!("--gue-port 0: not a port");
    }
    let mut steps: Vec<Planned> = vips
        .iter()
        .map(|v| Planned {
            step: Step::VipOnLo(*v),
            why: "The VIP on loopback: the stack accepts packets to it from any interface and \
                  sockets can bind and answer from it, while lo itself never speaks ARP or NDP.",
        })
        .collect();
    if vips.iter().any(IpAddr::is_ipv4) {
        for scope in ["all", iface] {
            steps.push(sysctl(
                &["ipv4", "conf", scope, "arp_ignore"],
                1,
                "Answer ARP only for addresses of the interface asked on: not for the VIP, \
                 whose owner on the link is the LB (the kernel takes the larger of `all` and \
                 the interface's value).",
            ));
            steps.push(sysctl(
                &["ipv4", "conf", scope, "arp_announce"],
                2,
                "Never give the VIP as the source of an ARP request (sent while the backend \
                 answers from it): neighbours would learn the backend's MAC for the VIP.",
            ));
        }
        steps.push(sysctl(
            &["ipv4", "conf", iface, "rp_filter"],
            2,
            "Loose reverse-path filtering: packets to the VIP arrive with the client's source \
             on this interface while the route back to the client may leave by another (the \
             return path), which strict filtering drops (the kernel takes the larger of `all` \
             and the interface's value, so 2 here is loose whatever `all` says).",
        ));
    }
    if mode != Mode::L2 {
        steps.push(Planned {
            step: Step::Decap {
                mode,
                iface: iface.to_owned(),
                vips: vips.to_vec(),
                gue_port,
            },
            why: "Strip the IPIP or GUE outer header of packets to these VIPs and pass the inner \
                  packet to the stack (the lb_decap XDP program, native mode, pinned; counted \
                  as stripped, refused_not_vip, refused_malformed, passed). No ip(8) command \
                  does this without the kernel's tunnel modules: `--apply` does it.",
        });
    }
    Ok(steps)
}

/// The steps that undo [`plan`]'s address and program, whose pins are under `dir`
/// ([`decap_dir`]); the sysctls stay: they may serve other VIPs, and they are harmless
/// without one.
#[must_use]
pub fn teardown(mode: Mode, vips: &[IpAddr], iface: &str, dir: &Path) -> Vec<Planned> {
    let mut steps = Vec::new();
    if mode != Mode::L2 {
        steps.push(Planned {
            step: Step::RemoveDecap {
                iface: iface.to_owned(),
                dir: dir.to_owned(),
            },
            why: "Detach lb_decap and remove its pins.",
        });
    }
    steps.extend(vips.iter().map(|v| Planned {
        step: Step::VipOffLo(*v),
        why: "The VIP off loopback.",
    }));
    steps
}

fn host_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

impl Step {
    /// The command an operator would type for this step.
    #[must_use]
    pub fn command(&self) -> String {
        match self {
            Self::VipOnLo(v) => format!("ip addr replace {v}/{} dev lo", host_len(*v)),
            Self::VipOffLo(v) => format!("ip addr del {v}/{} dev lo", host_len(*v)),
            // sysctl(8) writes a dot inside a component (an interface such as eth0.100) as '/'.
            Self::Sysctl { path, value } => format!(
                "sysctl -w net.{}={value}",
                path.iter()
                    .map(|c| c.replace('.', "/"))
                    .collect::<Vec<_>>()
                    .join(".")
            ),
            // No other command attaches it: `--apply` runs this step (and the ones above
            // again, each idempotent).
            Self::Decap {
                mode,
                iface,
                vips,
                gue_port,
            } => {
                let vips = vip_flags(vips);
                format!(
                    "lb backend setup {} --iface {iface}{vips} --gue-port {gue_port} --apply",
                    mode.name()
                )
            }
            Self::RemoveDecap { dir, .. } => format!("rm -r {}", dir.display()),
        }
    }
}

/// `--vip A --vip B`, with a leading space: the VIPs as the command line takes them.
#[must_use]
pub fn vip_flags(vips: &[IpAddr]) -> String {
    vips.iter().fold(String::new(), |mut s, v| {
        let _ = write!(s, " --vip {v}");
        s
    })
}

/// The steps as a shell script: each command under its reason.
#[must_use]
pub fn render(header: &str, steps: &[Planned]) -> String {
    let mut out = format!("# {header}\n");
    for (i, p) in steps.iter().enumerate() {
        let _ = writeln!(out, "\n# {}. {}", i + 1, wrap(p.why, 90).join("\n#    "));
        let _ = writeln!(out, "{}", p.step.command());
    }
    out
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("one line at least");
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_owned());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

/// Where `iface`'s decap program keeps its pins in this network namespace (the namespace's
/// inode keeps two containers' `eth0` apart).
///
/// # Errors
/// This namespace cannot be named.
pub fn decap_dir(pin_dir: &Path, iface: &str) -> anyhow::Result<PathBuf> {
    Ok(pin_dir.join(crate::peer::ns_iface(iface)?))
}

/// Runs the steps in order; returns one line per step saying what it did.
///
/// # Errors
/// Not root, no such interface, no bpffs under `pin_dir` (for the decap step), or a step the
/// kernel refuses; the steps before it stay done (each is idempotent: run again).
pub fn apply(steps: &[Planned], pin_dir: &Path) -> anyhow::Result<Vec<String>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("lb backend setup --apply must run as root (it changes addresses, sysctls and XDP)");
    }
    let mut nl = Netlink::open().context("opening rtnetlink")?;
    let mut done = Vec::new();
    for p in steps {
        let line = match &p.step {
            Step::VipOnLo(v) => {
                nl.address_replace(1, *v, host_len(*v))
                    .with_context(|| format!("{v}/{} on lo", host_len(*v)))?;
                format!("{v} on lo")
            }
            Step::VipOffLo(v) => {
                if nl
                    .address_delete(1, *v, host_len(*v))
                    .with_context(|| format!("{v} off lo"))?
                {
                    format!("{v} removed from lo")
                } else {
                    format!("{v} was not on lo")
                }
            }
            Step::Sysctl { path, value } => {
                let file = Path::new("/proc/sys/net").join(path.iter().collect::<PathBuf>());
                std::fs::write(&file, format!("{value}\n"))
                    .with_context(|| format!("writing {value} to {}", file.display()))?;
                format!("{} = {value}", file.display())
            }
            Step::Decap {
                iface,
                vips,
                gue_port,
                ..
            } => attach_decap(iface, vips, *gue_port, pin_dir)?,
            Step::RemoveDecap { iface, dir } => {
                let pin = link::pin_path(dir, iface);
                if pin.exists() {
                    link::detach(&pin).with_context(|| format!("removing {}", pin.display()))?;
                }
                if dir.exists() {
                    std::fs::remove_dir_all(dir)
                        .with_context(|| format!("removing {}", dir.display()))?;
                    format!("{iface}: lb_decap detached, {} removed", dir.display())
                } else {
                    format!("{iface}: no lb_decap of `lb backend setup` here")
                }
            }
        };
        done.push(line);
    }
    Ok(done)
}

fn attach_decap(
    iface: &str,
    vips: &[IpAddr],
    gue_port: u16,
    pin_dir: &Path,
) -> anyhow::Result<String> {
    crate::agent::check_bpffs(pin_dir)?;
    let ifindex = crate::agent::ifindex(iface)?;
    let dir = decap_dir(pin_dir, iface)?;
    // The maps are pinned by name under `dir`: a second run finds them and takes them over,
    // so the VIP set and the counters carry on.
    let mut decap = Decap::load(&dir, gue_port)
        .with_context(|| format!("loading lb_decap with its pins under {}", dir.display()))?;
    decap.set_vips(vips).context("writing the VIP set")?;
    let fd = decap.program().fd()?.try_clone()?;
    let pin = link::pin_path(&dir, iface);
    let how = {
        use std::os::fd::AsFd as _;
        link::attach(fd.as_fd(), ifindex, true, &pin)
            .with_context(|| format!("attaching lb_decap to {iface} in native mode"))?
    };
    Ok(format!(
        "{iface}: lb_decap attached in native mode ({}), stripping to {} VIP(s), GUE port {gue_port}, pinned at {}",
        match how {
            link::Attached::Created => "new link",
            link::Attached::Replaced => "replaced the earlier one",
        },
        vips.len(),
        pin.display()
    ))
}

/// The interface of the IPv4 (else IPv6) default route: `--iface`'s default.
///
/// # Errors
/// No default route, or netlink fails.
pub fn default_iface() -> anyhow::Result<String> {
    let mut nl = Netlink::open().context("opening rtnetlink")?;
    let routes = nl.routes().context("reading the routes")?;
    let oif = routes
        .iter()
        .filter(|r| r.prefix_len == 0)
        .min_by_key(|r| r.dst.is_ipv6())
        .and_then(|r| r.oif)
        .context("--iface: no default route to take the interface from; name one")?;
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(oif, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        bail!("--iface: the default route's interface {oif} has no name");
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(s: &[&str]) -> Vec<IpAddr> {
        s.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn l2_needs_the_vip_and_the_arp_settings_but_no_program() {
        let steps = plan(Mode::L2, &ips(&["203.0.113.60"]), "eth0", 6080).unwrap();
        let cmds: Vec<String> = steps.iter().map(|p| p.step.command()).collect();
        assert_eq!(
            cmds,
            [
                "ip addr replace 203.0.113.60/32 dev lo",
                "sysctl -w net.ipv4.conf.all.arp_ignore=1",
                "sysctl -w net.ipv4.conf.all.arp_announce=2",
                "sysctl -w net.ipv4.conf.eth0.arp_ignore=1",
                "sysctl -w net.ipv4.conf.eth0.arp_announce=2",
                "sysctl -w net.ipv4.conf.eth0.rp_filter=2",
            ]
        );
    }

    #[test]
    fn tunnels_add_the_decap_program_with_every_vip() {
        let vips = ips(&["203.0.113.60", "2001:db8:3::60"]);
        let steps = plan(Mode::Gue, &vips, "eth0.100", 7000).unwrap();
        assert_eq!(steps[1].step, Step::VipOnLo(vips[1]));
        assert_eq!(
            steps[1].step.command(),
            "ip addr replace 2001:db8:3::60/128 dev lo"
        );
        // A dotted interface name, as sysctl(8) spells it.
        assert!(
            steps
                .iter()
                .any(|p| p.step.command() == "sysctl -w net.ipv4.conf.eth0/100.rp_filter=2")
        );
        assert_eq!(
            steps.last().unwrap().step,
            Step::Decap {
                mode: Mode::Gue,
                iface: "eth0.100".into(),
                vips: vips.clone(),
                gue_port: 7000
            }
        );
        assert_eq!(
            plan(Mode::Ipip, &vips, "eth0", 6080)
                .unwrap()
                .last()
                .unwrap()
                .step
                .command(),
            "lb backend setup ipip --iface eth0 --vip 203.0.113.60 --vip 2001:db8:3::60 \
             --gue-port 6080 --apply"
        );
    }

    #[test]
    fn ipv6_only_needs_no_arp_settings() {
        // Linux answers neighbour solicitations only for the receiving interface's addresses.
        let steps = plan(Mode::Ipip, &ips(&["2001:db8:3::60"]), "eth0", 6080).unwrap();
        assert_eq!(steps.len(), 2, "{steps:?}");
        assert!(!steps.iter().any(|p| matches!(p.step, Step::Sysctl { .. })));
    }

    #[test]
    fn bad_requests_name_the_field() {
        let e = |m, v: &[&str], port| plan(m, &ips(v), "eth0", port).unwrap_err().to_string();
        assert_eq!(e(Mode::L2, &[], 6080), "--vip: at least one VIP is needed");
        assert_eq!(
            e(Mode::Gue, &["127.0.0.1"], 6080),
            "--vip 127.0.0.1: not a unicast address a VIP can have"
        );
        assert_eq!(
            e(Mode::Gue, &["0.0.0.0"], 6080),
            "--vip 0.0.0.0: not a unicast address a VIP can have"
        );
        assert_eq!(
            e(Mode::Gue, &["ff02::1"], 6080),
            "--vip ff02::1: not a unicast address a VIP can have"
        );
        assert_eq!(
            e(Mode::Gue, &["203.0.113.60"], 0),
            "--gue-port 0: not a port"
        );
    }

    #[test]
    fn teardown_undoes_the_program_then_the_addresses() {
        let vips = ips(&["203.0.113.60"]);
        let dir = Path::new("/sys/fs/bpf/lb-decap/4026531840_eth0");
        let steps = teardown(Mode::Gue, &vips, "eth0", dir);
        assert_eq!(
            steps.iter().map(|p| p.step.command()).collect::<Vec<_>>(),
            [
                "rm -r /sys/fs/bpf/lb-decap/4026531840_eth0",
                "ip addr del 203.0.113.60/32 dev lo"
            ]
        );
        assert_eq!(teardown(Mode::L2, &vips, "eth0", dir).len(), 1);
    }

    #[test]
    fn the_script_puts_each_reason_above_its_command() {
        let steps = plan(Mode::L2, &ips(&["203.0.113.60"]), "eth0", 6080).unwrap();
        let s = render("lb backend setup l2 --vip 203.0.113.60", &steps);
        assert!(
            s.starts_with("# lb backend setup l2 --vip 203.0.113.60\n\n# 1. The VIP on loopback")
        );
        assert!(s.contains("\nip addr replace 203.0.113.60/32 dev lo\n"));
        assert!(s.lines().all(|l| l.len() <= 100), "{s}");
        let numbered = s
            .lines()
            .filter(|l| {
                l.strip_prefix("# ")
                    .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
            })
            .count();
        assert_eq!(numbered, steps.len(), "{s}");
    }
}
