//! ICMP from inside a namespace: raw sockets to send crafted messages and read replies, and a
//! ping.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// A raw ICMP socket in namespace `ns` (it receives every ICMP message the namespace gets),
/// with a short receive timeout so callers can poll against their own deadline.
///
/// # Errors
/// The socket cannot be made (not root?).
pub fn icmp_socket(ns: &Netns) -> anyhow::Result<std::os::fd::OwnedFd> {
    raw_socket(ns, libc::AF_INET, libc::IPPROTO_ICMP)
}

/// A raw socket of `domain` and `proto` in namespace `ns`, with a 100 ms receive timeout.
fn raw_socket(
    ns: &Netns,
    domain: libc::c_int,
    proto: libc::c_int,
) -> anyhow::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    Ok(ns.enter(move || -> std::io::Result<OwnedFd> {
        // SAFETY: a plain socket call; the descriptor is owned by the returned OwnedFd.
        unsafe {
            let fd = libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let sock = OwnedFd::from_raw_fd(fd);
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            let len = size_of::<libc::timeval>() as libc::socklen_t;
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                len,
            );
            Ok(sock)
        }
    })?)
}

/// Sends an ICMP message (checksum filled in here) to `dst`; the kernel adds the IP header.
///
/// # Errors
/// The send fails.
pub fn send_icmp(
    sock: &std::os::fd::OwnedFd,
    dst: Ipv4Addr,
    mut msg: Vec<u8>,
) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    msg[2..4].copy_from_slice(&[0, 0]);
    let c = lb_common::csum::ipv4_header(&msg); // the same one's-complement sum
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.octets()),
        },
        sin_zero: [0; 8],
    };
    let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: valid buffer and address for the duration of the call.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&raw const to).cast(),
            len,
        )
    };
    if n < 0 {
        bail!("sendto {dst}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives IP packets carrying ICMP on `sock` until `want` accepts one (returned whole, IP
/// header included) or `timeout` passes.
#[must_use]
pub fn recv_icmp(
    sock: &std::os::fd::OwnedFd,
    timeout: Duration,
    want: impl Fn(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd as _;
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while std::time::Instant::now() < deadline {
        // SAFETY: a valid buffer of the given length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else { continue }; // a receive-timeout tick
        if want(&buf[..n]) {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

/// Sends one ICMP echo request from namespace `ns` to `dst` and returns the source address of
/// the matching echo reply.
///
/// # Errors
/// No matching reply within `timeout`.
pub fn ping(ns: &Netns, dst: Ipv4Addr, timeout: Duration) -> anyhow::Result<Ipv4Addr> {
    let sock = icmp_socket(ns)?;
    let id = u16::try_from(std::process::id() & 0xffff).expect("masked");
    let mut msg = vec![8u8, 0, 0, 0];
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&1u16.to_be_bytes());
    msg.extend_from_slice(b"lb-lab-ping");
    send_icmp(&sock, dst, msg)?;
    let reply = recv_icmp(&sock, timeout, |p| {
        let ihl = usize::from(p[0] & 0x0f) * 4;
        p.len() >= ihl + 8 && p[ihl] == 0 && p[ihl + 4..ihl + 6] == id.to_be_bytes()
    })
    .with_context(|| format!("no echo reply from {dst} within {timeout:?}"))?;
    Ok(Ipv4Addr::new(reply[12], reply[13], reply[14], reply[15]))
}

/// A raw ICMPv6 socket in namespace `ns`: it receives every ICMPv6 message the namespace
/// gets (without the IPv6 header), and the kernel computes the checksum of what it sends.
///
/// # Errors
/// The socket cannot be made (not root?).
pub fn icmp6_socket(ns: &Netns) -> anyhow::Result<std::os::fd::OwnedFd> {
    raw_socket(ns, libc::AF_INET6, libc::IPPROTO_ICMPV6)
}

/// Sends an ICMPv6 message to `dst` (the kernel adds the IPv6 header and the checksum).
///
/// # Errors
/// The send fails.
pub fn send_icmp6(
    sock: &std::os::fd::OwnedFd,
    dst: std::net::Ipv6Addr,
    msg: &[u8],
) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: all-zero is a valid sockaddr_in6.
    let mut to: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    to.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    to.sin6_addr.s6_addr = dst.octets();
    // SAFETY: valid buffer and address for the duration of the call.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&raw const to).cast(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if n < 0 {
        bail!("sendto {dst}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives ICMPv6 messages on `sock` until `want` accepts one (the message and its source)
/// or `timeout` passes.
#[must_use]
pub fn recv_icmp6(
    sock: &std::os::fd::OwnedFd,
    timeout: Duration,
    want: impl Fn(&[u8]) -> bool,
) -> Option<(Vec<u8>, std::net::Ipv6Addr)> {
    use std::os::fd::AsRawFd as _;
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while std::time::Instant::now() < deadline {
        // SAFETY: all-zero is a valid sockaddr_in6.
        let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut flen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: valid buffers of the given lengths.
        let n = unsafe {
            libc::recvfrom(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &raw mut flen,
            )
        };
        let Ok(n) = usize::try_from(n) else { continue }; // a receive-timeout tick
        if want(&buf[..n]) {
            return Some((
                buf[..n].to_vec(),
                std::net::Ipv6Addr::from(from.sin6_addr.s6_addr),
            ));
        }
    }
    None
}

/// Sends one ICMPv6 echo request from namespace `ns` to `dst` and returns the source address
/// of the matching echo reply.
///
/// # Errors
/// No matching reply within `timeout`.
pub fn ping6(
    ns: &Netns,
    dst: std::net::Ipv6Addr,
    timeout: Duration,
) -> anyhow::Result<std::net::Ipv6Addr> {
    let sock = icmp6_socket(ns)?;
    let id = u16::try_from(std::process::id() & 0xffff).expect("masked");
    let mut msg = vec![128u8, 0, 0, 0];
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&1u16.to_be_bytes());
    msg.extend_from_slice(b"lb-lab-ping6");
    send_icmp6(&sock, dst, &msg)?;
    recv_icmp6(&sock, timeout, |m| {
        m.len() >= 8 && m[0] == 129 && m[4..6] == id.to_be_bytes()
    })
    .map(|(_, from)| from)
    .with_context(|| format!("no ICMPv6 echo reply from {dst} within {timeout:?}"))
}
