//! Who may open the store. sled locks its directory exclusively, so the daemon and a daemon-less
//! reader (`history` or `conversations` with no daemon running) cannot both have it open — and a
//! reader must never make a starting daemon fail. Two lock files in the home order them:
//!
//! - `daemon.lock`: the daemon holds it exclusively for as long as it runs, taken before it opens
//!   the store. A reader holds it shared only for the moment it takes `store.lock`, so once a
//!   daemon has it, no new reader starts reading the store.
//! - `store.lock`: a reader holds it exclusively while it has the store open (readers take turns:
//!   sled would refuse a second one); the daemon takes it next, after `daemon.lock`, waiting for
//!   the reader already reading — a few milliseconds — and then opens the store.
//!
//! A reader that finds either lock taken by a daemon (running or starting) asks the daemon over
//! its socket instead ([`offline_or_daemon`]). Locks are `flock(2)`s: the kernel drops them when
//! their process dies, so nothing stale is left behind.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use rustix::fs::{FlockOperation, flock};

/// How long a starting daemon waits for a reader to finish, and a reader for its turn or for a
/// starting daemon's socket, before saying what is in the way.
const PATIENCE: Duration = Duration::from_secs(20);
/// How often a waiting side tries again.
const POLL: Duration = Duration::from_millis(5);

/// Why the store could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(
        "another daemon is running (or starting) for {0}; stop it first (`palaver status` talks to it)"
    )]
    DaemonRunning(String),
    #[error("{path} has been held by a reader for over {secs} s; is a `palaver history` stuck?", secs = PATIENCE.as_secs())]
    ReaderStuck { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Held by a running daemon: no reader opens the store while it lives.
#[derive(Debug)]
pub struct DaemonClaim {
    _daemon: File,
    _store: File,
}

impl DaemonClaim {
    /// Claims the store in `home` for the daemon, waiting (bounded) for a reader already reading.
    pub async fn acquire(home: &Path) -> Result<Self, AccessError> {
        let daemon_path = home.join("daemon.lock");
        let store_path = home.join("store.lock");
        // A daemon that answers is running: say so now rather than after waiting.
        if std::os::unix::net::UnixStream::connect(home.join("palaver.sock")).is_ok() {
            return Err(AccessError::DaemonRunning(home.display().to_string()));
        }
        let daemon = open_lock(&daemon_path)?;
        // A reader holds `daemon.lock` shared only for an instant; a daemon holds it for good.
        if !poll_lock(
            &daemon,
            FlockOperation::NonBlockingLockExclusive,
            &daemon_path,
        )
        .await?
        {
            return Err(AccessError::DaemonRunning(home.display().to_string()));
        }
        let store = open_lock(&store_path)?;
        if !poll_lock(
            &store,
            FlockOperation::NonBlockingLockExclusive,
            &store_path,
        )
        .await?
        {
            return Err(AccessError::ReaderStuck {
                path: store_path.display().to_string(),
            });
        }
        Ok(Self {
            _daemon: daemon,
            _store: store,
        })
    }
}

/// Held by a daemon-less reader while it has the store open.
#[derive(Debug)]
pub struct OfflineRead {
    _store: File,
}

impl OfflineRead {
    /// The store is free to read: `Some` (hold it while reading); `None` while a daemon runs or
    /// starts, or another reader has its turn.
    pub fn try_begin(home: &Path) -> Result<Option<Self>, AccessError> {
        let daemon_path = home.join("daemon.lock");
        let store_path = home.join("store.lock");
        let daemon = open_lock(&daemon_path)?;
        if !try_lock(&daemon, FlockOperation::NonBlockingLockShared, &daemon_path)? {
            return Ok(None);
        }
        let store = open_lock(&store_path)?;
        if !try_lock(
            &store,
            FlockOperation::NonBlockingLockExclusive,
            &store_path,
        )? {
            return Ok(None);
        }
        // `daemon.lock` closes here: a daemon starting from now on waits for `store.lock`.
        drop(daemon);
        Ok(Some(Self { _store: store }))
    }
}

/// Where a read-only command gets its answer.
#[derive(Debug)]
pub enum Source {
    /// The daemon answers on its control socket.
    Daemon(crate::rpc::Client),
    /// No daemon: read the store directly, holding this while reading.
    Offline(OfflineRead),
}

/// Connects to the daemon if one runs; reads offline if none does; and while one is starting
/// (it holds the locks but does not answer yet), waits for its socket.
pub async fn offline_or_daemon(home: &Path) -> anyhow::Result<Source> {
    if !home.is_dir() {
        anyhow::bail!(
            "no identity in {}: run `palaver init --name NAME` first",
            home.display()
        );
    }
    let socket = home.join("palaver.sock");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match crate::rpc::Client::connect(&socket).await {
            Ok(client) => return Ok(Source::Daemon(client)),
            Err(crate::rpc::ClientError::NotRunning(_)) => {}
            Err(err) => return Err(err.into()),
        }
        if let Some(read) = OfflineRead::try_begin(home)? {
            return Ok(Source::Offline(read));
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "a daemon is starting for {} but its control socket did not answer within {} s",
                home.display(),
                PATIENCE.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

fn open_lock(path: &Path) -> Result<File, AccessError> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| AccessError::Io {
            path: path.display().to_string(),
            source,
        })
}

/// `true` if locked, `false` if someone else holds a conflicting lock.
fn try_lock(file: &File, operation: FlockOperation, path: &Path) -> Result<bool, AccessError> {
    match flock(file, operation) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(errno) => Err(AccessError::Io {
            path: path.display().to_string(),
            source: errno.into(),
        }),
    }
}

/// Tries until it gets the lock or [`PATIENCE`] runs out (`false`).
async fn poll_lock(
    file: &File,
    operation: FlockOperation,
    path: &Path,
) -> Result<bool, AccessError> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if try_lock(file, operation, path)? {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reader_waits_while_a_daemon_holds_the_store_and_reads_once_it_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let first = OfflineRead::try_begin(dir.path()).unwrap();
        assert!(first.is_some());
        assert!(
            OfflineRead::try_begin(dir.path()).unwrap().is_none(),
            "one reader at a time: sled opens once"
        );
        // The daemon waits for the reader already reading, then has the store to itself.
        let daemon = tokio::spawn({
            let home = dir.path().to_path_buf();
            async move { DaemonClaim::acquire(&home).await }
        });
        let daemon_lock = open_lock(&dir.path().join("daemon.lock")).unwrap();
        let lock_path = dir.path().join("daemon.lock");
        while try_lock(
            &daemon_lock,
            FlockOperation::NonBlockingLockShared,
            &lock_path,
        )
        .unwrap()
        {
            flock(&daemon_lock, FlockOperation::Unlock).unwrap();
            tokio::time::sleep(POLL).await;
        }
        // The daemon holds `daemon.lock` and waits for `store.lock`: the reader finishes.
        drop(first);
        let claim = daemon.await.unwrap().unwrap();
        assert!(OfflineRead::try_begin(dir.path()).unwrap().is_none());
        drop(claim);
        assert!(OfflineRead::try_begin(dir.path()).unwrap().is_some());
    }
}
