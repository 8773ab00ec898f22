//! `palaver-rendezvous`: the self-hosted rendezvous server.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "error: palaver-rendezvous is not built yet (issue 4): this build has the protocol core only"
    );
    ExitCode::FAILURE
}
