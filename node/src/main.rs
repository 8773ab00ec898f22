//! `palaver`: the Palaver peer's command line.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match palaver_node::cli::run(palaver_node::cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
