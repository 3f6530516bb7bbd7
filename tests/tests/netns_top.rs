//! `lb top` in a real terminal: a tmux session runs it against a lab's agent; the screen
//! shows the service, its backend with its health and a packet rate once traffic flows, and
//! `q` ends it.

use std::{process::Command, time::Duration};

use lb_integration::{
    lab::{Lab, workspace_bin},
    wait_until,
};

/// A tmux session, killed on drop (also when the test fails).
struct Tmux(String);

impl Tmux {
    fn capture(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["has-session", "-t", &self.0])
            .output()
            .unwrap()
            .status
            .success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

#[test]
fn lb_top_shows_the_service_its_backend_and_rates_and_quits_on_q() {
    let mut lab = Lab::new(1).unwrap();
    lab.start_agent("[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.11\"]\ntable_size = 251\n")
        .unwrap();
    lab.wait_ready().unwrap();
    let session = Tmux(format!("lbtop-{}", std::process::id()));
    let cmd = format!(
        "{} --socket {} top --interval 200ms",
        workspace_bin("lb").unwrap().display(),
        lab.socket.display()
    );
    let started = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-x",
            "160",
            "-y",
            "40",
            "-s",
            &session.0,
            &cmd,
        ])
        .status()
        .unwrap();
    assert!(started.success(), "tmux could not start");
    wait_until(
        "lb top to draw the service",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || session.capture().contains("203.0.113.10:80/tcp"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", session.capture()));
    let screen = session.capture();
    assert!(
        screen.contains("192.0.2.11:80") && screen.contains("unprobed"),
        "{screen}"
    );
    // Traffic shows as a packet rate (not 0) on the backend's row while connections run.
    let mut conn = lab.http_connect(80).unwrap();
    wait_until(
        "a packet rate on the backend's row",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            conn.get().unwrap();
            session.capture().lines().any(|l| {
                l.contains("192.0.2.11:80")
                    && l.split_whitespace()
                        .filter(|t| *t != "│")
                        .rev()
                        .nth(2)
                        .and_then(|v| v.parse::<u64>().ok())
                        .is_some_and(|v| v > 0)
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", session.capture()));
    let sent = Command::new("tmux")
        .args(["send-keys", "-t", &session.0, "q"])
        .status()
        .unwrap();
    assert!(sent.success());
    wait_until(
        "lb top to quit on q",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || !session.alive(),
    )
    .unwrap();
}
