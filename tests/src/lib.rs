//! Test and demo support: network namespaces, the lab topology, lab clients, and a packet
//! builder for `BPF_PROG_TEST_RUN` fixtures.
//!
//! Everything a test creates is named `lbt-<pid>-<n>-...` and removed on drop, also when the
//! test panics; leftovers of killed runs (dead pids) are swept when a new lab starts.

pub mod bench;
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
