//! What an admin does to the store without serving (`palaver-rendezvous … remove-user NAME`).

use palaver_protocol::UserName;

use crate::config::Config;
use crate::store::StoreError;

/// Why an admin task failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    BadName(#[from] palaver_protocol::name::NameError),
    #[error("no user {0} at this rendezvous")]
    NoSuchUser(UserName),
    #[error(
        "cannot open the store (with the default sled store, stop the server using this --data \
         first): {0}"
    )]
    Store(#[from] StoreError),
}

/// Frees `name` at the store `config` names: its key, prekeys and held mail are removed.
pub fn remove_user(config: &Config, name: &str) -> Result<(), AdminError> {
    let name: UserName = name.parse()?;
    let store = config
        .store
        .open(&config.data_dir, config.limits.store_cache_bytes)?;
    if !store.remove_user(&name)? {
        return Err(AdminError::NoSuchUser(name));
    }
    store.flush_blocking()?;
    Ok(())
}
