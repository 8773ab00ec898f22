//! Carrying out [`Effect::Notify`](super::app::Effect::Notify): the terminal bell, and a desktop
//! notification through `notify-send` when it is installed, as `config.toml` says:
//!
//! ```toml
//! [notifications]
//! bell = true       # the default
//! desktop = false   # notify-send, if on PATH
//! ```
//!
//! Both off: no notifications at all. The window decides *when* (a message for a conversation
//! not in view, not more often than every few seconds); this decides *how*.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The `[notifications]` table of `config.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Notifications {
    /// Ring the terminal bell.
    pub bell: bool,
    /// Show a desktop notification with `notify-send` (skipped if it is not installed).
    pub desktop: bool,
}

impl Default for Notifications {
    fn default() -> Self {
        Self {
            bell: true,
            desktop: false,
        }
    }
}

/// A `notify-send` that has not finished by then is killed (a wedged notification daemon must
/// not leave processes piling up).
const DESKTOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How notifications go out in this session.
#[derive(Debug, Clone)]
pub(crate) struct Notifier {
    bell: bool,
    /// The `notify-send` program, when desktop notifications are on and it was found.
    desktop: Option<PathBuf>,
}

impl Notifier {
    /// Settings plus what is installed: `path` is the `PATH` to look for `notify-send` in.
    pub(crate) fn new(settings: Notifications, path: Option<&OsStr>) -> Self {
        let desktop = if settings.desktop {
            let found = path.and_then(|path| find_program(path, "notify-send"));
            if found.is_none() {
                tracing::warn!("desktop notifications are on, but notify-send is not installed");
            }
            found
        } else {
            None
        };
        Self {
            bell: settings.bell,
            desktop,
        }
    }

    /// Rings the bell on `terminal` and starts the desktop notification, as configured.
    pub(crate) fn notify(&self, terminal: &mut impl Write, title: &str, body: &str) {
        if self.bell {
            // BEL goes straight to the terminal; ratatui draws nothing for it.
            let _ = terminal.write_all(b"\x07").and_then(|()| terminal.flush());
        }
        if let Some(program) = &self.desktop {
            spawn_desktop(program, title, body);
        }
    }
}

/// The arguments for `notify-send`: `--` first, so a message starting with `-` is not taken for
/// an option.
fn desktop_args<'a>(title: &'a str, body: &'a str) -> [&'a str; 4] {
    ["--app-name=palaver", "--", title, body]
}

fn spawn_desktop(program: &Path, title: &str, body: &str) {
    let child = tokio::process::Command::new(program)
        .args(desktop_args(title, body))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    match child {
        Ok(mut child) => {
            tokio::spawn(async move {
                if tokio::time::timeout(DESKTOP_TIMEOUT, child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            });
        }
        Err(err) => tracing::warn!("notify-send: {err}"),
    }
}

/// `name` in one of the directories of `path` (a `PATH` value), if it is an executable file.
fn find_program(path: &OsStr, name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bell_rings_unless_turned_off() {
        let mut terminal = Vec::new();
        Notifier::new(Notifications::default(), None).notify(&mut terminal, "bob", "hi");
        assert_eq!(terminal, b"\x07");
        let off = Notifications {
            bell: false,
            desktop: false,
        };
        let mut terminal = Vec::new();
        Notifier::new(off, None).notify(&mut terminal, "bob", "hi");
        assert!(terminal.is_empty());
    }

    #[test]
    fn config_toml_turns_them_on_and_off_and_refuses_unknown_keys() {
        let parse = |text: &str| toml::from_str::<Notifications>(text);
        assert_eq!(parse("").unwrap(), Notifications::default());
        assert_eq!(
            parse("bell = false\ndesktop = true").unwrap(),
            Notifications {
                bell: false,
                desktop: true
            }
        );
        assert!(parse("sound = true").is_err());
    }

    #[tokio::test]
    async fn desktop_notifications_run_notify_send_from_path_when_it_is_there() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let settings = Notifications {
            bell: false,
            desktop: true,
        };
        // Not installed: nothing to run, and nothing fails.
        let missing = Notifier::new(settings, Some(dir.path().as_os_str()));
        assert!(missing.desktop.is_none());
        missing.notify(&mut Vec::new(), "bob", "hi");

        let out = dir.path().join("args");
        let script = dir.path().join("notify-send");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}.tmp' && mv '{0}.tmp' '{0}'\n",
                out.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([Path::new("/nonexistent"), dir.path()]).unwrap();
        let notifier = Notifier::new(settings, Some(&path));
        assert_eq!(notifier.desktop.as_deref(), Some(script.as_path()));
        notifier.notify(&mut Vec::new(), "bob", "-rf lunch?");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !out.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "notify-send never ran"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "--app-name=palaver\n--\nbob\n-rf lunch?\n"
        );
    }
}
