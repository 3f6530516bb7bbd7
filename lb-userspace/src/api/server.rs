//! The agent's side of the control socket.
//!
//! The socket is a Unix socket, mode 0600 and owned by root, and the server also checks the
//! peer's uid (`SO_PEERCRED`), so only root can change the load balancer.
//!
//! Bounds, so that clients cannot pile up work or memory in the agent:
//! * at most [`MAX_CONNECTIONS`] connections at once; one more is answered with an
//!   `unavailable` error and closed;
//! * a connection has [`REQUEST_TIMEOUT`] to send its request line, which is at most
//!   [`MAX_REQUEST`] bytes (longer lines are refused, not truncated); an idle connection is
//!   closed when the time is up;
//! * the answer must be taken within [`REQUEST_TIMEOUT`] as well.
//!
//! Waiting for the agent's answer is not bounded: a status walk over millions of flows takes
//! what it takes, and the connection holds a permit meanwhile.

use std::{path::Path, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, mpsc, oneshot},
    time::timeout,
};

use super::{Request, Response};
use crate::error::ErrorKind;

/// Default socket path (override with `--socket` or `LB_SOCKET`).
pub const DEFAULT_SOCKET: &str = "/run/lb/lb.sock";
/// Longest request line the server reads; longer ones are refused, not truncated.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Control connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send its request (and to read the answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Decodes one request line; the error names what is wrong (an `invalid` refusal).
///
/// # Errors
/// Not a request: bad JSON, an unknown operation, a field that does not parse.
pub fn decode(line: &str) -> Result<Request, String> {
    serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))
}

/// Binds the control socket: parent directory created, stale socket replaced, mode 0600.
///
/// # Errors
/// The directory or socket cannot be created.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket file left by a killed agent: connecting to it fails, so it is stale.
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// One request and where its answer goes, as the server hands it on.
pub type Call = (Request, oneshot::Sender<Response>);

/// Serves the control socket until the task is aborted; each connection is one request, sent
/// on `calls` wrapped by `wrap` (the agent wraps it into its writer's event).
pub async fn serve<E: Send + 'static>(
    listener: UnixListener,
    calls: mpsc::Sender<E>,
    wrap: fn(Call) -> E,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // One short line into an empty socket buffer: it never blocks, and if it cannot
            // be written the close says enough.
            let _ = stream.try_write(&answer(&Response::error(
                ErrorKind::Unavailable,
                format!(
                    "the agent serves {MAX_CONNECTIONS} control connections at once; try again"
                ),
            )));
            tracing::debug!("control connection refused: too many at once");
            continue;
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, calls, wrap).await {
                tracing::debug!(error = %e, "control connection ended with an error");
            }
            drop(permit);
        });
    }
}

fn answer(resp: &Response) -> Vec<u8> {
    let mut out = serde_json::to_vec(resp).unwrap_or_default();
    out.push(b'\n');
    out
}

async fn handle<E>(
    stream: UnixStream,
    calls: mpsc::Sender<E>,
    wrap: fn(Call) -> E,
) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = BufReader::new(rd).take(MAX_REQUEST as u64 + 1);
    let n = match timeout(REQUEST_TIMEOUT, rd.read_line(&mut line)).await {
        Ok(n) => n?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no request line in time",
            ));
        }
    };
    let resp = if uid != 0 {
        Response::error(
            ErrorKind::Denied,
            format!("permission denied: uid {uid} is not root"),
        )
    } else if n > MAX_REQUEST {
        Response::error(
            ErrorKind::Invalid,
            format!("request longer than {MAX_REQUEST} bytes"),
        )
    } else {
        match decode(&line) {
            Err(refusal) => Response::error(ErrorKind::Invalid, refusal),
            Ok(req) => {
                let (tx, rx) = oneshot::channel();
                let gone = || Response::error(ErrorKind::Unavailable, "the agent is shutting down");
                if calls.send(wrap((req, tx))).await.is_err() {
                    gone()
                } else {
                    rx.await.unwrap_or_else(|_| gone())
                }
            }
        }
    };
    timeout(REQUEST_TIMEOUT, wr.write_all(&answer(&resp)))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "answer not taken"))?
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use tokio::io::AsyncReadExt as _;

    use super::*;

    fn socket_path(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("lb-api-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("lb.sock")
    }

    async fn read_answer(s: &mut UnixStream) -> String {
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).await.unwrap();
        line
    }

    /// Idle clients cannot pile up: one past [`MAX_CONNECTIONS`] is told to try again, an idle
    /// connection is closed once [`REQUEST_TIMEOUT`] is up, and its permit serves the next
    /// client. (The clock is tokio's paused test clock: it moves only when every task waits.)
    #[tokio::test(start_paused = true)]
    async fn connections_are_bounded_in_number_and_idle_time() {
        let path = socket_path("bounds");
        let (tx, mut rx) = mpsc::channel::<Call>(4);
        let server = tokio::spawn(serve(bind(&path).unwrap(), tx, |c| c));
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(UnixStream::connect(&path).await.unwrap());
        }
        // Let the server take every one of them before the next arrives.
        tokio::task::yield_now().await;
        let mut extra = UnixStream::connect(&path).await.unwrap();
        let refused = read_answer(&mut extra).await;
        assert!(
            refused.contains("\"kind\":\"unavailable\"") && refused.contains("try again"),
            "{refused}"
        );
        let started = tokio::time::Instant::now();
        for s in &mut idle {
            let mut buf = [0u8; 16];
            assert_eq!(
                s.read(&mut buf).await.unwrap(),
                0,
                "an idle connection stays open"
            );
        }
        assert!(
            started.elapsed() >= REQUEST_TIMEOUT,
            "closed before its time"
        );
        // The permits are back: a real request is served.
        let mut c = UnixStream::connect(&path).await.unwrap();
        c.write_all(b"{\"query\":{\"op\":\"status\"}}\n")
            .await
            .unwrap();
        let Some((req, reply)) = rx.recv().await else {
            panic!("no request reached the writer")
        };
        assert_eq!(req, Request::Query(super::super::Query::Status));
        reply
            .send(Response::error(ErrorKind::Unavailable, "test"))
            .unwrap();
        assert!(read_answer(&mut c).await.contains("\"message\":\"test\""));
        server.abort();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// The request lines the README's API table documents decode as documented.
    #[test]
    fn the_documented_request_lines_decode() {
        use crate::api::Query;
        assert_eq!(decode("\"reload\"").unwrap(), Request::Reload);
        assert_eq!(
            decode("{\"flush_flows\":{}}").unwrap(),
            Request::FlushFlows {
                service: None,
                backend: None,
                client: None
            }
        );
        assert!(matches!(
            decode(
                "{\"query\":{\"op\":\"explain\",\"client\":\"198.51.100.2:40000\",\"service\":\"203.0.113.10:80/tcp\"}}"
            )
            .unwrap(),
            Request::Query(Query::Explain { .. })
        ));
        assert!(matches!(
            decode("{\"query\":{\"op\":\"flows\",\"client\":\"198.51.100.0/24\",\"limit\":5}}")
                .unwrap(),
            Request::Query(Query::Flows { limit: Some(5), .. })
        ));
        let done = serde_json::to_value(Response::Flushed { flushed: 3 }).unwrap();
        assert_eq!(done["result"], "flushed");
        assert_eq!(done["flushed"], 3);
    }

    /// A request line that is not a request is refused with a message that names the problem.
    #[test]
    fn bad_lines_are_refused_with_the_reason() {
        for (line, want) in [
            ("not json", "bad request"),
            ("{\"query\":{\"op\":\"nope\"}}", "unknown variant `nope`"),
            (
                "{\"change\":{\"op\":\"vip_del\",\"service\":\"203.0.113.10:80/sctp\"}}",
                "only tcp and udp",
            ),
            (
                "{\"change\":{\"op\":\"acl_add\",\"service\":\"203.0.113.10:80/tcp\",\"rule\":{\"order\":1,\"action\":\"permit\",\"prefix\":\"198.51.100.1/24\"}}}",
                "host bits",
            ),
        ] {
            let Err(message) = decode(line) else {
                panic!("{line} was accepted")
            };
            assert!(message.contains(want), "{line}: {message}");
        }
    }

    /// The control socket changes the data plane, so only root may connect: mode 0600 (not
    /// what the umask gives), and an unprivileged caller is refused by the kernel.
    #[tokio::test]
    async fn the_control_socket_is_root_only() {
        assert_eq!(
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() },
            0,
            "this test checks socket ownership: run it as root (cargo xtask test)"
        );
        let dir = std::env::temp_dir().join(format!("lb-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Searchable by anyone, so only the socket's own mode can refuse the caller below.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("lb.sock");
        let _listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let p = path.clone();
        // A thread that drops to uid/gid 65534 ("nobody"). The raw syscall changes only this
        // thread's credentials (glibc's setresuid would change every thread of the test
        // process); the thread ends right after.
        let as_nobody = std::thread::spawn(move || {
            // SAFETY: plain syscalls on this thread's own credentials.
            let rc = unsafe {
                libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534)
                    | libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534)
            };
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            std::os::unix::net::UnixStream::connect(&p).map(drop)
        })
        .join()
        .unwrap();
        let as_root = std::os::unix::net::UnixStream::connect(&path).map(drop);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(mode, 0o600, "socket mode {mode:o}");
        assert_eq!(
            as_nobody.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::PermissionDenied),
            "an unprivileged connect must be refused"
        );
        as_root.expect("root connects");
    }
}
