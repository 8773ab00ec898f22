//! `palaver`: the Palaver peer's command line.

use std::process::ExitCode;

use clap::Parser;
use palaver_node::cli::{Cli, Command};

/// mimalloc: measured faster than glibc's malloc on rooms, direct messages and history (see the
/// workspace manifest).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon says where it listens, when the rendezvous is lost or back, and why it refused
    // us; a one-shot command only warns.
    let default_filter = match cli.command {
        Command::Daemon(_) => "warn,palaver_node=info",
        _ => "warn",
    };
    // The chat window points stderr at <home>/chat.log once it opens.
    let stderr_stays = !matches!(cli.command, Command::Chat);
    palaver_rendezvous::logging::init(cli.log_format, default_filter, stderr_stays);
    match palaver_node::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", palaver_node::cli::error_line(&err));
            ExitCode::FAILURE
        }
    }
}
