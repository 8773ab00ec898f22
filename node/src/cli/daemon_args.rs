//! `palaver daemon`'s flags, and the daemon's configuration made of them and of
//! `<home>/config.toml` (which remembers the rendezvous and the listen addresses).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use libp2p::Multiaddr;

use super::{Config, input};
use crate::daemon::{self, DaemonConfig};
use crate::home::Home;

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The rendezvous server (remembered in <home>/config.toml for next time). Repeatable:
    /// the instances of a cluster (or other servers) to move to, in order, when the one in
    /// use dies or refuses us (refused because this key runs in another daemon, the daemon
    /// stops instead).
    #[arg(long, value_parser = input::multiaddr)]
    rendezvous: Vec<Multiaddr>,
    /// Where to listen for peers (remembered in <home>/config.toml for next time)
    /// [default: all interfaces, TCP and QUIC, any port].
    #[arg(long, value_parser = input::multiaddr)]
    listen: Vec<Multiaddr>,
    /// Token for servers that only register users who have one.
    #[arg(long)]
    registration_token: Option<String>,
    /// Accept connections only through the relay (for testing NAT traversal).
    #[arg(long)]
    relay_only_transport: bool,
    /// An extra relay (repeatable, ending in /p2p/<id>) to be reachable through when behind a
    /// NAT, besides the rendezvous; e.g. a `palaver-rendezvous --relay-only`.
    #[arg(long = "relay", value_name = "MULTIADDR", value_parser = input::multiaddr)]
    relays: Vec<Multiaddr>,
    /// Where received files go [default: <home>/files].
    #[arg(long, env = "PALAVER_DOWNLOAD_DIR")]
    download_dir: Option<PathBuf>,
    /// Files offered to you up to this size are fetched without asking; larger ones wait
    /// for `palaver file get ID`.
    #[arg(long, value_parser = input::size, default_value = "16MiB")]
    auto_accept_size: u64,
    /// Files over this size are refused.
    #[arg(long, value_parser = input::size, default_value = "2GiB")]
    max_file_size: u64,
}

impl DaemonArgs {
    /// The daemon's configuration: these flags, what `config.toml` remembers for those not
    /// given (and what it learns from those given).
    pub(super) fn into_config(
        self,
        home: &Home,
        passphrase: Option<String>,
    ) -> anyhow::Result<DaemonConfig> {
        let mut config = Config::load(home.dir())?;
        let rendezvous = if self.rendezvous.is_empty() {
            config
                .rendezvous
                .iter()
                .map(|a| input::multiaddr(a).map_err(anyhow::Error::msg))
                .collect::<Result<Vec<_>, _>>()
                .context("the rendezvous address in config.toml")?
        } else {
            if config.rendezvous.is_empty() {
                config.rendezvous = self.rendezvous.iter().map(ToString::to_string).collect();
                config.save(home.dir())?;
            }
            self.rendezvous
        };
        let mut instances = rendezvous.into_iter();
        let first = instances.next().context(
            "no rendezvous: pass --rendezvous MULTIADDR (it is remembered for next time)",
        )?;
        let mut daemon_config = DaemonConfig::new(home.dir().to_path_buf(), first);
        daemon_config.more_rendezvous = instances.collect();
        daemon_config.listen = if self.listen.is_empty() {
            config
                .listen
                .iter()
                .map(|a| input::multiaddr(a).map_err(anyhow::Error::msg))
                .collect::<Result<_, _>>()
                .context("listen addresses in config.toml")?
        } else {
            let given: Vec<String> = self.listen.iter().map(ToString::to_string).collect();
            if given != config.listen {
                config.listen = given;
                config.save(home.dir())?;
            }
            self.listen
        };
        daemon_config.registration_token = self.registration_token.or(config.registration_token);
        daemon_config.passphrase = passphrase;
        daemon_config.relay_only_transport = self.relay_only_transport;
        daemon_config.relays = self.relays;
        daemon_config.files = daemon::FileConfig {
            download_dir: self.download_dir,
            limits: palaver_protocol::node::files::Limits {
                max_size: self.max_file_size,
                auto_accept: self.auto_accept_size,
            },
        };
        Ok(daemon_config)
    }
}
