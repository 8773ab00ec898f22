//! README.md's "Quick start, by hand", run as written: the block is read from README.md itself and
//! handed to bash as if pasted into a fresh shell in a fresh clone, with only what a test must
//! change: `/tmp/` is a temporary directory, port 4001 a free port, and `cargo build --release`
//! is skipped, its binaries (`target/release/…` in a scratch directory) being the ones this test
//! run built. Then the conversation the block promises must have happened.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

/// The fenced block after the "Quick start" heading.
fn quick_start_block(readme: &str) -> anyhow::Result<Vec<String>> {
    let after = readme
        .split_once("## Quick start")
        .context("README.md has no \"## Quick start\" section")?
        .1;
    let block = after
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .context("the quick start has no ```sh block")?
        .0;
    Ok(block.lines().map(str::to_owned).collect())
}

/// The line as the test runs it (`None`: skipped).
fn adapt(line: &str, tmp: &Path, port: u16) -> Option<String> {
    if line.trim_start().starts_with("cargo build") {
        return None;
    }
    Some(
        line.replace("/tmp/", &format!("{}/", tmp.display()))
            .replace("4001", &port.to_string()),
    )
}

/// The `"key":"value"` pairs a `# {"id":…,"from":"alice",…}` comment promises.
fn promised_fields(comment: &str) -> Vec<(String, String)> {
    comment
        .split(',')
        .filter_map(|part| {
            let (key, value) = part.trim_matches(['{', '}', ' ']).split_once(':')?;
            let value = value.strip_prefix('"')?.strip_suffix('"')?;
            Some((key.trim_matches('"').to_owned(), value.to_owned()))
        })
        .collect()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Kills the block's shell and everything it left running (its process group).
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

#[test]
fn the_readme_quick_start_pasted_into_a_fresh_shell_has_the_conversation_it_promises()
-> anyhow::Result<()> {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme_path)?;
    let block = quick_start_block(&readme)?;
    ensure!(
        block.iter().any(|l| l.starts_with("cargo build --release")),
        "the quick start no longer builds first: update this test"
    );

    // A fresh clone with the binaries built: target/release/ in a scratch directory.
    let clone = tempfile::tempdir()?;
    let release = clone.path().join("target/release");
    std::fs::create_dir_all(&release)?;
    let built: PathBuf = palaver_tests::rendezvous_command().get_program().into();
    let bin_dir = built.parent().context("the binaries' directory")?;
    for bin in ["palaver", "palaver-rendezvous"] {
        std::os::unix::fs::symlink(bin_dir.join(bin), release.join(bin))?;
    }
    let tmp = tempfile::tempdir()?;
    let port = free_port()?;
    let script: Vec<String> = block
        .iter()
        .filter_map(|line| adapt(line, tmp.path(), port))
        .collect();

    // What pasting into an interactive shell does that a script does not: expand aliases. Each
    // command's output goes to its own file, so the test can tell which printed what.
    let mut shell_input = String::from("shopt -s expand_aliases\nset -e\n");
    for (n, line) in script.iter().enumerate() {
        let command = line.split(" #").next().unwrap_or_default().trim_end();
        if command.is_empty() {
            continue;
        }
        match command.strip_suffix('&') {
            Some(background) => shell_input.push_str(&format!(
                "{background} >{out}/bg{n}.out 2>{out}/bg{n}.err &\n",
                out = tmp.path().display()
            )),
            None => shell_input.push_str(&format!(
                "{command} >{out}/{n}.out 2>{out}/{n}.err || {{ echo \"line {n} failed: $?\" >&2; exit 1; }}\n",
                out = tmp.path().display()
            )),
        }
    }
    shell_input.push_str("echo quick-start-done\n");
    let child = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &shell_input])
        .current_dir(clone.path())
        .env("HOME", tmp.path())
        .env_remove("PALAVER_HOME")
        .env_remove("PALAVER_PASSPHRASE")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let mut group = Group(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = group.0.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            bail!("the quick start did not finish in 2 minutes:\n{shell_input}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = |name: String| std::fs::read_to_string(tmp.path().join(name)).unwrap_or_default();
    let mut stderr = String::new();
    if let Some(mut pipe) = group.0.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
    }
    let errors: String = (0..script.len())
        .map(|n| output(format!("{n}.err")) + &output(format!("bg{n}.err")))
        .collect();
    ensure!(
        status.success(),
        "the quick start failed ({status}): {stderr}\n{errors}\nscript:\n{shell_input}"
    );

    // Every promise a comment makes: the send printed an id, and bob's history holds alice's
    // message with the fields shown.
    for (n, line) in script.iter().enumerate() {
        let Some((_, comment)) = line.split_once(" # ") else {
            continue;
        };
        let printed = output(format!("{n}.out"));
        if comment.contains("prints the message id") {
            let id = printed.trim();
            ensure!(
                id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()),
                "line {n} ({line}) printed {printed:?}, not a message id"
            );
        }
        if comment.trim_start().starts_with('{') {
            let promised = promised_fields(comment);
            ensure!(!promised.is_empty(), "no fields in the comment {comment:?}");
            let entries: Vec<Value> = printed
                .lines()
                .map(serde_json::from_str)
                .collect::<Result<_, _>>()
                .with_context(|| format!("line {n} ({line}) printed {printed:?}"))?;
            ensure!(
                entries.iter().any(|entry| promised
                    .iter()
                    .all(|(key, value)| entry[key.as_str()] == value.as_str())),
                "line {n} ({line}) printed {printed:?}, not {promised:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn the_comment_parser_reads_what_the_readme_promises() {
    assert_eq!(
        promised_fields(r#" {"id":…,"from":"alice","text":"hello","status":"received",…}"#),
        [
            ("from".to_owned(), "alice".to_owned()),
            ("text".to_owned(), "hello".to_owned()),
            ("status".to_owned(), "received".to_owned())
        ]
    );
}
