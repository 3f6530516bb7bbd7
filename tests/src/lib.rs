//! Test and demo support: network namespaces, the lab topology, lab clients, and a packet
//! builder for `BPF_PROG_TEST_RUN` fixtures.
//!
//! Everything a test creates is named `lbt-<pid>-<n>-...` and removed on drop, also when the
//! test panics; leftovers of killed runs (dead pids) are swept when a new lab starts.

pub mod bench;
pub mod differential;
pub mod fixture;
pub mod lab;
pub mod netns;
pub mod packet;

/// Fails loudly unless we are root: kernel tests must never pass by skipping.
pub fn require_root() {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "these tests load BPF programs and create network namespaces: run them as root (cargo xtask test)"
    );
}

/// Seconds of CLOCK_MONOTONIC_COARSE: the clock the fast path stamps flows with (and the
/// sweeper ages them by), the agent's own reading of it. Entries a test plants carry it, so a
/// sweeper keeps them.
pub use lb_userspace::dataplane::sweep::monotonic_s as coarse_now_s;

/// Polls `cond` until it holds or `timeout` passes, pausing `step` between tries. For waiting on
/// a state another process reaches (an agent's next-hop refresh), with a hard bound.
///
/// # Errors
/// The condition never held; the message says what was awaited.
pub fn wait_until(
    what: &str,
    timeout: std::time::Duration,
    step: std::time::Duration,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    loop {
        if cond() {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(step);
    }
}
