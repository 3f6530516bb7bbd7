//! The backends: one namespace each, running `lb-labd` (HTTP and UDP echo, named).

use std::{
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::workspace_bin;
use crate::netns::Netns;

/// One backend namespace and its server.
pub struct BackendNs {
    pub ns: Netns,
    pub name: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, where it has one: the servers listen there too.
    pub ip6: Option<std::net::Ipv6Addr>,
    /// More addresses the servers listen on (the VIPs of a floating-IP backend, which must be
    /// on its loopback first).
    pub also: Vec<std::net::IpAddr>,
    pub(super) server: Option<Child>,
}

impl BackendNs {
    /// Starts (or restarts) this backend's HTTP and UDP servers; returns once they listen.
    ///
    /// # Errors
    /// The server does not start.
    pub fn start_server(&mut self) -> anyhow::Result<()> {
        self.start_server_with_health(200)
    }

    /// As [`Self::start_server`], with `GET /healthz` answering `status`.
    ///
    /// # Errors
    /// The server does not start.
    pub fn start_server_with_health(&mut self, status: u16) -> anyhow::Result<()> {
        self.start_server_on(status, &[80], &[53])
    }

    /// As [`Self::start_server_with_health`], serving HTTP on `tcp` ports and UDP echo on
    /// `udp` ports.
    ///
    /// # Errors
    /// The server does not start.
    pub fn start_server_on(&mut self, status: u16, tcp: &[u16], udp: &[u16]) -> anyhow::Result<()> {
        self.stop_server();
        let labd = workspace_bin("lb-labd")?;
        let mut args = vec![
            "--name".to_owned(),
            self.name.clone(),
            "--health-status".to_owned(),
            status.to_string(),
        ];
        let addrs: Vec<std::net::IpAddr> = std::iter::once(self.ip.into())
            .chain(self.ip6.map(Into::into))
            .chain(self.also.iter().copied())
            .collect();
        for (flag, ports) in [("--http", tcp), ("--udp", udp)] {
            for p in ports {
                for a in &addrs {
                    let at = std::net::SocketAddr::new(*a, *p);
                    args.extend([flag.to_owned(), at.to_string()]);
                }
            }
        }
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .arg(&labd)
            .args(&args)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting lb-labd")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            bail!("lb-labd for {} did not start: {line:?}", self.name);
        }
        self.server = Some(child);
        Ok(())
    }

    /// Stops the server (its listening sockets close at once).
    pub fn stop_server(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for BackendNs {
    fn drop(&mut self) {
        self.stop_server();
    }
}
