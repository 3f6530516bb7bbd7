//! `lb`: the agent daemon (`lb agent`) and its control CLI.
use std::process::ExitCode;

use clap::Parser as _;
use lb_userspace::{
    api,
    cli::{Cli, Command, render, request},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    if let Command::Agent(args) = &cli.command {
        tracing_subscriber::fmt()
            .with_env_filter(
                // netlink-packet-route warns about every attribute newer kernels add; not actionable.
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info,netlink_packet_route=error".into()),
            )
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
    let Some((req, format)) = request(&cli.command) else {
        return ExitCode::FAILURE;
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
            Err(msg) => {
                eprintln!("lb: {msg}");
                ExitCode::FAILURE
            }
        },
    }
}
