//! This file exists to enable the library target, so `cargo check`/`clippy` see the crate.
#![no_std]
