//! A throw-away PostgreSQL for tests and the load generator: its own cluster (Debian's `initdb`
//! and `pg_ctl` from `/usr/lib/postgresql/*/bin`) in a temporary directory on a free port on
//! 127.0.0.1, never a shared server; stopped and deleted on drop.
//!
//! Without PostgreSQL installed, [`TestPostgres::start`] says loudly on stderr that the test did
//! not run and returns `None`, unless `PALAVER_REQUIRE_POSTGRES=1` (CI), which makes it an error.
//! PostgreSQL refuses to run as root; as root the cluster belongs to the `postgres` user and its
//! commands run through `runuser`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running throw-away PostgreSQL cluster with one database, `palaver`.
#[derive(Debug)]
pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<String>,
}

/// The set variable that turns "PostgreSQL is not installed" from a skip into a failure.
pub const REQUIRE_ENV: &str = "PALAVER_REQUIRE_POSTGRES";

fn newest_bin_dir() -> Option<PathBuf> {
    // An explicit directory (another installation), used only if it holds initdb.
    if let Some(dir) = std::env::var_os("PALAVER_POSTGRES_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").exists().then_some(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

fn check(what: &str, output: std::io::Result<Output>) -> Result<(), String> {
    let output = output.map_err(|e| format!("{what}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

impl TestPostgres {
    /// Starts a cluster for the test named `test`, or `Ok(None)` (after saying so on stderr)
    /// when PostgreSQL is not installed and [`REQUIRE_ENV`] is not `1`.
    pub fn start(test: &str) -> Result<Option<TestPostgres>, String> {
        let Some(bin) = newest_bin_dir() else {
            if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
                return Err(format!(
                    "{test}: PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb) \
                     and {REQUIRE_ENV}=1: apt-get install postgresql"
                ));
            }
            eprintln!(
                "\n*** {test}: NOT RUN — PostgreSQL is not installed (no \
                 /usr/lib/postgresql/*/bin/initdb). apt-get install postgresql to run it; \
                 {REQUIRE_ENV}=1 makes this a failure. ***\n"
            );
            return Ok(None);
        };
        let dir = tempfile::Builder::new()
            .prefix("palaver-pg-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let run_as = is_root().then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            check(
                "chown",
                Command::new("chown")
                    .arg(format!("{user}:"))
                    .arg(dir.path())
                    .output(),
            )?;
        }
        let postgres = TestPostgres {
            port: free_port()?,
            dir,
            bin,
            run_as,
        };
        check(
            "initdb",
            postgres
                .command("initdb")
                .arg("-D")
                .arg(postgres.data())
                .args(["-U", "palaver", "-A", "trust", "-E", "UTF8", "--no-sync"])
                .output(),
        )?;
        postgres.start_again()?;
        check(
            "createdb",
            postgres
                .command("createdb")
                .args(["-h", "127.0.0.1", "-p", &postgres.port.to_string()])
                .args(["-U", "palaver", "palaver"])
                .output(),
        )?;
        Ok(Some(postgres))
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(path);
                command
            }
            None => Command::new(path),
        }
    }

    /// `postgres://palaver@127.0.0.1:PORT/palaver`
    pub fn url(&self) -> String {
        format!("postgres://palaver@127.0.0.1:{}/palaver", self.port)
    }

    /// Where the cluster lives.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop(&self) -> Result<(), String> {
        check(
            "pg_ctl stop",
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .output(),
        )
    }

    /// Starts the server (again) on the same port and data.
    pub fn start_again(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        check(
            "pg_ctl start",
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.path().join("log"))
                .args(["-o", &options, "-w", "start"])
                .output(),
        )
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // Already stopped by a test is fine; the directory goes with `dir`.
        let _ = self.stop();
    }
}
