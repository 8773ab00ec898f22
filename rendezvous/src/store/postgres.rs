//! The cluster back-end: one PostgreSQL database shared by every instance.
//!
//! tokio-postgres with a deadpool pool, driven by a small runtime the store owns: each
//! [`Storage`] call blocks its caller for one bounded round trip (or one transaction) and returns
//! once PostgreSQL has committed, so a durable reply needs no flush. Called from the server's
//! actor (a tokio worker) the wait runs under `block_in_place`, so the runtime moves the actor's
//! other work to another worker meanwhile; the connections themselves live on the store's own
//! runtime, which keeps the store usable from plain threads (tests, the simulation) as well.
//!
//! Correctness across instances comes from the database, not from this process: names and keys
//! are unique columns, a one-time prekey is taken with `FOR UPDATE SKIP LOCKED` (two instances
//! never hand out the same one), a deposit is an insert that ignores a duplicate id, and an ack
//! or expiry is a `DELETE … RETURNING` (each message reported removed exactly once). A discovery
//! registration is one upsert whose limits are checked in the same statement.
//!
//! The schema is created and migrated at open: [`MIGRATIONS`] in order, under an advisory lock
//! so instances starting together do not race, each recorded in `palaver_schema`.

use std::collections::BTreeMap;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use libp2p::PeerId;
use palaver_protocol::identity::devices::SignedDeviceList;
use palaver_protocol::crypto::x3dh::{OneTimePrekey, PrekeyBundle, PrekeyUpload};
use palaver_protocol::rendezvous::discovery::Namespace;
use palaver_protocol::rendezvous::mailbox::Usage;
use palaver_protocol::wire::{MailItem, SignedPeerRecord};
use palaver_protocol::{MessageId, UserName, VerifyingKey};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::FromSql;

use super::{
    Deposit, Holder, PutRecord, RecordLimits, Registration, Removed, Result, Storage, StoreError,
    StoredSignedPrekey, StoredUser, decode, encode, name_of_bytes, redact,
};

/// The schema, one step per version; a step is never edited once released, only added to.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE accounts (
        name TEXT PRIMARY KEY,
        identity BYTEA NOT NULL UNIQUE,
        registered_at_ms BIGINT NOT NULL,
        last_seen_ms BIGINT
    );
    CREATE TABLE signed_prekeys (
        name TEXT PRIMARY KEY REFERENCES accounts (name),
        record BYTEA NOT NULL
    );
    CREATE TABLE one_time_prekeys (
        name TEXT NOT NULL REFERENCES accounts (name),
        id BIGINT NOT NULL,
        record BYTEA NOT NULL,
        PRIMARY KEY (name, id)
    );
    CREATE TABLE mail (
        recipient TEXT NOT NULL REFERENCES accounts (name),
        id BYTEA NOT NULL,
        deposited_at_ms BIGINT NOT NULL,
        item BYTEA NOT NULL,
        PRIMARY KEY (recipient, id)
    );
    CREATE INDEX mail_in_order ON mail (recipient, deposited_at_ms, id);
    CREATE INDEX mail_by_age ON mail (deposited_at_ms);",
    ),
    (
        2,
        "CREATE TABLE discovery (
        namespace TEXT NOT NULL,
        peer BYTEA NOT NULL,
        record BYTEA NOT NULL,
        expires_at_ms BIGINT NOT NULL,
        PRIMARY KEY (namespace, peer)
    );
    CREATE INDEX discovery_by_peer ON discovery (peer);
    CREATE INDEX discovery_in_order ON discovery (namespace, expires_at_ms);
    CREATE INDEX discovery_by_expiry ON discovery (expires_at_ms);",
    ),
    (
        3,
        // Prekeys and mail are filed by holder now: a name, or `name/device` for a linked
        // device, which has no account row of its own.
        "ALTER TABLE signed_prekeys DROP CONSTRAINT signed_prekeys_name_fkey;
    ALTER TABLE one_time_prekeys DROP CONSTRAINT one_time_prekeys_name_fkey;
    ALTER TABLE mail DROP CONSTRAINT mail_recipient_fkey;
    CREATE TABLE device_lists (
        name TEXT PRIMARY KEY REFERENCES accounts (name),
        list BYTEA NOT NULL
    );
    CREATE TABLE devices (
        device BYTEA PRIMARY KEY,
        name TEXT NOT NULL REFERENCES accounts (name)
    );
    CREATE INDEX devices_by_name ON devices (name);",
    ),
];

/// The tables filed by [`Holder`], with the column that names it.
const HOLDER_COLUMNS: [(&str, &str); 3] = [
    ("mail", "recipient"),
    ("one_time_prekeys", "name"),
    ("signed_prekeys", "name"),
];

/// Any number that is ours alone: instances take this advisory lock to migrate one at a time.
const MIGRATION_LOCK: i64 = 0x7061_6c61_7665_7201;

/// The longest one store call may take before the request is answered "try again".
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections per instance: the actor makes one call at a time; the rest serve the group
/// commit's flushes and reconnect headroom.
const POOL_SIZE: usize = 4;

/// Owns the runtime that drives the pool's connections; shut down without waiting on drop
/// (dropping a runtime inside another's async context would panic).
#[derive(Debug)]
struct Driver(Option<tokio::runtime::Runtime>);

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

#[derive(Debug)]
pub(crate) struct PgStore {
    pub(super) pool: Pool,
    handle: tokio::runtime::Handle,
    url: String,
    _driver: Driver,
}

fn pg_error(error: tokio_postgres::Error) -> StoreError {
    let retry = match error.code() {
        // No SQL state: the connection broke, or never opened.
        None => true,
        Some(code) => {
            code.code().starts_with("08")
                || code.code().starts_with("53")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
        }
    };
    let text = match error.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => error.to_string(),
    };
    if retry {
        StoreError::Unavailable(text)
    } else {
        StoreError::Database(text)
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        pg_error(error)
    }
}

impl From<PoolError> for StoreError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Backend(error) => pg_error(error),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_ms(value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative time {value}")))
}

fn column<'a, T: FromSql<'a>>(row: &'a tokio_postgres::Row, index: usize) -> Result<T> {
    row.try_get(index)
        .map_err(|e| StoreError::Corrupt(format!("column {index}: {e}")))
}

fn key_of_bytes(bytes: &[u8]) -> Result<VerifyingKey> {
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("an identity key is not 32 bytes".into()))?;
    VerifyingKey::from_bytes(&array).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn usage_of(row: &tokio_postgres::Row) -> Result<Usage> {
    let messages: i64 = column(row, 0)?;
    let bytes: i64 = column(row, 1)?;
    Ok(Usage {
        messages: u32::try_from(messages).unwrap_or(u32::MAX),
        bytes: u64::try_from(bytes).unwrap_or(0),
    })
}

/// One-time prekeys by id, the last of a repeated id winning (as one sled batch would).
fn one_time_rows(keys: &[OneTimePrekey]) -> Result<(Vec<i64>, Vec<Vec<u8>>)> {
    let mut by_id = BTreeMap::new();
    for key in keys {
        by_id.insert(i64::from(key.id), encode(key)?);
    }
    Ok(by_id.into_iter().unzip())
}

impl PgStore {
    /// Connects to `url` and brings the schema up to date. Fails with a clear error when the
    /// database cannot be reached now: an instance does not start without its store.
    pub(crate) fn open(url: &str) -> Result<Self> {
        let location = |reason: String| StoreError::Location {
            url: redact(url),
            reason,
        };
        let mut config =
            tokio_postgres::Config::from_str(url).map_err(|e| location(e.to_string()))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CALL_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("palaver-rendezvous");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("palaver-store")
            .enable_all()
            .build()
            .map_err(|e| location(format!("starting the database driver: {e}")))?;
        let handle = runtime.handle().clone();
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // Fast: a broken connection shows itself on its next query, which fails with
                // "try again"; the pool then opens a fresh one.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(CALL_TIMEOUT))
            .recycle_timeout(Some(CALL_TIMEOUT))
            .build()
            .map_err(|e| location(e.to_string()))?;
        let store = Self {
            pool,
            handle,
            url: redact(url),
            _driver: Driver(Some(runtime)),
        };
        store
            .call("migrate", store.migrate())
            .map_err(|e| location(e.to_string()))?;
        Ok(store)
    }

    /// Runs `work` on the store's runtime and waits for it, at most [`CALL_TIMEOUT`].
    pub(super) fn call<T: Send>(
        &self,
        what: &'static str,
        work: impl Future<Output = Result<T>> + Send,
    ) -> Result<T> {
        let bounded = async {
            match tokio::time::timeout(CALL_TIMEOUT, work).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "{what}: {} did not answer within {CALL_TIMEOUT:?}",
                    self.url
                ))),
            }
        };
        match tokio::runtime::Handle::try_current() {
            Err(_) => self.handle.block_on(bounded),
            Ok(current)
                if current.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
            {
                tokio::task::block_in_place(|| self.handle.block_on(bounded))
            }
            // A current-thread runtime cannot lend its thread: wait on a helper thread instead.
            Ok(_) => std::thread::scope(|scope| {
                scope
                    .spawn(|| self.handle.block_on(bounded))
                    .join()
                    .unwrap_or_else(|_| {
                        Err(StoreError::Database(format!(
                            "{what}: the store call panicked"
                        )))
                    })
            }),
        }
    }

    async fn migrate(&self) -> Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS palaver_schema (
                version INTEGER PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await?;
        let row = tx
            .query_one("SELECT coalesce(max(version), 0) FROM palaver_schema", &[])
            .await?;
        let current: i32 = column(&row, 0)?;
        let latest = MIGRATIONS.last().map_or(0, |(version, _)| *version);
        if current > latest {
            return Err(StoreError::Database(format!(
                "the database's schema is version {current}, newer than this server's {latest}: \
                 upgrade palaver-rendezvous"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO palaver_schema (version) VALUES ($1)",
                &[version],
            )
            .await?;
            tracing::info!(version, "database schema migrated");
        }
        tx.commit().await?;
        Ok(())
    }

    /// One statement, its rows (the statement prepared once per connection).
    async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(sql).await?;
        Ok(client.query(&statement, params).await?)
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(sql).await?;
        Ok(client.execute(&statement, params).await?)
    }

    fn removed(rows: &[tokio_postgres::Row]) -> Result<Vec<Removed>> {
        rows.iter()
            .map(|row| {
                let recipient: &str = column(row, 0)?;
                let bytes: i64 = column(row, 1)?;
                Ok(Removed {
                    recipient: Holder::from_bytes(recipient.as_bytes())?,
                    bytes: u64::try_from(bytes).unwrap_or(0),
                })
            })
            .collect()
    }
}

impl Storage for PgStore {
    fn flush_blocking(&self) -> Result<()> {
        // Every write committed before it returned.
        Ok(())
    }

    fn user(&self, name: &UserName) -> Result<Option<StoredUser>> {
        self.call("user", async {
            let rows = self
                .rows(
                    "SELECT identity, registered_at_ms, last_seen_ms FROM accounts WHERE name = $1",
                    &[&name.as_str()],
                )
                .await?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            let last_seen: Option<i64> = column(row, 2)?;
            Ok(Some(StoredUser {
                identity: key_of_bytes(column(row, 0)?)?,
                registered_at_ms: from_ms(column(row, 1)?)?,
                last_seen_ms: last_seen.map(from_ms).transpose()?,
            }))
        })
    }

    fn name_of(&self, identity: &VerifyingKey) -> Result<Option<UserName>> {
        self.call("name_of", async {
            let rows = self
                .rows(
                    "SELECT name FROM accounts WHERE identity = $1",
                    &[&identity.as_bytes().as_slice()],
                )
                .await?;
            rows.first()
                .map(|row| name_of_bytes(column::<&str>(row, 0)?.as_bytes()))
                .transpose()
        })
    }

    fn register(
        &self,
        name: &UserName,
        identity: &VerifyingKey,
        now_ms: u64,
    ) -> Result<Registration> {
        let inserted = self.call("register", async {
            self.execute(
                "INSERT INTO accounts (name, identity, registered_at_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
                &[&name.as_str(), &identity.as_bytes().as_slice(), &ms(now_ms)],
            )
            .await
        })?;
        if inserted == 1 {
            return Ok(Registration::New);
        }
        // Either the name or the key is taken (accounts are never deleted, so one still is).
        if let Some(user) = self.user(name)? {
            return Ok(Registration::of_bound(&user, identity));
        }
        match self.name_of(identity)? {
            Some(existing) => Ok(Registration::KeyHasName(existing)),
            None => Err(StoreError::Database(
                "registration conflicted with a row that is gone".into(),
            )),
        }
    }

    fn set_last_seen(&self, name: &UserName, at: u64) -> Result<()> {
        self.call("set_last_seen", async {
            self.execute(
                "UPDATE accounts SET last_seen_ms = $2 WHERE name = $1",
                &[&name.as_str(), &ms(at)],
            )
            .await
        })?;
        Ok(())
    }

    fn user_count(&self) -> Result<u64> {
        self.call("user_count", async {
            let rows = self.rows("SELECT count(*) FROM accounts", &[]).await?;
            let count: i64 = rows
                .first()
                .map(|row| column(row, 0))
                .transpose()?
                .unwrap_or(0);
            Ok(u64::try_from(count).unwrap_or(0))
        })
    }

    fn remove_user(&self, name: &UserName) -> Result<bool> {
        self.call("remove_user", async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            // The account's own holder is its name; its linked devices' are `name/…`.
            let linked = format!("{name}/");
            for (table, holder) in HOLDER_COLUMNS {
                tx.execute(
                    &format!(
                        "DELETE FROM {table} WHERE {holder} = $1 OR starts_with({holder}, $2)"
                    ),
                    &[&name.as_str(), &linked],
                )
                .await?;
            }
            for table in ["devices", "device_lists"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE name = $1"),
                    &[&name.as_str()],
                )
                .await?;
            }
            let removed = tx
                .execute("DELETE FROM accounts WHERE name = $1", &[&name.as_str()])
                .await?;
            tx.commit().await?;
            Ok(removed > 0)
        })
    }

    fn devices(&self, name: &UserName) -> Result<Option<SignedDeviceList>> {
        self.call("devices", async {
            let rows = self
                .rows(
                    "SELECT list FROM device_lists WHERE name = $1",
                    &[&name.as_str()],
                )
                .await?;
            rows.first().map(|row| decode(column(row, 0)?)).transpose()
        })
    }

    fn put_devices(&self, name: &UserName, list: &SignedDeviceList) -> Result<Vec<Removed>> {
        let account = list.claimed().account;
        let linked: Vec<&[u8]> = list
            .claimed()
            .others(&account)
            .map(|d| d.key.as_bytes().as_slice())
            .collect();
        let encoded = encode(list)?;
        self.call("put_devices", async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let gone = tx
                .query(
                    "DELETE FROM devices WHERE name = $1 AND NOT device = ANY($2) RETURNING device",
                    &[&name.as_str(), &linked],
                )
                .await?;
            let mut removed = Vec::new();
            for row in &gone {
                let holder = Holder::device(name, &key_of_bytes(column(row, 0)?)?);
                let mail = tx
                    .query(
                        "DELETE FROM mail WHERE recipient = $1 \
                         RETURNING recipient, length(item)::BIGINT",
                        &[&holder.as_str()],
                    )
                    .await?;
                removed.extend(Self::removed(&mail)?);
                for (table, column) in &HOLDER_COLUMNS[1..] {
                    tx.execute(
                        &format!("DELETE FROM {table} WHERE {column} = $1"),
                        &[&holder.as_str()],
                    )
                    .await?;
                }
            }
            // A device another account holds (an instance racing this one) refuses the list.
            let inserted = tx
                .execute(
                    "INSERT INTO devices (device, name) SELECT d, $1 FROM unnest($2::BYTEA[]) AS d \
                     ON CONFLICT (device) DO UPDATE SET name = excluded.name \
                     WHERE devices.name = excluded.name",
                    &[&name.as_str(), &linked],
                )
                .await?;
            if inserted != linked.len() as u64 {
                return Err(StoreError::Database(format!(
                    "{name}'s device list names another account's device"
                )));
            }
            tx.execute(
                "INSERT INTO device_lists (name, list) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET list = excluded.list",
                &[&name.as_str(), &encoded],
            )
            .await?;
            tx.commit().await?;
            Ok(removed)
        })
    }

    fn device_owner(&self, device: &VerifyingKey) -> Result<Option<UserName>> {
        self.call("device_owner", async {
            let rows = self
                .rows(
                    "SELECT name FROM devices WHERE device = $1",
                    &[&device.as_bytes().as_slice()],
                )
                .await?;
            rows.first()
                .map(|row| name_of_bytes(column::<&str>(row, 0)?.as_bytes()))
                .transpose()
        })
    }

    fn publish_prekeys(&self, name: &Holder, upload: &PrekeyUpload) -> Result<()> {
        let signed = encode(&StoredSignedPrekey {
            identity: upload.identity,
            signed_prekey: upload.signed_prekey.clone(),
        })?;
        let (ids, records) = one_time_rows(&upload.one_time_prekeys)?;
        self.call("publish_prekeys", async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute(
                "INSERT INTO signed_prekeys (name, record) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET record = excluded.record",
                &[&name.as_str(), &signed],
            )
            .await?;
            tx.execute(
                "DELETE FROM one_time_prekeys WHERE name = $1",
                &[&name.as_str()],
            )
            .await?;
            tx.execute(
                "INSERT INTO one_time_prekeys (name, id, record) \
                 SELECT $1, t.id, t.record FROM unnest($2::BIGINT[], $3::BYTEA[]) AS t (id, record)",
                &[&name.as_str(), &ids, &records],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn has_signed_prekey(&self, name: &Holder) -> Result<bool> {
        self.call("has_signed_prekey", async {
            let rows = self
                .rows(
                    "SELECT 1 FROM signed_prekeys WHERE name = $1",
                    &[&name.as_str()],
                )
                .await?;
            Ok(!rows.is_empty())
        })
    }

    fn add_one_time_prekeys(&self, name: &Holder, keys: &[OneTimePrekey]) -> Result<()> {
        let (ids, records) = one_time_rows(keys)?;
        self.call("add_one_time_prekeys", async {
            self.execute(
                "INSERT INTO one_time_prekeys (name, id, record) \
                 SELECT $1, t.id, t.record FROM unnest($2::BIGINT[], $3::BYTEA[]) AS t (id, record) \
                 ON CONFLICT (name, id) DO UPDATE SET record = excluded.record",
                &[&name.as_str(), &ids, &records],
            )
            .await
        })?;
        Ok(())
    }

    fn one_time_count(&self, name: &Holder) -> Result<u32> {
        self.call("one_time_count", async {
            let rows = self
                .rows(
                    "SELECT count(*) FROM one_time_prekeys WHERE name = $1",
                    &[&name.as_str()],
                )
                .await?;
            let count: i64 = rows
                .first()
                .map(|row| column(row, 0))
                .transpose()?
                .unwrap_or(0);
            Ok(u32::try_from(count).unwrap_or(u32::MAX))
        })
    }

    fn take_bundle(&self, name: &Holder, with_one_time: bool) -> Result<Option<PrekeyBundle>> {
        self.call("take_bundle", async {
            // One statement: the signed prekey and (if asked) the lowest one-time prekey, taken
            // only when there is a signed prekey to go with it. SKIP LOCKED: an instance taking
            // a key at the same moment gets the next one.
            let rows = self
                .rows(
                    "WITH signed AS (SELECT record FROM signed_prekeys WHERE name = $1), \
                     taken AS (DELETE FROM one_time_prekeys WHERE $2 AND name = $1 \
                     AND EXISTS (SELECT 1 FROM signed) AND id = (\
                     SELECT id FROM one_time_prekeys WHERE name = $1 \
                     ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING record) \
                     SELECT signed.record, (SELECT record FROM taken) FROM signed",
                    &[&name.as_str(), &with_one_time],
                )
                .await?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            let signed: StoredSignedPrekey = decode(column(row, 0)?)?;
            let one_time_prekey = column::<Option<&[u8]>>(row, 1)?
                .map(decode::<OneTimePrekey>)
                .transpose()?;
            Ok(Some(PrekeyBundle {
                identity: signed.identity,
                signed_prekey: signed.signed_prekey,
                one_time_prekey,
            }))
        })
    }

    fn holds(&self, name: &Holder, id: &MessageId) -> Result<bool> {
        self.call("holds", async {
            let rows = self
                .rows(
                    "SELECT 1 FROM mail WHERE recipient = $1 AND id = $2",
                    &[&name.as_str(), &id.0.as_slice()],
                )
                .await?;
            Ok(!rows.is_empty())
        })
    }

    fn deposit(&self, to: &Holder, id: &MessageId, item: &MailItem) -> Result<Deposit> {
        let value = encode(item)?;
        let len = value.len() as u64;
        let inserted = self.call("deposit", async {
            self.execute(
                "INSERT INTO mail (recipient, id, deposited_at_ms, item) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
                &[
                    &to.as_str(),
                    &id.0.as_slice(),
                    &ms(item.deposited_at_ms),
                    &value,
                ],
            )
            .await
        })?;
        Ok(if inserted == 1 {
            Deposit::Stored(len)
        } else {
            Deposit::Duplicate
        })
    }

    fn fetch(
        &self,
        name: &Holder,
        max: usize,
        max_bytes: u64,
        not_before: u64,
    ) -> Result<Vec<MailItem>> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = self.call("fetch", async {
            self.rows(
                "SELECT item FROM mail WHERE recipient = $1 AND deposited_at_ms >= $2 \
                 ORDER BY deposited_at_ms, id LIMIT $3",
                &[&name.as_str(), &ms(not_before), &limit],
            )
            .await
        })?;
        let mut items = Vec::new();
        let mut bytes = 0u64;
        for row in &rows {
            let value: &[u8] = column(row, 0)?;
            let len = value.len() as u64;
            if !items.is_empty() && bytes + len > max_bytes {
                break;
            }
            bytes += len;
            items.push(decode(value)?);
        }
        Ok(items)
    }

    fn ack(&self, name: &Holder, ids: &[MessageId]) -> Result<Vec<Removed>> {
        let ids: Vec<&[u8]> = ids.iter().map(|id| id.0.as_slice()).collect();
        let rows = self.call("ack", async {
            self.rows(
                "DELETE FROM mail WHERE recipient = $1 AND id = ANY($2) \
                 RETURNING recipient, length(item)::BIGINT",
                &[&name.as_str(), &ids],
            )
            .await
        })?;
        Self::removed(&rows)
    }

    fn expire(&self, cutoff: u64, max: usize) -> Result<Vec<Removed>> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = self.call("expire", async {
            // SKIP LOCKED: instances sweeping together split the work instead of waiting.
            self.rows(
                "DELETE FROM mail WHERE (recipient, id) IN (\
                 SELECT recipient, id FROM mail WHERE deposited_at_ms < $1 \
                 ORDER BY deposited_at_ms LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 RETURNING recipient, length(item)::BIGINT",
                &[&ms(cutoff), &limit],
            )
            .await
        })?;
        Self::removed(&rows)
    }

    fn usage(&self, name: &Holder) -> Result<Usage> {
        self.call("usage", async {
            let rows = self
                .rows(
                    "SELECT count(*), coalesce(sum(length(item)), 0)::BIGINT FROM mail \
                     WHERE recipient = $1",
                    &[&name.as_str()],
                )
                .await?;
            rows.first()
                .map(usage_of)
                .transpose()
                .map(Option::unwrap_or_default)
        })
    }

    fn mailbox_totals(&self) -> Result<Usage> {
        self.call("mailbox_totals", async {
            let rows = self
                .rows(
                    "SELECT count(*), coalesce(sum(length(item)), 0)::BIGINT FROM mail",
                    &[],
                )
                .await?;
            rows.first()
                .map(usage_of)
                .transpose()
                .map(Option::unwrap_or_default)
        })
    }

    fn put_record(
        &self,
        namespace: &Namespace,
        peer: &PeerId,
        record: &SignedPeerRecord,
        expires_ms: u64,
        limits: RecordLimits,
    ) -> Result<PutRecord> {
        let (namespace, peer) = (namespace.to_string(), peer.to_bytes());
        let per_peer = i64::try_from(limits.per_peer).unwrap_or(i64::MAX);
        let total = i64::try_from(limits.total).unwrap_or(i64::MAX);
        self.call("put_record", async {
            // A renewal always goes in; a new registration only within both limits.
            let stored = self
                .execute(
                    "INSERT INTO discovery (namespace, peer, record, expires_at_ms) \
                     SELECT $1, $2, $3, $4 WHERE \
                     EXISTS (SELECT 1 FROM discovery WHERE namespace = $1 AND peer = $2) \
                     OR ((SELECT count(*) FROM discovery WHERE peer = $2) < $5 \
                         AND (SELECT count(*) FROM discovery) < $6) \
                     ON CONFLICT (namespace, peer) DO UPDATE \
                     SET record = excluded.record, expires_at_ms = excluded.expires_at_ms",
                    &[
                        &namespace,
                        &peer,
                        &record.0,
                        &ms(expires_ms),
                        &per_peer,
                        &total,
                    ],
                )
                .await?;
            if stored == 1 {
                return Ok(PutRecord::Stored);
            }
            let rows = self
                .rows("SELECT count(*) FROM discovery WHERE peer = $1", &[&peer])
                .await?;
            let held: i64 = rows
                .first()
                .map(|row| column(row, 0))
                .transpose()?
                .unwrap_or(0);
            Ok(if held >= per_peer {
                PutRecord::PeerFull
            } else {
                PutRecord::Full
            })
        })
    }

    fn remove_record(&self, namespace: &Namespace, peer: &PeerId) -> Result<()> {
        let (namespace, peer) = (namespace.to_string(), peer.to_bytes());
        self.call("remove_record", async {
            self.execute(
                "DELETE FROM discovery WHERE namespace = $1 AND peer = $2",
                &[&namespace, &peer],
            )
            .await
        })?;
        Ok(())
    }

    fn holds_record(&self, namespace: &Namespace, peer: &PeerId, now_ms: u64) -> Result<bool> {
        let (namespace, peer) = (namespace.to_string(), peer.to_bytes());
        self.call("holds_record", async {
            let rows = self
                .rows(
                    "SELECT 1 FROM discovery WHERE namespace = $1 AND peer = $2 \
                     AND expires_at_ms > $3",
                    &[&namespace, &peer, &ms(now_ms)],
                )
                .await?;
            Ok(!rows.is_empty())
        })
    }

    fn records(
        &self,
        namespace: &Namespace,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<SignedPeerRecord>> {
        let namespace = namespace.to_string();
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = self.call("records", async {
            self.rows(
                "SELECT record FROM discovery WHERE namespace = $1 AND expires_at_ms > $2 \
                 ORDER BY expires_at_ms DESC LIMIT $3",
                &[&namespace, &ms(now_ms), &limit],
            )
            .await
        })?;
        rows.iter()
            .map(|row| Ok(SignedPeerRecord(column::<Vec<u8>>(row, 0)?)))
            .collect()
    }

    fn expire_records(&self, now_ms: u64, max: usize) -> Result<usize> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let removed = self.call("expire_records", async {
            // SKIP LOCKED: instances sweeping together split the work instead of waiting.
            self.execute(
                "DELETE FROM discovery WHERE (namespace, peer) IN (\
                 SELECT namespace, peer FROM discovery WHERE expires_at_ms <= $1 \
                 ORDER BY expires_at_ms LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&ms(now_ms), &limit],
            )
            .await
        })?;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }
}
