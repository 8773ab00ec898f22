//! `palaver-rendezvous`: parse flags (and `--config FILE`) → config → bind → print listen
//! addresses → run until SIGINT or SIGTERM. Every flag can also come from the environment (see
//! `rendezvous/palaver-rendezvous.env`) or the config file (`rendezvous/palaver-rendezvous.toml`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use palaver_rendezvous::Server;
use palaver_rendezvous::cli::{Admin, Args, ArgsError};

/// mimalloc: more logins per second and less memory per session than glibc's malloc (see the
/// workspace manifest).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = match Args::load(std::env::args_os()) {
        Ok(args) => args,
        // --help, --version and bad flags: clap's own output and exit code.
        Err(ArgsError::Flags(err)) => err.exit(),
        Err(err) => return fail(&err.into()),
    };
    palaver_rendezvous::logging::init(args.log_format, "info", true);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::FAILURE
}

#[tokio::main]
async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(Admin::RemoveUser { name }) = &args.admin {
        palaver_rendezvous::admin::remove_user(&args.server_config()?, name)?;
        println!("removed {name}: the name can be registered again");
        return Ok(());
    }
    let mut server = Server::bind(args.server_config()?)
        .await
        .context("starting the server")?;
    for addr in &args.external {
        server.add_external_address(addr.clone());
    }
    // Whoever started us may stop reading after the first address: that is not a reason to stop.
    let mut stdout = std::io::stdout().lock();
    let printed = server
        .listen_addrs()
        .iter()
        .try_for_each(|addr| writeln!(stdout, "{addr}"))
        .and_then(|()| stdout.flush());
    if let Err(error) = printed {
        tracing::warn!(%error, "could not print the listen addresses");
    }
    drop(stdout);
    server.run(shutdown_signal()).await?;
    Ok(())
}
/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
