//! Logging for both binaries (`palaver` and `palaver-rendezvous`): tracing to stderr, filtered by
//! `RUST_LOG` (else the binary's default), as text or as JSON lines (`--log-format`).
//!
//! Colour codes only reach a terminal: not a file, a pipe or the journal, and never with
//! `NO_COLOR` set (<https://no-color.org>).

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`), and
    /// the spans it happened in (`span`, `spans`).
    Json,
}

/// Installs the global logger. `default_filter` (tracing's `EnvFilter` syntax) applies when
/// `RUST_LOG` is unset or invalid. `stderr_stays` is false when stderr will be pointed elsewhere
/// after this (the chat window sends it to a file), so whether it is a terminal now says nothing.
/// A second call does nothing (the first logger stays).
pub fn init(format: LogFormat, default_filter: &str, stderr_stays: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // An error means a logger is installed already (a test harness): keep that one.
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(stderr_stays && colour_allowed(std::io::stderr().is_terminal()))
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Colour for a terminal, unless `NO_COLOR` is set to anything but the empty string.
fn colour_allowed(terminal: bool) -> bool {
    colour_for(terminal, std::env::var_os("NO_COLOR").as_deref())
}

fn colour_for(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::colour_for;

    #[test]
    fn colour_only_for_a_terminal_and_never_with_no_color_set() {
        assert!(colour_for(true, None));
        assert!(
            colour_for(true, Some("".as_ref())),
            "an empty NO_COLOR is unset"
        );
        assert!(!colour_for(true, Some("1".as_ref())));
        assert!(!colour_for(false, None));
    }
}
