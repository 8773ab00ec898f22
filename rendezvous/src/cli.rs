//! The `palaver-rendezvous` command line: flags, their environment variables, and `--config FILE`
//! (TOML) — parsed into the server's [`Config`].
//!
//! Each key of the config file is a flag's long name (`listen = ["/ip4/0.0.0.0/tcp/4001"]`,
//! `mailbox-ttl-days = 30`, `relay-only = true`); a value from the file is handed to the same
//! parser as the flag, so both accept and refuse the same things. What is set on the command line
//! or in the environment wins over the file; the file wins over the defaults. A key that is not
//! a flag is an error naming it.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use libp2p::Multiaddr;

use crate::config::{Config, Limits, RelayLimits, StoreLocation};
use crate::logging::LogFormat;

/// Palaver's self-hosted rendezvous: accounts, presence, prekeys, encrypted mailbox, discovery
/// and relay.
#[derive(Debug, Parser)]
#[command(name = "palaver-rendezvous", version)]
pub struct Args {
    /// A TOML file setting any of these flags, by their long names (`data = "/var/lib/…"`,
    /// `listen = ["…", "…"]`); flags and environment variables win over it.
    #[arg(long, env = "PALAVER_RENDEZVOUS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address (repeatable): TCP and/or QUIC multiaddrs.
    #[arg(long, env = "PALAVER_RENDEZVOUS_LISTEN", value_delimiter = ',',
          default_values = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"])]
    pub listen: Vec<Multiaddr>,
    /// Directory for the database and the server's key (required, here or in the config file).
    #[arg(long, env = "PALAVER_RENDEZVOUS_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Keep accounts, prekeys and the mailbox in PostgreSQL (postgres://USER@HOST:PORT/DB)
    /// instead of sled under --data, so several instances serve one user population; each
    /// instance still keeps its own key in --data.
    #[arg(long, env = "PALAVER_RENDEZVOUS_STORE", value_name = "URL", value_parser = StoreLocation::parse,
          default_value = "sled", hide_env_values = true)]
    pub store: StoreLocation,
    /// Require one of these tokens to register a name (repeatable).
    #[arg(
        long = "registration-token",
        env = "PALAVER_RENDEZVOUS_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub registration_tokens: Vec<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long, env = "PALAVER_RENDEZVOUS_METRICS", value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Relay for NAT traversal only: no accounts, presence, mailbox or discovery.
    #[arg(long, env = "PALAVER_RENDEZVOUS_RELAY_ONLY")]
    pub relay_only: bool,
    /// Public address to announce (repeatable) when behind NAT; default: the listen addresses.
    #[arg(long, env = "PALAVER_RENDEZVOUS_EXTERNAL", value_delimiter = ',')]
    pub external: Vec<Multiaddr>,
    /// Messages held per recipient.
    #[arg(long, env = "PALAVER_RENDEZVOUS_MAILBOX_MESSAGES", default_value_t = Limits::default().mailbox.max_messages)]
    pub mailbox_messages: u32,
    /// Bytes held per recipient.
    #[arg(long, env = "PALAVER_RENDEZVOUS_MAILBOX_BYTES", default_value_t = Limits::default().mailbox.max_bytes)]
    pub mailbox_bytes: u64,
    /// Days a message is held before it expires unread.
    #[arg(
        long,
        env = "PALAVER_RENDEZVOUS_MAILBOX_TTL_DAYS",
        default_value_t = 14
    )]
    pub mailbox_ttl_days: u64,
    /// Seconds without a heartbeat before a user is shown offline.
    #[arg(
        long,
        env = "PALAVER_RENDEZVOUS_PRESENCE_TIMEOUT",
        default_value_t = 90
    )]
    pub presence_timeout: u64,
    /// Seconds one relayed connection (circuit) may last; the peers then open another.
    #[arg(long, env = "PALAVER_RENDEZVOUS_RELAY_CIRCUIT_SECS", default_value_t = RelayLimits::default().max_circuit_duration.as_secs())]
    pub relay_circuit_secs: u64,
    /// Bytes one relayed connection (circuit) may carry; the peers then open another.
    #[arg(long, env = "PALAVER_RENDEZVOUS_RELAY_CIRCUIT_BYTES", default_value_t = RelayLimits::default().max_circuit_bytes)]
    pub relay_circuit_bytes: u64,
    /// Seconds a relay slot is held before its holder must renew it.
    #[arg(long, env = "PALAVER_RENDEZVOUS_RELAY_RESERVATION_SECS", default_value_t = RelayLimits::default().reservation_duration.as_secs())]
    pub relay_reservation_secs: u64,
    /// How log lines on stderr look (the level comes from RUST_LOG, default info).
    #[arg(long, env = "PALAVER_RENDEZVOUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// An admin's task on the store instead of serving (give the same --data / --store, or
    /// --config, before it).
    #[command(subcommand)]
    pub admin: Option<Admin>,
}

/// What an admin can do to the store without serving.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Admin {
    /// Free a name (its key, prekeys and held mail) so that it can be registered again: for a
    /// user who lost their key file. Their contacts see the new key as a changed safety number.
    /// With the default sled store, stop the server first.
    RemoveUser {
        /// The user name to free.
        name: String,
    },
}

/// Why the command line and config file do not make a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// Bad flags, or `--help` / `--version`: clap prints (and exits) as usual.
    #[error(transparent)]
    Flags(#[from] clap::Error),
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
    #[error(
        "no data directory: give --data DIR (or `data = \"DIR\"` in the config file, or PALAVER_RENDEZVOUS_DATA)"
    )]
    NoData,
}

/// Flags that the config file cannot set.
const NOT_IN_FILE: [&str; 3] = ["config", "help", "version"];

impl Args {
    /// Parses `argv` (the program name first), then the config file it names, if any.
    pub fn load<I, T>(argv: I) -> Result<Self, ArgsError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
        let command = Self::command();
        let matches = command.clone().try_get_matches_from(&argv)?;
        let Some(path) = matches.get_one::<PathBuf>("config") else {
            return Ok(Self::from_arg_matches(&matches)?);
        };
        let file_error = |reason: String| ArgsError::File {
            path: path.display().to_string(),
            reason,
        };
        let from_file = file_flags(path, &command, &matches).map_err(file_error)?;
        let mut merged = argv;
        // After the program name: the file's flags, then those given (which the file skips).
        let at = merged.len().min(1);
        merged.splice(at..at, from_file.into_iter().map(OsString::from));
        let matches = command.try_get_matches_from(merged).map_err(|err| {
            // Everything given passed already: the fault is in the file. clap's first line says
            // which flag (= key) and why; its usage lines would only mislead.
            let rendered = err.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            file_error(first.trim_start_matches("error: ").to_owned())
        })?;
        Ok(Self::from_arg_matches(&matches)?)
    }

    /// The server's configuration.
    pub fn server_config(&self) -> Result<Config, ArgsError> {
        let data_dir = self.data.clone().ok_or(ArgsError::NoData)?;
        let mut limits = Limits::default();
        limits.mailbox.max_messages = self.mailbox_messages;
        limits.mailbox.max_bytes = self.mailbox_bytes;
        limits.mailbox.ttl = Duration::from_secs(self.mailbox_ttl_days.saturating_mul(86_400));
        limits.presence_timeout = Duration::from_secs(self.presence_timeout);
        limits.relay.max_circuit_duration = Duration::from_secs(self.relay_circuit_secs);
        limits.relay.max_circuit_bytes = self.relay_circuit_bytes;
        limits.relay.reservation_duration = Duration::from_secs(self.relay_reservation_secs);
        Ok(Config {
            listen: self.listen.clone(),
            data_dir,
            store: self.store.clone(),
            registration_tokens: self.registration_tokens.clone(),
            metrics: self.metrics,
            relay_only: self.relay_only,
            limits,
        })
    }
}

/// The config file's settings as flags (`--key=value`), leaving out those given on the command
/// line or in the environment.
fn file_flags(
    path: &Path,
    command: &clap::Command,
    given: &clap::ArgMatches,
) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|err| err.to_string())?;
    let table: toml::Table = text
        .parse()
        .map_err(|err: toml::de::Error| err.to_string().trim_end().replace('\n', " "))?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        let arg = command
            .get_arguments()
            .find(|arg| {
                arg.get_long() == Some(key.as_str()) && !NOT_IN_FILE.contains(&key.as_str())
            })
            .ok_or_else(|| {
                let known: Vec<&str> = command
                    .get_arguments()
                    .filter_map(clap::Arg::get_long)
                    .filter(|long| !NOT_IN_FILE.contains(long))
                    .collect();
                format!("unknown key `{key}` (the keys are: {})", known.join(", "))
            })?;
        if matches!(
            given.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let scalar = |value: &toml::Value| match value {
            toml::Value::String(text) => Ok(text.clone()),
            toml::Value::Integer(n) => Ok(n.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            _ => Err(format!(
                "`{key}`: expected a string, a number or true/false"
            )),
        };
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(on)) => {
                if *on {
                    flags.push(format!("--{key}"));
                }
            }
            (ArgAction::SetTrue, _) => return Err(format!("`{key}`: expected true or false")),
            (ArgAction::Append, toml::Value::Array(items)) => {
                for item in items {
                    flags.push(format!("--{key}={}", scalar(item)?));
                }
            }
            (_, toml::Value::Array(_)) => {
                return Err(format!("`{key}` takes one value, not a list"));
            }
            (_, value) => flags.push(format!("--{key}={}", scalar(value)?)),
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn with_file(toml: &str, flags: &[&str]) -> (Result<Args, ArgsError>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rendezvous.toml");
        std::fs::write(&path, toml).unwrap();
        let mut argv = vec!["palaver-rendezvous".to_owned(), "--config".to_owned()];
        argv.push(path.display().to_string());
        argv.extend(flags.iter().map(|f| (*f).to_owned()));
        (Args::load(argv), dir)
    }

    #[test]
    fn every_flag_can_come_from_the_file() {
        let (args, _dir) = with_file(
            r#"
            data = "/srv/rv"
            store = "postgres://palaver@db.internal:5432/palaver"
            listen = ["/ip4/127.0.0.1/tcp/4100", "/ip4/127.0.0.1/udp/4100/quic-v1"]
            registration-token = ["one", "two"]
            metrics = "127.0.0.1:9000"
            relay-only = true
            external = ["/ip4/203.0.113.7/tcp/4100"]
            mailbox-messages = 5
            mailbox-bytes = 6
            mailbox-ttl-days = 7
            presence-timeout = 8
            relay-circuit-secs = 9
            relay-circuit-bytes = 10
            relay-reservation-secs = 11
            log-format = "json"
            "#,
            &[],
        );
        let args = args.unwrap();
        let config = args.server_config().unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/srv/rv"));
        assert_eq!(
            config.store,
            StoreLocation::Postgres("postgres://palaver@db.internal:5432/palaver".into())
        );
        assert_eq!(config.listen.len(), 2);
        assert_eq!(config.registration_tokens, ["one", "two"]);
        assert_eq!(config.metrics, Some("127.0.0.1:9000".parse().unwrap()));
        assert!(config.relay_only);
        assert_eq!(args.external.len(), 1);
        assert_eq!(config.limits.mailbox.max_messages, 5);
        assert_eq!(config.limits.mailbox.max_bytes, 6);
        assert_eq!(config.limits.mailbox.ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(config.limits.presence_timeout, Duration::from_secs(8));
        assert_eq!(
            config.limits.relay.max_circuit_duration,
            Duration::from_secs(9)
        );
        assert_eq!(config.limits.relay.max_circuit_bytes, 10);
        assert_eq!(
            config.limits.relay.reservation_duration,
            Duration::from_secs(11)
        );
        assert_eq!(args.log_format, LogFormat::Json);
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_the_defaults() {
        let (args, _dir) = with_file(
            "data = \"/from/file\"\nlisten = [\"/ip4/127.0.0.1/tcp/1\"]\nmailbox-ttl-days = 3\n",
            &["--data", "/from/flag", "--listen", "/ip4/127.0.0.1/tcp/2"],
        );
        let config = args.unwrap().server_config().unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(
            config.listen,
            ["/ip4/127.0.0.1/tcp/2".parse::<Multiaddr>().unwrap()]
        );
        assert_eq!(config.limits.mailbox.ttl, Duration::from_secs(3 * 86_400));
        assert_eq!(config.limits.presence_timeout, Duration::from_secs(90));
        assert_eq!(config.store, StoreLocation::Sled);
    }

    #[test]
    fn an_unknown_key_or_a_bad_value_is_an_error_naming_it() {
        let (args, dir) = with_file("data = \"/x\"\nmailbox-size = 3\n", &[]);
        let err = args.unwrap_err().to_string();
        assert!(err.contains("unknown key `mailbox-size`"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        let (args, _dir) = with_file("data = \"/x\"\nmetrics = \"nowhere\"\n", &[]);
        let err = args.unwrap_err().to_string();
        assert!(err.contains("--metrics"), "{err}");
        let (args, _dir) = with_file("data = \"/x\"\nrelay-only = \"yes\"\n", &[]);
        let err = args.unwrap_err().to_string();
        assert!(
            err.contains("`relay-only`: expected true or false"),
            "{err}"
        );
        let (args, _dir) = with_file("data = [\n", &[]);
        assert!(matches!(args.unwrap_err(), ArgsError::File { .. }));
    }

    #[test]
    fn no_data_directory_anywhere_is_a_clear_error() {
        let args = Args::load(["palaver-rendezvous"]).unwrap();
        let err = args.server_config().unwrap_err().to_string();
        assert!(err.contains("--data DIR"), "{err}");
    }

    #[test]
    fn the_example_config_file_sets_every_flag_and_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/palaver-rendezvous.toml");
        let text = std::fs::read_to_string(path).unwrap();
        // Every key, commented out or not, so the example documents each flag.
        let documented: Vec<&str> = text
            .lines()
            .filter_map(|line| {
                let line = line.trim_start_matches('#').trim_start();
                let (key, _) = line.split_once(" = ")?;
                key.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-')
                    .then_some(key)
            })
            .collect();
        for arg in Args::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if NOT_IN_FILE.contains(&long) {
                continue;
            }
            assert!(
                documented.contains(&long),
                "{path} does not mention `{long}`"
            );
        }
        let args = Args::load(["palaver-rendezvous", "--config", path]).unwrap();
        args.server_config().unwrap();
    }
}
