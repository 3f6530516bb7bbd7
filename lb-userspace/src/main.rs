//! `lb`: the agent daemon (`lb agent`) and its control CLI.
//!
//! Exit codes: 0 success; 1 the agent could not be reached (or the runtime failed); 2 invalid
//! input (clap's usage errors too); 3 not found; 4 conflict (already exists); 5 capacity; 6 the
//! data plane refused the change; 7 permission denied; 8 the agent cannot take it now.
use std::process::ExitCode;

use clap::Parser as _;
use lb_userspace::{
    api,
    cli::{Cli, CliCommand, ConfigCmd, PeerCmd, render, request},
    error::ErrorKind,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, CliCommand::Agent(_)) {
        lb_userspace::agent::memory::few_arenas();
    }
    if let CliCommand::Config(ConfigCmd::Check { file }) = &cli.command {
        return match lb_userspace::config::check_file(file) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lb: {e}");
                ExitCode::from(ErrorKind::Invalid.exit_code())
            }
        };
    }
    if let CliCommand::Peer(cmd) = &cli.command {
        let done = match cmd {
            PeerCmd::Attach(a) => lb_userspace::peer::attach(&a.iface, &a.pin_dir),
            PeerCmd::Detach(a) => lb_userspace::peer::detach(&a.iface, &a.pin_dir),
        };
        return match done {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lb peer: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lb: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let CliCommand::Agent(args) = &cli.command {
        tracing_subscriber::fmt()
            .with_env_filter(log_filter())
            .with_writer(std::io::stderr)
            .init();
        let result = args
            .options(cli.socket.clone())
            .and_then(|o| rt.block_on(lb_userspace::agent::run(o)));
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lb agent: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let (req, format) = match request(&cli.command) {
        Ok(Some(r)) => r,
        Ok(None) => return ExitCode::FAILURE,
        Err(msg) => {
            eprintln!("lb: {msg}");
            return ExitCode::from(ErrorKind::Invalid.exit_code());
        }
    };
    match rt.block_on(api::call(&cli.socket, &req)) {
        Err(e) => {
            eprintln!("lb: {e}");
            ExitCode::FAILURE
        }
        Ok(resp) => match render(&resp, format) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err((kind, msg)) => {
                eprintln!("lb: {msg}");
                ExitCode::from(kind.exit_code())
            }
        },
    }
}

/// The agent's log filter, from `RUST_LOG` (see `lb_userspace::agent::log_filter`).
fn log_filter() -> tracing_subscriber::EnvFilter {
    let asked = std::env::var("RUST_LOG").ok();
    let spec = lb_userspace::agent::log_filter(asked.as_deref());
    tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("lb agent: RUST_LOG {asked:?} is not a log filter ({e}); logging at info");
        tracing_subscriber::EnvFilter::new(lb_userspace::agent::log_filter(None))
    })
}
