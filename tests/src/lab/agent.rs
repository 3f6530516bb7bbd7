//! Running the agent in the lab's LB namespace, and talking to it with the `lb` CLI.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::{Lab, workspace_bin};

/// The running agent.
pub(super) struct Agent {
    pub(super) child: Child,
    pub(super) log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Lab {
    /// Stops the agent and starts it again with the same config file (the state file and,
    /// after a plain stop, nothing else carries over).
    ///
    /// # Errors
    /// The agent does not stop or start.
    pub fn restart_agent(&mut self) -> anyhow::Result<()> {
        let st = self.stop_agent()?;
        if !st.success() {
            bail!("lb agent exited with {st}");
        }
        let config = std::fs::read_to_string(self.tmp.join("lb.toml"))?;
        self.start_agent(&config)
    }

    /// Starts `lb agent` in the LB namespace (native XDP) with `config`, and waits until it
    /// reports ready.
    ///
    /// # Errors
    /// The agent exits or does not become ready.
    pub fn start_agent(&mut self, config: &str) -> anyhow::Result<()> {
        self.start_agent_with(config, &[])
    }

    /// As [`Self::start_agent`], with `extra_args` appended to `lb agent`'s command line.
    ///
    /// # Errors
    /// The agent exits or does not become ready.
    pub fn start_agent_with(&mut self, config: &str, extra_args: &[&str]) -> anyhow::Result<()> {
        let cfg = self.tmp.join("lb.toml");
        std::fs::write(&cfg, config)?;
        let lb = workspace_bin("lb")?;
        let mut cmd = self.lb.command(&lb);
        cmd.arg("agent").arg("--config").arg(&cfg);
        for i in self.lb_interfaces() {
            cmd.args(["--iface", &i]);
        }
        // No drain after withdrawing the VIPs on a plain stop (the agent's default is 5 s),
        // unless the test asks for one: a lab has no routers to drain from.
        if !extra_args.contains(&"--announce-drain") {
            cmd.args(["--announce-drain", "0s"]);
        }
        cmd.args(["--xdp-mode", "native"])
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-file")
            .arg(self.tmp.join("state.toml"))
            .args(extra_args)
            .env("RUST_LOG", "info,netlink_packet_route=error")
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting lb agent")?;
        let stderr = child.stderr.take().context("stderr")?;
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        // Drains the agent's log (so it never blocks on a full pipe) and signals readiness.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("agent ready") {
                    let _ = tx.send(());
                }
                if std::env::var_os("LB_AGENT_LOG").is_some() {
                    eprintln!("[agent] {line}");
                }
                log2.lock().expect("log").push_str(&(line + "\n"));
            }
        });
        self.agent = Some(Agent { child, log });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            bail!(
                "lb agent did not become ready; its log:\n{}",
                self.agent_log()
            );
        }
        Ok(())
    }

    /// What the agent logged so far; with none running, what the last one logged.
    #[must_use]
    pub fn agent_log(&self) -> String {
        self.agent
            .as_ref()
            .map_or(&self.last_log, |a| &a.log)
            .lock()
            .expect("log")
            .clone()
    }

    /// The agent's process id, while it runs.
    #[must_use]
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(|a| a.child.id())
    }

    /// Rewrites the agent's config file with `config` and sends it SIGHUP (the agent reloads
    /// it; see its log for the outcome).
    ///
    /// # Errors
    /// No agent runs, or the file cannot be written.
    pub fn reload(&self, config: &str) -> anyhow::Result<()> {
        std::fs::write(self.tmp.join("lb.toml"), config)?;
        self.signal_agent(libc::SIGHUP)
    }

    /// Sends the agent `signal` and returns at once (a SIGTERM's stop runs on while the test
    /// looks at it).
    ///
    /// # Errors
    /// No agent runs, or the signal cannot be sent.
    pub fn signal_agent(&self, signal: i32) -> anyhow::Result<()> {
        let pid = self.agent_pid().context("no agent")?;
        // SAFETY: signalling the agent this lab started.
        if unsafe { libc::kill(i32::try_from(pid)?, signal) } != 0 {
            bail!("signal {signal}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Kills the agent with SIGKILL (nothing of its own shutdown runs) and reaps it.
    ///
    /// # Errors
    /// No agent is running.
    pub fn kill_agent(&mut self) -> anyhow::Result<()> {
        let Some(mut a) = self.agent.take() else {
            bail!("no agent running")
        };
        self.last_log = a.log.clone();
        a.child.kill()?;
        a.child.wait()?;
        Ok(())
    }

    /// The id of the XDP program attached to `dev` in the LB namespace, if any.
    ///
    /// # Errors
    /// `ip` fails.
    pub fn xdp_prog_id(&self, dev: &str) -> anyhow::Result<Option<u32>> {
        let out = self.lb.ip(&["-d", "link", "show", "dev", dev])?;
        Ok(out
            .split("prog/xdp id ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|id| id.parse().ok()))
    }

    /// Stops the agent with SIGTERM and waits for it (bounded); returns its exit status.
    ///
    /// # Errors
    /// It does not exit within 10 s (it is then killed).
    pub fn stop_agent(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut a) = self.agent.take() else {
            bail!("no agent running")
        };
        self.last_log = a.log.clone();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(i32::try_from(a.child.id())?, libc::SIGTERM) };
        for _ in 0..200 {
            if let Some(st) = a.child.try_wait()? {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = a.child.kill();
        bail!("lb agent ignored SIGTERM for 10 s")
    }

    /// Runs `lb ARGS` against this lab's agent; returns stdout, or an error with stderr.
    ///
    /// # Errors
    /// The command fails.
    pub fn lb(&self, args: &[&str]) -> anyhow::Result<String> {
        crate::netns::output(
            Command::new(workspace_bin("lb")?)
                .arg("--socket")
                .arg(&self.socket)
                .args(args),
        )
    }

    /// `lb ARGS -o json`, parsed.
    ///
    /// # Errors
    /// The command fails or prints no JSON.
    pub fn lb_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut a = args.to_vec();
        a.extend_from_slice(&["-o", "json"]);
        Ok(serde_json::from_str(&self.lb(&a)?)?)
    }

    /// `service`'s entry for backend `addr` (`IP:port`) in `lb backend list`, or `Null` if the
    /// list has none.
    ///
    /// # Errors
    /// The command fails, or its answer is not a backend list.
    pub fn backend_entry(&self, service: &str, addr: &str) -> anyhow::Result<serde_json::Value> {
        let l = self.lb_json(&["backend", "list", service])?;
        Ok(l["backends"]
            .as_array()
            .with_context(|| format!("not a backend list: {l}"))?
            .iter()
            .find(|b| b["backend"] == addr)
            .cloned()
            .unwrap_or_default())
    }

    /// Waits until the agent has resolved every backend's next hop, every PIP instance's next
    /// hop and the default route to the clients (bounded). Until then a packet's next hop
    /// comes from the kernel FIB and is counted `forward_fib`, not under the reason a test
    /// expects.
    ///
    /// # Errors
    /// Not resolved within 10 s.
    pub fn wait_resolved(&self) -> anyhow::Result<()> {
        crate::wait_until(
            "next hops to resolve",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                self.lb_json(&["status"]).is_ok_and(|s| {
                    // Both families' default routes (the lab is dual stack).
                    let default_route = ["0.0.0.0/0 ", "::/0 "].iter().all(|d| {
                        s["client_routes"].as_array().is_some_and(|r| {
                            r.iter()
                                .any(|r| r.as_str().is_some_and(|r| r.starts_with(d)))
                        })
                    });
                    s["backends_unresolved"] == 0 && default_route
                }) && self.lb_json(&["pip", "list"]).is_ok_and(|l| {
                    l["pips"]
                        .as_array()
                        .is_some_and(|p| p.iter().all(|p| !p["next_hop"].is_null()))
                })
            },
        )
        .with_context(|| {
            format!(
                "status: {}\nPIPs: {}\nneighbours: {}\nagent log:\n{}",
                self.lb(&["status"]).unwrap_or_else(|e| e.to_string()),
                self.lb(&["pip", "list"]).unwrap_or_else(|e| e.to_string()),
                self.lb.ip(&["neigh"]).unwrap_or_else(|e| e.to_string()),
                self.agent_log()
            )
        })
    }

    /// Waits until next hops are resolved and every backend that may take new flows (not
    /// drained, weight > 0) is in rotation, i.e. probed healthy where a probe is set (bounded).
    ///
    /// # Errors
    /// Not ready within 10 s.
    pub fn wait_ready(&self) -> anyhow::Result<()> {
        self.wait_resolved()?;
        crate::wait_until(
            "backends to be in rotation",
            Duration::from_secs(10),
            Duration::from_millis(25),
            || {
                self.lb_json(&["status"]).is_ok_and(|s| {
                    s["vips"].as_array().is_some_and(|vips| {
                        vips.iter()
                            .flat_map(|v| v["backends"].as_array().into_iter().flatten())
                            .all(|b| {
                                b["in_rotation"] == true || b["drained"] == true || b["weight"] == 0
                            })
                    })
                })
            },
        )
    }

    /// A verdict-reason counter of the agent's program.
    ///
    /// # Errors
    /// The stats call fails.
    pub fn reason(&self, name: &str) -> anyhow::Result<u64> {
        let s = self.lb_json(&["stats"])?;
        s["reasons"][name]
            .as_u64()
            .with_context(|| format!("no reason {name} in {s}"))
    }

    /// One HTTP/1.1 GET of `path` from inside the LB namespace to the agent's metrics
    /// endpoint at `addr` (`--metrics`); the whole answer, head and body.
    ///
    /// # Errors
    /// The connection or the exchange fails.
    pub fn scrape(&self, addr: &str, path: &str) -> std::io::Result<String> {
        use std::io::{Read as _, Write as _};
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        let addr: std::net::SocketAddr = addr
            .parse()
            .map_err(|e| std::io::Error::other(format!("{addr}: {e}")))?;
        self.lb.enter(move || {
            let mut s = std::net::TcpStream::connect_timeout(&addr, super::IO_TIMEOUT)?;
            s.set_read_timeout(Some(super::IO_TIMEOUT))?;
            s.write_all(req.as_bytes())?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            Ok(answer)
        })
    }
}
