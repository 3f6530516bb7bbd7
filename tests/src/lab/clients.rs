//! Clients: HTTP and UDP from the client namespaces through the VIP, long-lived connections,
//! and a paced stream of new connections.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::{CLIENT_IP, CLIENT_IP6, IO_TIMEOUT, Lab, VIP, VIP6};
use crate::netns::Netns;

impl Lab {
    /// One HTTP GET from the external client to `vip:port`.
    ///
    /// # Errors
    /// No external client, or the request fails within `timeout`.
    pub fn http_get_external(
        &self,
        vip: Ipv4Addr,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let ns = self.external.as_ref().context("no external client")?;
        let dst = SocketAddr::new(IpAddr::V4(vip), port);
        let s = ns.enter(move || TcpStream::connect_timeout(&dst, timeout))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        HttpConn {
            stream: BufReader::new(s),
        }
        .get()
    }

    /// One HTTP GET on a new connection from the client to `VIP:port`; returns the answering
    /// backend's name.
    ///
    /// # Errors
    /// Connect, send or receive fails or times out.
    pub fn http_get(&self, port: u16) -> anyhow::Result<String> {
        let mut c = self.http_connect(port)?;
        c.get()
    }

    /// As [`Self::http_get`], from a chosen client source address (the client namespace must
    /// have it), with `timeout` for the connect.
    ///
    /// # Errors
    /// Connect, send or receive fails or times out.
    pub fn http_get_from(
        &self,
        src: Ipv4Addr,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        self.http_connect_from(src, port, timeout)?.get()
    }

    /// Hairpin connections from backend b1 to its own internal VIP `vip`:80, until every
    /// backend has served one (at most 64): each server must see the VIP as the source, with
    /// a port from the SNAT range, and a second request on the connection (its tracked flow,
    /// both ways) must reach the same server from the same peer. The servers seen, and how
    /// many connections it took.
    ///
    /// # Errors
    /// A connection or request fails, or a server saw another source.
    pub fn hairpin_rounds(
        &self,
        vip: impl Into<IpAddr>,
    ) -> anyhow::Result<(std::collections::BTreeSet<String>, u64)> {
        let vip = vip.into();
        let mut seen = std::collections::BTreeSet::new();
        let mut conns = 0u64;
        // Each pick is the table's (50/50 for two backends); bounded.
        while seen.len() < self.backends.len() && conns < 64 {
            let mut c =
                Self::http_connect_in(&self.backends[0].ns, vip, 80, Duration::from_secs(1))
                    .with_context(|| format!("hairpin connection {conns}"))?;
            let (name, peer) = c.get_with_peer()?;
            anyhow::ensure!(
                peer.ip() == vip,
                "the server saw {peer}, not the VIP, as the source"
            );
            anyhow::ensure!(
                peer.port() >= 49_152,
                "SNAT port {} outside the range",
                peer.port()
            );
            anyhow::ensure!(
                c.get_with_peer()? == (name.clone(), peer),
                "the connection's second request went elsewhere"
            );
            seen.insert(name);
            conns += 1;
        }
        Ok((seen, conns))
    }

    /// Connects from inside `ns` (a backend, say) to `ip:port`, of either family.
    ///
    /// # Errors
    /// The connection cannot be made within `timeout`.
    pub fn http_connect_in(
        ns: &Netns,
        ip: impl Into<IpAddr>,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<HttpConn> {
        let dst = SocketAddr::new(ip.into(), port);
        let s = ns.enter(move || TcpStream::connect_timeout(&dst, timeout))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(HttpConn {
            stream: BufReader::new(s),
        })
    }

    /// As [`Self::http_connect`], from a chosen client source address.
    ///
    /// # Errors
    /// The connection cannot be made within `timeout`.
    pub fn http_connect_from(
        &self,
        src: Ipv4Addr,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<HttpConn> {
        self.http_connect_between(
            std::net::SocketAddrV4::new(src, 0),
            std::net::SocketAddrV4::new(VIP, port),
            timeout,
        )
    }

    /// A connection from the client, from a chosen source address and port (0: any; a port in
    /// TIME_WAIT may be reused), to any `dst`.
    ///
    /// # Errors
    /// The connection cannot be made within `timeout`.
    pub fn http_connect_between(
        &self,
        src: std::net::SocketAddrV4,
        dst: std::net::SocketAddrV4,
        timeout: Duration,
    ) -> anyhow::Result<HttpConn> {
        let s = self
            .client
            .enter(move || connect_from(src, SocketAddr::V4(dst), timeout))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(HttpConn {
            stream: BufReader::new(s),
        })
    }

    /// A keep-alive HTTP connection from the client to any address and port.
    ///
    /// # Errors
    /// The connection fails or times out.
    pub fn http_connect_at(&self, ip: Ipv4Addr, port: u16) -> anyhow::Result<HttpConn> {
        let dst = SocketAddr::new(IpAddr::V4(ip), port);
        let s = self
            .client
            .enter(move || TcpStream::connect_timeout(&dst, IO_TIMEOUT))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok(HttpConn {
            stream: BufReader::new(s),
        })
    }

    /// One HTTP GET from the client to any address (a PIP, say); returns the answering name.
    ///
    /// # Errors
    /// The request fails or times out.
    pub fn http_get_at(&self, ip: Ipv4Addr, port: u16) -> anyhow::Result<String> {
        let dst = SocketAddr::new(IpAddr::V4(ip), port);
        let s = self
            .client
            .enter(move || TcpStream::connect_timeout(&dst, IO_TIMEOUT))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        HttpConn {
            stream: BufReader::new(s),
        }
        .get()
    }

    /// One HTTP GET on a new connection from the client to `[VIP6]:port`; returns the
    /// answering backend's name.
    ///
    /// # Errors
    /// Connect, send or receive fails or times out.
    pub fn http_get6(&self, port: u16) -> anyhow::Result<String> {
        let vip = SocketAddr::new(IpAddr::V6(VIP6), port);
        let s = self
            .client
            .enter(move || TcpStream::connect_timeout(&vip, IO_TIMEOUT))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        HttpConn {
            stream: BufReader::new(s),
        }
        .get()
    }

    /// A UDP flow from the client's IPv6 address to `[VIP6]:port`.
    ///
    /// # Errors
    /// The socket cannot be made.
    pub fn udp_flow6(&self, port: u16) -> anyhow::Result<UdpFlow> {
        let s = self
            .client
            .enter(|| UdpSocket::bind(SocketAddr::new(IpAddr::V6(CLIENT_IP6), 0)))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok(UdpFlow {
            s,
            vip: SocketAddr::new(IpAddr::V6(VIP6), port),
        })
    }

    /// One HTTP GET from the client's IPv6 address `src` (the client namespace must have it)
    /// to `[dst]:port`, connecting within `timeout`; returns the answering backend's name.
    ///
    /// # Errors
    /// Connect, send or receive fails or times out.
    pub fn http_get6_from(
        &self,
        src: std::net::Ipv6Addr,
        dst: std::net::Ipv6Addr,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let s = self.client.enter(move || {
            connect_from6(src, std::net::SocketAddrV6::new(dst, port, 0, 0), timeout)
        })?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        HttpConn {
            stream: BufReader::new(s),
        }
        .get()
    }

    /// A keep-alive HTTP connection from the client to `VIP:port`.
    ///
    /// # Errors
    /// The connection cannot be made.
    pub fn http_connect(&self, port: u16) -> anyhow::Result<HttpConn> {
        self.http_connect_to(SocketAddr::new(IpAddr::V4(VIP), port))
    }

    /// A keep-alive HTTP connection from the client to `[VIP6]:port`.
    ///
    /// # Errors
    /// The connection cannot be made.
    pub fn http_connect6(&self, port: u16) -> anyhow::Result<HttpConn> {
        self.http_connect_to(SocketAddr::new(IpAddr::V6(VIP6), port))
    }

    fn http_connect_to(&self, vip: SocketAddr) -> anyhow::Result<HttpConn> {
        let s = self
            .client
            .enter(move || TcpStream::connect_timeout(&vip, IO_TIMEOUT))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(HttpConn {
            stream: BufReader::new(s),
        })
    }

    /// Starts a [`ConnStream`] from the client to `VIP:port`. Widens the client's ephemeral
    /// port range first: every closed connection holds its port in TIME_WAIT for 60 s.
    ///
    /// # Errors
    /// The sysctl fails.
    pub fn conn_stream(&self, port: u16) -> anyhow::Result<ConnStream> {
        self.client.exec(
            "sysctl",
            &["-qw", "net.ipv4.ip_local_port_range=1024 65535"],
        )?;
        Ok(ConnStream::start(
            &self.client,
            SocketAddr::new(IpAddr::V4(VIP), port),
        ))
    }

    /// One UDP request from the client to `VIP:port`; returns the answering backend's name.
    ///
    /// # Errors
    /// No answer within the timeout, or an answer from another address than the VIP.
    pub fn udp_ask(&self, port: u16, payload: &str) -> anyhow::Result<String> {
        self.udp_flow(port)?.ask(payload)
    }

    /// A UDP flow from the client to `VIP:port`: one socket, so every ask is one 5-tuple.
    ///
    /// # Errors
    /// The socket cannot be made.
    pub fn udp_flow(&self, port: u16) -> anyhow::Result<UdpFlow> {
        self.udp_flow_at(VIP, port)
    }

    /// As [`Self::udp_flow`], to any address.
    ///
    /// # Errors
    /// The socket cannot be made.
    pub fn udp_flow_at(&self, ip: Ipv4Addr, port: u16) -> anyhow::Result<UdpFlow> {
        let s = self
            .client
            .enter(|| UdpSocket::bind(SocketAddr::new(IpAddr::V4(CLIENT_IP), 0)))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok(UdpFlow {
            s,
            vip: SocketAddr::new(IpAddr::V4(ip), port),
        })
    }
}

/// One UDP 5-tuple from the client to a VIP port.
pub struct UdpFlow {
    s: UdpSocket,
    vip: SocketAddr,
}

impl UdpFlow {
    /// Sends `payload` and returns the name of the backend that echoed it (through the VIP).
    ///
    /// # Errors
    /// No answer in time, or an answer that is not the echo from the VIP.
    pub fn ask(&self, payload: &str) -> anyhow::Result<String> {
        self.s.send_to(payload.as_bytes(), self.vip)?;
        let mut buf = [0u8; 1500];
        let (n, from) = self.s.recv_from(&mut buf).context("no UDP answer")?;
        if from != self.vip {
            bail!("UDP answer came from {from}, not from the VIP {}", self.vip);
        }
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let (name, echo) = text.split_once(' ').context("malformed echo")?;
        if echo != payload {
            bail!("echo {echo:?} != {payload:?}");
        }
        Ok(name.to_owned())
    }

    /// The flow's client address and port.
    ///
    /// # Errors
    /// The socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.s.local_addr()
    }

    /// Sends `payload` without waiting for an answer.
    ///
    /// # Errors
    /// The send fails.
    pub fn send_only(&self, payload: &[u8]) -> std::io::Result<()> {
        self.s.send_to(payload, self.vip).map(|_| ())
    }
}

/// A TCP connection bound to `src` (std cannot bind before connecting).
pub(super) fn connect_from(
    src: std::net::SocketAddrV4,
    dst: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd as _;
    let SocketAddr::V4(dst) = dst else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    let sin = |a: std::net::SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; the TcpStream takes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let local = sin(src);
        if libc::bind(fd, (&raw const local).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SO_SNDTIMEO bounds a blocking connect on Linux.
        stream.set_write_timeout(Some(timeout))?;
        let remote = sin(dst);
        if libc::connect(fd, (&raw const remote).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// What a [`ConnStream`] has seen so far.
#[derive(Clone, Debug, Default)]
pub struct StreamTally {
    /// Connections that got their answer.
    pub ok: u64,
    /// Every failed connection: its number and what went wrong.
    pub failures: Vec<String>,
    /// Answers per backend name.
    pub per_backend: std::collections::BTreeMap<String, u64>,
    /// The stream's thread has ended (stopped, or at its count or time bound).
    pub ended: bool,
}

/// New connections, one after another on a background thread in the client namespace: each
/// connects, makes one HTTP GET and closes. Traffic that must keep flowing while the agent is
/// killed, restarted or upgraded. Paced to at most one connection per [`Self::PACE`] (so the
/// load, and the ports it holds in TIME_WAIT, do not grow with the host's speed); bounded by
/// [`Self::MAX_CONNECTIONS`] and [`Self::MAX_TIME`]; stopped on drop.
pub struct ConnStream {
    shared: Shared,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ConnStream {
    pub const PACE: Duration = Duration::from_millis(1);
    /// 40 s at full pace, within the 64 Ki ports of the widened range.
    pub const MAX_CONNECTIONS: u64 = 40_000;
    pub const MAX_TIME: Duration = Duration::from_mins(2);
    /// How long [`Self::wait_more`] waits at most.
    pub const WAIT: Duration = Duration::from_secs(30);

    fn start(ns: &Netns, dst: SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let shared: Shared = std::sync::Arc::default();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sh, st) = (shared.clone(), stop.clone());
        let thread = ns.spawn_in(move || {
            let began = std::time::Instant::now();
            let mut n = 0u64;
            while !st.load(Ordering::Relaxed)
                && n < Self::MAX_CONNECTIONS
                && began.elapsed() < Self::MAX_TIME
            {
                // Pacing, not synchronisation: the next connection starts one PACE after the
                // previous one started, or at once if that one took longer.
                let due = began + Self::PACE * u32::try_from(n).unwrap_or(u32::MAX);
                std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
                n += 1;
                let got = TcpStream::connect_timeout(&dst, IO_TIMEOUT)
                    .map_err(anyhow::Error::from)
                    .and_then(|s| {
                        s.set_read_timeout(Some(IO_TIMEOUT))?;
                        s.set_write_timeout(Some(IO_TIMEOUT))?;
                        HttpConn {
                            stream: BufReader::new(s),
                        }
                        .get()
                    });
                let mut t = sh.0.lock().expect("tally");
                match got {
                    Ok(name) => {
                        t.ok += 1;
                        *t.per_backend.entry(name).or_default() += 1;
                    }
                    Err(e) => t.failures.push(format!("connection {n}: {e:#}")),
                }
                sh.1.notify_all();
            }
            sh.0.lock().expect("tally").ended = true;
            sh.1.notify_all();
        });
        Self {
            shared,
            stop,
            thread: Some(thread),
        }
    }

    /// Blocks until `n` more connections than now have succeeded.
    ///
    /// # Errors
    /// The stream ended, or [`Self::WAIT`] passed first.
    pub fn wait_more(&self, n: u64) -> anyhow::Result<()> {
        let (lock, cv) = &*self.shared;
        let mut t = lock.lock().expect("tally");
        let want = t.ok + n;
        let deadline = std::time::Instant::now() + Self::WAIT;
        while t.ok < want {
            if t.ended {
                bail!("the connection stream ended after {} connections", t.ok);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                bail!(
                    "{} of {n} more connections in {:?}; failures so far: {:?}",
                    n + t.ok - want,
                    Self::WAIT,
                    t.failures
                );
            }
            t = cv.wait_timeout(t, left).expect("tally").0;
        }
        Ok(())
    }

    /// Stops the stream and returns what it saw.
    #[must_use]
    pub fn stop(mut self) -> StreamTally {
        self.halt();
        self.shared.0.lock().expect("tally").clone()
    }

    fn halt(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ConnStream {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct HttpConn {
    stream: BufReader<TcpStream>,
}

impl HttpConn {
    /// A connection over `s`, with the lab's I/O timeouts.
    ///
    /// # Errors
    /// The timeouts cannot be set.
    pub(super) fn over(s: TcpStream) -> std::io::Result<Self> {
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Self {
            stream: BufReader::new(s),
        })
    }

    /// One request on this connection; returns the body's first line (the backend's name).
    ///
    /// # Errors
    /// The request fails, times out or gets no 200.
    pub fn get(&mut self) -> anyhow::Result<String> {
        Ok(self.get_with_peer()?.0)
    }

    /// As [`Self::get`], also returning the client address the server saw (its `X-Peer`).
    ///
    /// # Errors
    /// As [`Self::get`], or no `X-Peer` header.
    pub fn get_with_peer(&mut self) -> anyhow::Result<(String, SocketAddr)> {
        let (name, peer, _) = self.get_with_ends()?;
        Ok((name, peer))
    }

    /// As [`Self::get_with_peer`], also returning the address the server was reached at (its
    /// `X-Local`).
    ///
    /// # Errors
    /// As [`Self::get_with_peer`], or no `X-Local` header.
    pub fn get_with_ends(&mut self) -> anyhow::Result<(String, SocketAddr, SocketAddr)> {
        self.stream
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")?;
        let mut status = String::new();
        self.stream.read_line(&mut status)?;
        if !status.starts_with("HTTP/1.1 200") {
            bail!("bad status line {status:?}");
        }
        let mut len = 0usize;
        let (mut peer, mut local) = (None, None);
        loop {
            let mut h = String::new();
            if self.stream.read_line(&mut h)? == 0 {
                bail!("connection closed in headers");
            }
            if h == "\r\n" {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse()?;
            } else if let Some(v) = lower.strip_prefix("x-peer:") {
                peer = Some(v.trim().parse::<SocketAddr>()?);
            } else if let Some(v) = lower.strip_prefix("x-local:") {
                local = Some(v.trim().parse::<SocketAddr>()?);
            }
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        let peer = peer.context("no X-Peer header")?;
        let local = local.context("no X-Local header")?;
        Ok((
            String::from_utf8_lossy(&body).trim().to_owned(),
            peer,
            local,
        ))
    }

    /// Closes the connection in order: our FIN, then the server's, read to the end (bounded by
    /// the read timeout), so both directions are closed when this returns.
    ///
    /// # Errors
    /// The shutdown or the read fails, or data arrives instead of the end.
    pub fn close(mut self) -> anyhow::Result<()> {
        self.stream.get_ref().shutdown(std::net::Shutdown::Write)?;
        let mut rest = Vec::new();
        self.stream.read_to_end(&mut rest)?;
        if !rest.is_empty() {
            bail!("{} bytes after the last response", rest.len());
        }
        Ok(())
    }

    /// The local (client) address of the connection.
    ///
    /// # Errors
    /// The socket is gone.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.stream.get_ref().local_addr()
    }
}

type Shared = std::sync::Arc<(std::sync::Mutex<StreamTally>, std::sync::Condvar)>;

/// As [`connect_from`], for IPv6: a TCP connection bound to `src`.
fn connect_from6(
    src: std::net::Ipv6Addr,
    dst: std::net::SocketAddrV6,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd as _;
    let sin6 = |ip: std::net::Ipv6Addr, port: u16| {
        // SAFETY: all-zero is a valid sockaddr_in6.
        let mut a: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        a.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        a.sin6_port = port.to_be();
        a.sin6_addr.s6_addr = ip.octets();
        a
    };
    let len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; the TcpStream takes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = sin6(src, 0);
        if libc::bind(fd, (&raw const local).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SO_SNDTIMEO bounds a blocking connect on Linux.
        stream.set_write_timeout(Some(timeout))?;
        let remote = sin6(*dst.ip(), dst.port());
        if libc::connect(fd, (&raw const remote).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}
