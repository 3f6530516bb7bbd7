//! Health probes: one tokio task per (service, backend), each on its own interval and bounded
//! by its timeout, so a slow or black-holed backend never delays another. Probes never touch
//! maps: each result goes to the writer as an `Event::Probe`.
//!
//! Probes come from the LB host's own stack: the source address is the LB's address on the
//! interface towards the backend (the lab's 192.0.2.1), which is what a backend's firewall
//! must allow. They go straight to the backend (DIP:probe port), not through the VIP.

use std::{collections::HashMap, net::SocketAddr};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::mpsc,
    task::JoinHandle,
    time::{MissedTickBehavior, timeout},
};

use crate::{
    reconcile::{Event, ProbeReport, ProbeTarget},
    spec::ServiceSpec,
};

/// Runs one probe now.
pub async fn check(t: &ProbeTarget) -> (bool, String) {
    match timeout(t.timeout, attempt(t)).await {
        Ok(Ok(detail)) => (true, detail),
        Ok(Err(detail)) => (false, detail),
        Err(_) => (false, format!("timeout after {:?}", t.timeout)),
    }
}

async fn attempt(t: &ProbeTarget) -> Result<String, String> {
    let mut s = TcpStream::connect(t.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
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

async fn run(t: ProbeTarget, tx: mpsc::Sender<Event>) {
    let mut iv = tokio::time::interval(t.interval);
    // A probe that ran long does not cause a burst of catch-up probes.
    iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        iv.tick().await;
        let (ok, detail) = check(&t).await;
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
    tasks: HashMap<(ServiceSpec, SocketAddr), (ProbeTarget, JoinHandle<()>)>,
}

impl Prober {
    #[must_use]
    pub fn new(tx: mpsc::Sender<Event>) -> Self {
        Self {
            tx,
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
                    let h = tokio::spawn(run(t.clone(), self.tx.clone()));
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
        }
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
        assert_eq!(check(&target(ok, None)).await, (true, "connected".into()));
        assert_eq!(
            check(&target(ok, Some("/healthz"))).await,
            (true, "HTTP 200".into())
        );
        let err = server("500 Internal Server Error").await;
        assert_eq!(
            check(&target(err, Some("/healthz"))).await,
            (false, "HTTP 500".into())
        );
        // Nothing listens on a freshly closed port: refused.
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let (up, detail) = check(&target(closed, None)).await;
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
        let (up, detail) = check(&target(a, Some("/"))).await;
        assert!(!up);
        assert_eq!(detail, "timeout after 500ms");
    }
}
