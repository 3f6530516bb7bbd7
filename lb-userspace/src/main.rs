//! `lb`: the agent daemon (`lb agent`) and its control CLI.
//!
//! Exit codes: 0 success; 1 the agent could not be reached (or the runtime failed); 2 invalid
//! input (clap's usage errors too); 3 not found; 4 conflict (already exists); 5 capacity; 6 the
//! data plane refused the change; 7 permission denied; 8 the agent cannot take it now.
use std::process::ExitCode;

use clap::Parser as _;
use lb_userspace::{
    api,
    cli::{
        BackendCmd, BgpCmd, Cli, CliCommand, ConfigCmd, Format, PeerCmd,
        output::{Failure, done_json, usage_failure, wants_json},
        render, request,
    },
    error::ErrorKind,
};

/// The announce table of the agent's config file `path`, or why there is none to export.
fn bgp_table(path: &std::path::Path) -> Result<u32, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::new(
            ErrorKind::Invalid,
            format!(
                "--config {}: {e} (give the agent's config file)",
                path.display()
            ),
        )
    })?;
    let c = lb_userspace::config::parse(&path.display().to_string(), &text)
        .map_err(|e| Failure::new(ErrorKind::Invalid, e.to_string()))?;
    match c.agent.announce_table {
        0 => Err(Failure::new(
            ErrorKind::Invalid,
            format!(
                "{}: agent.announce_table = 0: the agent announces nothing to export",
                path.display()
            ),
        )),
        t => Ok(t),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind as K;
            // Help and --version are answers, not errors; without -o json clap prints its
            // own usage text.
            if matches!(e.kind(), K::DisplayHelp | K::DisplayVersion)
                || !wants_json(&std::env::args_os().collect::<Vec<_>>())
            {
                e.exit();
            }
            return fail(&usage_failure(&e), Format::Json, "lb");
        }
    };
    let format = cli.output;
    if matches!(cli.command, CliCommand::Agent(_)) {
        lb_userspace::agent::memory::few_arenas();
    }
    match &cli.command {
        CliCommand::Bgp(BgpCmd::Example {
            config,
            router_id,
            local_as,
            peer,
            peer_as,
        }) => {
            let table = match bgp_table(config) {
                Ok(t) => t,
                Err(f) => return fail(&f, format, "lb bgp example"),
            };
            let text = lb_userspace::bgp::bird_config(&lb_userspace::bgp::BirdParams {
                table,
                router_id: *router_id,
                local_as: *local_as,
                peer: *peer,
                peer_as: *peer_as,
            });
            if format == Format::Json {
                println!(
                    "{}",
                    done_json(serde_json::json!({ "table": table, "bird_config": text }))
                );
            } else {
                print!("{text}");
            }
            return ExitCode::SUCCESS;
        }
        CliCommand::Config(ConfigCmd::Check { file }) => {
            return match lb_userspace::config::check(file) {
                Ok(summary) => say(
                    format,
                    &summary,
                    serde_json::json!({ "file": file, "summary": summary }),
                ),
                Err(e) => {
                    let mut f = Failure::new(ErrorKind::Invalid, e.message.clone());
                    f.field = (!e.field.is_empty()).then(|| e.field.clone());
                    f.at = Some((e.file.clone(), e.line, e.column));
                    if format == Format::Table {
                        f.message = e.to_string();
                    }
                    fail(&f, format, "lb")
                }
            };
        }
        CliCommand::Completions { shell } => {
            let script = lb_userspace::cli::docs::completions(*shell);
            if format == Format::Json {
                println!(
                    "{}",
                    done_json(serde_json::json!({ "shell": shell.to_string(), "script": script }))
                );
            } else {
                print!("{script}");
            }
            return ExitCode::SUCCESS;
        }
        CliCommand::Man { dir } => {
            return match lb_userspace::cli::docs::man_pages(dir) {
                Ok(pages) => say(
                    format,
                    &format!("{} man pages written to {}", pages.len(), dir.display()),
                    serde_json::json!({ "pages": pages }),
                ),
                Err(e) => fail(
                    &Failure::new(ErrorKind::Failed, format!("{}: {e}", dir.display())),
                    format,
                    "lb man",
                ),
            };
        }
        CliCommand::Backend(cmd @ (BackendCmd::Setup(_) | BackendCmd::Teardown(_))) => {
            return backend_setup(cmd, format);
        }
        CliCommand::Peer(cmd) => {
            let done = match cmd {
                PeerCmd::Attach(a) => lb_userspace::peer::attach(&a.iface, &a.pin_dir),
                PeerCmd::Detach(a) => lb_userspace::peer::detach(&a.iface, &a.pin_dir),
            };
            return match done {
                Ok(text) => say(format, &text, serde_json::json!({ "message": text })),
                Err(e) => fail(
                    &Failure::new(ErrorKind::Failed, format!("{e:#}")),
                    format,
                    "lb peer",
                ),
            };
        }
        _ => {}
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                &Failure::unreachable(format!("cannot start the runtime: {e}")),
                format,
                "lb",
            );
        }
    };
    if let CliCommand::Top {
        interval,
        iterations,
    } = &cli.command
    {
        return match rt.block_on(lb_userspace::cli::top::run(
            &cli.socket,
            *interval,
            *iterations,
        )) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => match e.downcast::<Failure>() {
                Ok(f) => fail(&f, format, "lb top"),
                Err(e) => fail(&Failure::unreachable(format!("{e:#}")), format, "lb top"),
            },
        };
    }
    if let CliCommand::Trace(a) = &cli.command {
        return match rt.block_on(lb_userspace::cli::trace::run(&cli.socket, a, format)) {
            Ok(s) => {
                // Records of another build's program (neither record type's length) are
                // named only when there are some.
                let skipped = if s.undecoded > 0 {
                    format!("; {} of an unknown layout skipped", s.undecoded)
                } else {
                    String::new()
                };
                let text = format!(
                    "{} records; not recorded: {} over the rate limit, {} with the ring full{skipped}",
                    s.events, s.lost_rate, s.lost_ring
                );
                match format {
                    Format::Json => println!(
                        "{}",
                        done_json(serde_json::json!({
                            "records": s.events,
                            "lost_rate": s.lost_rate,
                            "lost_ring": s.lost_ring,
                            "undecoded": s.undecoded,
                        }))
                    ),
                    Format::Table => eprintln!("{text}"),
                }
                ExitCode::SUCCESS
            }
            Err(e) => match e.downcast::<Failure>() {
                Ok(f) => fail(&f, format, "lb trace"),
                Err(e) => fail(&Failure::unreachable(format!("{e:#}")), format, "lb trace"),
            },
        };
    }
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
    let req = match request(&cli.command) {
        Ok(Some(r)) => r,
        Ok(None) => return ExitCode::FAILURE,
        Err(msg) => return fail(&Failure::new(ErrorKind::Invalid, msg), format, "lb"),
    };
    match rt.block_on(api::call(&cli.socket, &req)) {
        Err(e) => fail(&Failure::unreachable(e.to_string()), format, "lb"),
        Ok(resp) => match render(&resp, format) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err((kind, msg)) => fail(&Failure::new(kind, msg), format, "lb"),
        },
    }
}

/// Prints a local command's success: `text`, or with JSON `{"result": "done", ...fields}`.
fn say(format: Format, text: &str, fields: serde_json::Value) -> ExitCode {
    match format {
        Format::Json => println!("{}", done_json(fields)),
        Format::Table => println!("{text}"),
    }
    ExitCode::SUCCESS
}

/// `lb backend setup|teardown`: plans, then prints the script or applies it (no agent).
fn backend_setup(cmd: &BackendCmd, format: Format) -> ExitCode {
    use lb_userspace::backend_setup as bs;
    let (BackendCmd::Setup(a) | BackendCmd::Teardown(a)) = cmd else {
        unreachable!("only setup and teardown come here");
    };
    let setup = matches!(cmd, BackendCmd::Setup(_));
    let what = if setup {
        "lb backend setup"
    } else {
        "lb backend teardown"
    };
    let planned = (|| {
        let iface = match &a.iface {
            Some(i) => i.clone(),
            None => bs::default_iface()?,
        };
        let steps = if setup {
            bs::plan(a.mode, &a.vips, &iface, a.gue_port)?
        } else {
            bs::teardown(a.mode, &a.vips, &iface, &bs::decap_dir(&a.pin_dir, &iface)?)
        };
        anyhow::Ok((iface, steps))
    })();
    let (iface, steps) = match planned {
        Ok(p) => p,
        Err(e) => {
            return fail(
                &Failure::new(ErrorKind::Invalid, format!("{e:#}")),
                format,
                what,
            );
        }
    };
    let header = format!(
        "{what} {} --iface {iface}{}",
        a.mode.name(),
        bs::vip_flags(&a.vips)
    );
    let json_steps: Vec<serde_json::Value> = steps
        .iter()
        .map(|p| serde_json::json!({ "command": p.step.command(), "why": p.why }))
        .collect();
    if !a.apply {
        return say(
            format,
            bs::render(&header, &steps).trim_end(),
            serde_json::json!({ "applied": false, "steps": json_steps }),
        );
    }
    match bs::apply(&steps, &a.pin_dir) {
        Ok(done) => say(
            format,
            &done.join("\n"),
            serde_json::json!({ "applied": true, "steps": json_steps, "done": done }),
        ),
        Err(e) => fail(
            &Failure::new(ErrorKind::Failed, format!("{e:#}")),
            format,
            what,
        ),
    }
}

/// Prints a failure (JSON on stdout, text on stderr) and gives its exit code.
fn fail(f: &Failure, format: Format, prefix: &str) -> ExitCode {
    let (text, stdout) = f.render(format, prefix);
    if stdout {
        println!("{text}");
    } else {
        eprintln!("{text}");
    }
    ExitCode::from(f.exit)
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
