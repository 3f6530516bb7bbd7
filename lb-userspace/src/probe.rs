//! Health probes: one tokio task per (service, backend), each on its own interval and bounded
//! by its timeout, so a slow or black-holed backend never delays another. Probes never touch
//! maps: each result goes to the writer as an `Event::Probe`.
//!
//! Probes come from the LB host's own stack: the source address is the LB's address on the
//! interface towards the backend (the lab's 192.0.2.1), which is what a backend's firewall
//! must allow. By default they go straight to the backend (DIP:probe port), not through the
//! VIP. A floating-IP service's probes can instead go through the tunnel (`--probe-via
//! tunnel`): the socket, bound to the outer source address and marked for the pair
//! (`lb_common::encap::probe`), connects to VIP:probe port, and the probe device's tc program
//! encapsulates it to the backend, which answers straight from the VIP.

use std::{collections::HashMap, net::SocketAddr, os::fd::AsRawFd as _, sync::Arc};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
    sync::mpsc,
    task::JoinHandle,
    time::{MissedTickBehavior, timeout},
};

use crate::{
    reconcile::{Event, ProbeReport, ProbeTarget, Tunnel},
    spec::ServiceSpec,
};

/// Whether probes through the tunnel can run here: `Err(why)` if the agent could not set up
/// their path (the probe device, its rule, route and tc program), which each such probe then
/// reports as its failure.
pub type TunnelPath = Arc<Result<(), String>>;

/// Runs one probe now.
pub async fn check(t: &ProbeTarget, path: &TunnelPath) -> (bool, String) {
    match timeout(t.timeout, attempt(t, path)).await {
        Ok(Ok(detail)) => (true, detail),
        Ok(Err(detail)) => (false, detail),
        Err(_) => (false, format!("timeout after {:?}", t.timeout)),
    }
}

/// The probe's connection: straight, or through the tunnel.
async fn connect(t: &ProbeTarget, path: &TunnelPath) -> Result<TcpStream, String> {
    let (mark, source) = match t.via {
        None => {
            return TcpStream::connect(t.addr)
                .await
                .map_err(|e| format!("connect: {e}"));
        }
        Some(Tunnel::NoEntry) => {
            return Err("through the tunnel: the backend has no entry yet".into());
        }
        Some(Tunnel::Via { mark, source }) => (mark, source),
    };
    if let Err(why) = path.as_ref() {
        return Err(format!(
            "through the tunnel: the probe path is not set up: {why}"
        ));
    }
    let s = if t.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    let m: libc::c_int = mark.cast_signed();
    // SAFETY: a valid socket and a c_int option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            std::ptr::from_ref(&m).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!("SO_MARK: {}", std::io::Error::last_os_error()));
    }
    s.bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    s.connect(t.addr)
        .await
        .map_err(|e| format!("connect through the tunnel: {e}"))
}

async fn attempt(t: &ProbeTarget, path: &TunnelPath) -> Result<String, String> {
    let mut s = connect(t, path).await?;
    let Some(path) = &t.http_path else {
        return Ok("connected".into());
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: lb-probe\r\nConnection: close\r\n\r\n",
        t.addr.ip()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    // The status line is all we need; read until it is complete (bounded).
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("");
    let code = line.split_whitespace().nth(1).unwrap_or("");
    match (line.starts_with("HTTP/"), code) {
        (true, "200") => Ok("HTTP 200".into()),
        (true, c) => Err(format!("HTTP {c}")),
        (false, _) => Err(format!(
            "not an HTTP answer: {:?}",
            line.chars().take(40).collect::<String>()
        )),
    }
}

async fn run(t: ProbeTarget, tx: mpsc::Sender<Event>, path: TunnelPath) {
    let mut iv = tokio::time::interval(t.interval);
    // A probe that ran long does not cause a burst of catch-up probes.
    iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        iv.tick().await;
        let (ok, detail) = check(&t, &path).await;
        let r = ProbeReport {
            service: t.service,
            backend: t.backend,
            ok,
            detail,
        };
        if tx.send(Event::Probe(r)).await.is_err() {
            return;
        }
    }
}

/// The running probe tasks, kept equal to what the reconciler wants.
pub struct Prober {
    tx: mpsc::Sender<Event>,
    path: TunnelPath,
    tasks: HashMap<(ServiceSpec, SocketAddr), (ProbeTarget, JoinHandle<()>)>,
}

impl Prober {
    #[must_use]
    pub fn new(tx: mpsc::Sender<Event>, path: TunnelPath) -> Self {
        Self {
            tx,
            path,
            tasks: HashMap::new(),
        }
    }

    /// Starts probes that are wanted and not running, restarts changed ones, stops the rest.
    pub fn sync(&mut self, wanted: Vec<ProbeTarget>) {
        let mut keep = HashMap::new();
        for t in wanted {
            let key = (t.service, t.backend);
            match self.tasks.remove(&key) {
                Some((cur, h)) if cur == t => {
                    keep.insert(key, (cur, h));
                }
                old => {
                    if let Some((_, h)) = old {
                        h.abort();
                    }
                    let h = tokio::spawn(run(t.clone(), self.tx.clone(), self.path.clone()));
                    keep.insert(key, (t, h));
                }
            }
        }
        for (_, (_, h)) in self.tasks.drain() {
            h.abort();
        }
        self.tasks = keep;
    }

    /// Number of running probes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for (_, (_, h)) in self.tasks.drain() {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;

    fn target(addr: SocketAddr, path: Option<&str>) -> ProbeTarget {
        ProbeTarget {
            service: "203.0.113.10:80/tcp".parse().unwrap(),
            backend: addr,
            addr,
            http_path: path.map(str::to_owned),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            via: None,
        }
    }

    async fn check_direct(t: &ProbeTarget) -> (bool, String) {
        check(t, &Arc::new(Ok(()))).await
    }

    /// A one-shot HTTP server on loopback answering `status`.
    async fn server(status: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut b = [0u8; 512];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        a
    }

    #[tokio::test]
    async fn tcp_and_http_outcomes() {
        let ok = server("200 OK").await;
        assert_eq!(
            check_direct(&target(ok, None)).await,
            (true, "connected".into())
        );
        assert_eq!(
            check_direct(&target(ok, Some("/healthz"))).await,
            (true, "HTTP 200".into())
        );
        let err = server("500 Internal Server Error").await;
        assert_eq!(
            check_direct(&target(err, Some("/healthz"))).await,
            (false, "HTTP 500".into())
        );
        // Nothing listens on a freshly closed port: refused.
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let (up, detail) = check_direct(&target(closed, None)).await;
        assert!(!up && detail.starts_with("connect:"), "{detail}");
    }

    /// A server that accepts but never answers: the probe fails by its timeout, not later.
    #[tokio::test]
    async fn a_silent_backend_fails_by_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let (up, detail) = check_direct(&target(a, Some("/"))).await;
        assert!(!up);
        assert_eq!(detail, "timeout after 500ms");
    }

    /// A probe through the tunnel says why it cannot run: no entry for its backend yet, or no
    /// probe path on this host. Neither is ever taken for a healthy backend.
    #[tokio::test]
    async fn tunnel_probes_without_a_path_fail_saying_why() {
        let ok = server("200 OK").await;
        let mut t = target(ok, None);
        t.via = Some(Tunnel::NoEntry);
        let (up, detail) = check_direct(&t).await;
        assert!(!up && detail.contains("no entry yet"), "{detail}");
        t.via = Some(Tunnel::Via {
            mark: lb_common::encap::probe::mark(2, 7).unwrap(),
            source: ok.ip(),
        });
        let (up, detail) = check(&t, &Arc::new(Err("no dummy device".into()))).await;
        assert!(!up, "{detail}");
        assert_eq!(
            detail,
            "through the tunnel: the probe path is not set up: no dummy device"
        );
    }
}
