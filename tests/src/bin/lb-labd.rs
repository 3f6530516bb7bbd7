//! A lab backend: a tiny HTTP/1.1 server (keep-alive; the body is the backend's name) and a
//! UDP echo server (the reply is "NAME PAYLOAD"). `GET /healthz` answers `--health-status`
//! (default 200), so a test can make a backend fail an HTTP probe while it still serves.
//! `--http` and `--udp` may repeat (HA-ports tests serve several ports). Prints `ready` once
//! every socket listens.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
};

fn main() {
    let mut name = String::new();
    let (mut http, mut udp) = (Vec::new(), Vec::new());
    let mut health: u16 = 200;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args
            .next()
            .unwrap_or_else(|| die(&format!("{a} needs a value")));
        match a.as_str() {
            "--name" => name = v,
            "--http" => http.push(v),
            "--udp" => udp.push(v),
            "--health-status" => {
                health = v
                    .parse()
                    .unwrap_or_else(|_| die("--health-status takes a number"));
            }
            _ => die(&format!("unknown argument {a}")),
        }
    }
    let tcp: Vec<TcpListener> = http
        .iter()
        .map(|a| TcpListener::bind(a).unwrap_or_else(|e| die(&format!("bind {a}: {e}"))))
        .collect();
    let udp: Vec<UdpSocket> = udp
        .iter()
        .map(|a| UdpSocket::bind(a).unwrap_or_else(|e| die(&format!("bind {a}: {e}"))))
        .collect();
    println!("ready");
    let _ = std::io::stdout().flush();
    for u in udp {
        let name = name.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = u.recv_from(&mut buf) {
                let mut reply = format!("{name} ").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = u.send_to(&reply, from);
            }
        });
    }
    for l in tcp {
        let name = name.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || serve(s, &name, health));
            }
        });
    }
    loop {
        std::thread::park();
    }
}

fn serve(s: TcpStream, name: &str, health: u16) {
    // Who the server saw connecting (tests check source NAT with it).
    let peer = s
        .peer_addr()
        .map_or_else(|_| "unknown".to_owned(), |a| a.to_string());
    // And the address it was reached at (floating-IP tests check it is the VIP).
    let local = s
        .local_addr()
        .map_or_else(|_| "unknown".to_owned(), |a| a.to_string());
    let Ok(mut w) = s.try_clone() else {
        return;
    };
    let mut r = BufReader::new(s);
    loop {
        // Read one request's headers; answer; keep the connection open for the next one.
        let mut request_line = String::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" && !request_line.is_empty() => break,
                Ok(_) if request_line.is_empty() => request_line = line,
                Ok(_) => {}
            }
        }
        let status = if request_line.starts_with("GET /healthz ") {
            health
        } else {
            200
        };
        let body = format!("{name}\n");
        let reason = if status == 200 { "OK" } else { "Error" };
        let resp = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nX-Peer: {peer}\r\nX-Local: {local}\r\nConnection: keep-alive\r\n\r\n{body}",
            body.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn die(msg: &str) -> ! {
    eprintln!("lb-labd: {msg}");
    std::process::exit(2)
}
