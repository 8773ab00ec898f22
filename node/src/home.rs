//! The user's home directory: where the identity key (and later the store and socket) live.

use std::path::{Path, PathBuf};

use palaver_protocol::identity::keyfile::{self, KeyFileError};
use palaver_protocol::{Identity, UserName};
use serde::{Deserialize, Serialize};

/// Errors a person sees about their home directory.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("{0} already holds an identity; pass --force to replace it (the old key is lost)")]
    AlreadyInitialised(String),
    #[error("no identity in {0}: run `palaver init --name NAME` first")]
    NotInitialised(String),
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    BadProfile { path: String, detail: String },
}

/// `<home>`: `identity.key` (mode 0600) and `profile.json` (the user name).
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct Profile {
    name: UserName,
}

impl Home {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$PALAVER_HOME`, else the XDG data directory (`~/.local/share/palaver`).
    pub fn default_dir() -> PathBuf {
        std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."))
            .join("palaver")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("identity.key")
    }

    fn profile_path(&self) -> PathBuf {
        self.dir.join("profile.json")
    }

    /// Creates a new identity named `name`, refusing to replace one unless `force`.
    pub fn init(
        &self,
        name: UserName,
        passphrase: Option<&str>,
        force: bool,
    ) -> Result<Identity, HomeError> {
        let identity = Identity::generate(&mut rand_core::OsRng);
        self.init_with(identity, name, passphrase, force)
    }

    /// Refuses if an identity is here already, unless `force`.
    pub fn check_free(&self, force: bool) -> Result<(), HomeError> {
        if self.key_path().exists() && !force {
            return Err(HomeError::AlreadyInitialised(
                self.dir.display().to_string(),
            ));
        }
        Ok(())
    }

    /// Stores `identity` (a linked device's, made before it knew its name) as `name`.
    pub fn init_with(
        &self,
        identity: Identity,
        name: UserName,
        passphrase: Option<&str>,
        force: bool,
    ) -> Result<Identity, HomeError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| HomeError::Io { path, source }
        };
        self.check_free(force)?;
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(&self.dir))?;
        }
        keyfile::write(
            &self.key_path(),
            &keyfile::seal(&identity, passphrase, &mut rand_core::OsRng)?,
        )?;
        let profile =
            serde_json::to_vec_pretty(&Profile { name }).map_err(|e| HomeError::BadProfile {
                path: self.profile_path().display().to_string(),
                detail: e.to_string(),
            })?;
        std::fs::write(self.profile_path(), profile).map_err(io(&self.profile_path()))?;
        Ok(identity)
    }

    /// Whether the identity key is sealed under a passphrase (then so are the store's secrets).
    pub fn is_sealed(&self) -> bool {
        std::fs::read(self.key_path()).is_ok_and(|bytes| keyfile::is_sealed(&bytes))
    }

    /// Opens the identity and the user name.
    pub fn open(&self, passphrase: Option<&str>) -> Result<(Identity, UserName), HomeError> {
        if !self.key_path().exists() {
            return Err(HomeError::NotInitialised(self.dir.display().to_string()));
        }
        let identity = keyfile::read(&self.key_path(), passphrase)?;
        let path = self.profile_path();
        let bytes = std::fs::read(&path).map_err(|source| HomeError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let profile: Profile =
            serde_json::from_slice(&bytes).map_err(|e| HomeError::BadProfile {
                path: path.display().to_string(),
                detail: e.to_string(),
            })?;
        Ok((identity, profile.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_open_gives_the_same_identity_and_a_second_init_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("h"));
        let name: UserName = "alice".parse().unwrap();
        let created = home.init(name.clone(), None, false).unwrap();
        let (opened, opened_name) = home.open(None).unwrap();
        assert_eq!(opened.public(), created.public());
        assert_eq!(opened_name, name);
        assert!(matches!(
            home.init(name.clone(), None, false),
            Err(HomeError::AlreadyInitialised(_))
        ));
        let replaced = home.init(name, None, true).unwrap();
        assert_ne!(replaced.public(), created.public());
    }

    #[test]
    fn opening_an_empty_home_says_to_run_init() {
        let dir = tempfile::tempdir().unwrap();
        let err = Home::new(dir.path()).open(None).unwrap_err().to_string();
        assert!(err.contains("palaver init"), "{err}");
    }
}
