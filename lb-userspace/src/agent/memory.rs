//! The agent's memory, as the allocator keeps it. glibc's malloc keeps what a thread freed in
//! that thread's arena, and gives each new allocating thread an arena of its own (up to 8 per
//! CPU): the planner's transient tables (the writer thread) and the state file's text (a
//! blocking-pool thread) stayed resident after every large change. For an agent started with
//! 10 000 services, `cargo xtask bench` (control part) read 62 MiB resident in most runs and
//! 46 MiB in some, depending on which threads had allocated when it looked.

/// At most two arenas. Called from `main` before any thread starts (the runtime's included).
/// The agent's threads hand work to one writer at control-plane rates; they do not contend
/// for the allocator.
pub fn few_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter, and no other thread exists yet. A zero
    // return (the parameter refused) leaves glibc's default: more memory, nothing worse.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns the freed memory of every arena to the kernel. Called after a change of the desired
/// state has been applied and after it has been saved: both happen at the rate people and
/// config reloads change things, and a trim costs about a walk of the free lists.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the arenas' own locks; it is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
