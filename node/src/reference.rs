//! docs/REFERENCE.md, generated: clap's help for every command of both binaries, then the
//! control socket's methods and events from the tables the daemon itself checks calls and events
//! against ([`crate::rpc::methods`]). `cargo run -p palaver-node --example reference` writes the
//! file; a test fails when the committed one differs.

use std::fmt::Write as _;

use clap::CommandFactory;

use crate::rpc::methods::{EVENTS, METHODS};

/// Where the reference lives, relative to the workspace root.
pub const PATH: &str = "docs/REFERENCE.md";

/// The whole reference, as Markdown.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Palaver reference\n\n\
         Generated from the code by `cargo run -p palaver-node --example reference`; a test\n\
         (`cargo test -p palaver-node --lib reference`) fails when this file is stale, so edit the\n\
         code (clap's doc comments, `node/src/rpc/methods.rs`), not this file.\n\n\
         - [`palaver`](#palaver): the peer's command line\n\
         - [`palaver-rendezvous`](#palaver-rendezvous): the server\n\
         - [The control socket](#the-control-socket): JSON-RPC methods\n\
         - [Events](#events): what `subscribe` (`palaver listen --json`) streams\n",
    );
    out.push_str("\n## `palaver`\n");
    commands(&mut out, crate::cli::Cli::command(), "palaver");
    out.push_str("\n## `palaver-rendezvous`\n");
    commands(
        &mut out,
        palaver_rendezvous::cli::Args::command(),
        "palaver-rendezvous",
    );
    methods(&mut out);
    events(&mut out);
    out
}

/// `command`'s long help and then each subcommand's, depth first.
fn commands(out: &mut String, command: clap::Command, path: &str) {
    // The environment's values (PALAVER_HOME=…) and the terminal's width must not leak in.
    let mut command = command
        .term_width(100)
        .max_term_width(100)
        .mut_args(|arg| arg.hide_env_values(true));
    command.build();
    let help = command.render_long_help().to_string();
    let _ = write!(out, "\n### `{path}`\n\n```text\n{}\n```\n", help.trim_end());
    let subcommands: Vec<clap::Command> = command
        .get_subcommands()
        .filter(|sub| sub.get_name() != "help")
        .cloned()
        .collect();
    for sub in subcommands {
        let name = format!("{path} {}", sub.get_name());
        commands(out, sub, &name);
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

fn methods(out: &mut String) {
    out.push_str(
        "\n## The control socket\n\n\
         The daemon serves JSON-RPC 2.0 on `<home>/palaver.sock` (mode 0600), one JSON object per\n\
         line each way: `{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"send\",\"params\":{\"to\":\"bob\",\"text\":\"hi\"}}`.\n\
         Params are an object of named parameters (or absent); `null` counts as absent. Errors are\n\
         `{\"code\",\"message\"}`: -32700 a line that is not JSON, -32601 an unknown method, -32602\n\
         invalid params (an unknown or missing parameter, a wrong type, a bad name or text), 1 a\n\
         request understood but not carried out (the message says why). Answers come in order.\n\n\
         | method | params | result | errors |\n|---|---|---|---|\n",
    );
    for method in METHODS {
        let params = if method.params.is_empty() {
            "none".to_owned()
        } else {
            method
                .params
                .iter()
                .map(|param| {
                    format!(
                        "`{}` {}{}: {}",
                        param.name,
                        param.kind.name(),
                        if param.optional { "" } else { ", required" },
                        param.about
                    )
                })
                .collect::<Vec<_>>()
                .join("<br>")
        };
        let _ = writeln!(
            out,
            "| `{}` | {} | `{}` | {} |",
            method.name,
            cell(&params),
            cell(method.result),
            cell(method.errors)
        );
    }
    out.push_str("\n| method | what it does |\n|---|---|\n");
    for method in METHODS {
        let _ = writeln!(out, "| `{}` | {} |", method.name, cell(method.summary));
    }
}

fn events(out: &mut String) {
    out.push_str(
        "\n## Events\n\n\
         After `subscribe`, each event arrives as `{\"jsonrpc\":\"2.0\",\"method\":\"event\",\"params\":EVENT}`;\n\
         `palaver listen --json` prints each EVENT on a line of its own. Every EVENT has `\"type\"`\n\
         and exactly the fields below (a field marked *or null* may also be absent).\n\n\
         | type | fields | when |\n|---|---|---|\n",
    );
    for event in EVENTS {
        let fields = event
            .fields
            .iter()
            .map(|field| {
                format!(
                    "`{}` {}{}: {}",
                    field.name,
                    field.kind.name(),
                    if field.optional { " *or null*" } else { "" },
                    field.about
                )
            })
            .collect::<Vec<_>>()
            .join("<br>");
        let _ = writeln!(
            out,
            "| `{}` | {} | {} |",
            event.kind,
            cell(&fields),
            cell(event.about)
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn reference_md_is_what_the_code_generates() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/REFERENCE.md");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        let generated = super::markdown();
        if committed != generated {
            let line = committed
                .lines()
                .zip(generated.lines())
                .position(|(a, b)| a != b)
                .map_or_else(|| "the end".to_owned(), |n| format!("line {}", n + 1));
            panic!(
                "{} differs from what the code generates (first at {line}): run \
                 `cargo run -p palaver-node --example reference` and commit the result",
                super::PATH
            );
        }
    }

    #[test]
    fn every_command_method_and_event_is_in_the_reference() {
        let text = super::markdown();
        for needle in [
            "### `palaver room send`",
            "### `palaver-rendezvous`",
            "--log-format",
            "--config <FILE>",
            "| `room.kick` |",
            "| `subscribe` |",
            "| `reachability` |",
        ] {
            assert!(text.contains(needle), "{needle}");
        }
        assert!(
            !text.contains("PALAVER_HOME="),
            "an environment value leaked in"
        );
    }
}
