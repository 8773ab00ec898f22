//! The command line contract, driven through the real `palaver` binary.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use std::process::{Command, Output};

fn palaver(home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palaver"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("PALAVER_PASSPHRASE")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn init_then_whoami_json_reports_the_same_identity() {
    let dir = tempfile::tempdir().unwrap();
    let out = palaver(dir.path(), &["init", "--name", "Alice"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = palaver(dir.path(), &["whoami", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let me: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(me["name"], "alice");
    assert!(
        me["peer_id"].as_str().unwrap().starts_with("12D3KooW"),
        "{me}"
    );
    assert_eq!(me["fingerprint"].as_str().unwrap().len(), 35);
}

#[test]
fn a_second_init_refuses_without_force() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        palaver(dir.path(), &["init", "--name", "bob"])
            .status
            .success()
    );
    let first = palaver(dir.path(), &["whoami", "--json"]).stdout;
    let out = palaver(dir.path(), &["init", "--name", "bob"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.starts_with("error: ") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        palaver(dir.path(), &["whoami", "--json"]).stdout,
        first,
        "identity changed"
    );
    assert!(
        palaver(dir.path(), &["init", "--name", "bob", "--force"])
            .status
            .success()
    );
    assert_ne!(palaver(dir.path(), &["whoami", "--json"]).stdout, first);
}

#[test]
fn a_bad_name_and_a_missing_identity_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = palaver(dir.path(), &["init", "--name", "bob smith"]);
    assert!(!out.status.success());
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    let out = palaver(&dir.path().join("empty"), &["whoami"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("palaver init"), "{}", stderr(&out));
}

#[test]
fn a_passphrase_sealed_identity_needs_its_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "hunter2\n").unwrap();
    let home = dir.path().join("h");
    let with_pass = |args: &[&str]| {
        let mut all = vec!["--passphrase-file", pass.to_str().unwrap()];
        all.extend_from_slice(args);
        palaver(&home, &all)
    };
    assert!(with_pass(&["init", "--name", "carol"]).status.success());
    assert!(with_pass(&["whoami"]).status.success());
    let out = palaver(&home, &["whoami"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("PALAVER_PASSPHRASE"),
        "{}",
        stderr(&out)
    );
    std::fs::write(&pass, "wrong\n").unwrap();
    let out = with_pass(&["whoami"]);
    assert!(
        stderr(&out).contains("wrong passphrase"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_demo_runs_the_whole_scripted_conversation_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let out = palaver(dir.path(), &["demo"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", stderr(&out));
    for step in [
        "alice → bob  \"Hi Bob! Lunch today?\"",
        "delivered",
        "#lunch  carol  Hello room!",
        "carol's #lunch still ends at \"Hello room!\"",
        "queued in the mailbox",
        "Done in",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
}

/// `palaver … | head -1`: a reader that went away ends the command quietly with success, never
/// with a panic (rc 101). The pipe's read end is closed before the command starts, so every write
/// meets a broken pipe.
#[test]
fn a_closed_stdout_ends_commands_quietly() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        palaver(dir.path(), &["init", "--name", "pipe"])
            .status
            .success()
    );
    for args in [
        &["whoami"][..],
        &["whoami", "--json"],
        &["completions", "bash"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_palaver"))
            .arg("--home")
            .arg(dir.path())
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).is_empty(), "{args:?}: {}", stderr(&out));
    }
}
