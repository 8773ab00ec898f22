//! The command line (`palaver …`): parse, then carry out one command.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use palaver_protocol::UserName;

use crate::home::Home;

#[derive(Debug, Parser)]
#[command(
    name = "palaver",
    version,
    about = "A peer-to-peer messenger with end-to-end encryption"
)]
pub struct Cli {
    /// Where the identity, history and control socket live.
    #[arg(long, global = true, env = "PALAVER_HOME")]
    pub home: Option<PathBuf>,
    /// A file whose first line is the passphrase of the identity key (or set PALAVER_PASSPHRASE).
    #[arg(long, global = true)]
    pub passphrase_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an identity in --home.
    Init {
        #[arg(long)]
        name: String,
        /// Replace an existing identity (its key is lost).
        #[arg(long)]
        force: bool,
    },
    /// Show this identity: name, peer id, fingerprint.
    Whoami {
        #[arg(long)]
        json: bool,
    },
    /// Run the scripted demo conversation on loopback.
    Demo,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let home = Home::new(cli.home.clone().unwrap_or_else(Home::default_dir));
    let passphrase = passphrase(&cli)?;
    match cli.command {
        Command::Init { name, force } => {
            let name: UserName = name.parse()?;
            let identity = home.init(name.clone(), passphrase.as_deref(), force)?;
            println!("created {name} in {}", home.dir().display());
            println!("peer id      {}", identity.peer_id());
            println!("fingerprint  {}", identity.fingerprint());
        }
        Command::Whoami { json } => {
            let (identity, name) = home.open(passphrase.as_deref())?;
            if json {
                let value = serde_json::json!({
                    "name": name.as_str(),
                    "peer_id": identity.peer_id().to_string(),
                    "fingerprint": identity.fingerprint().to_string(),
                });
                println!("{value}");
            } else {
                println!("name         {name}");
                println!("peer id      {}", identity.peer_id());
                println!("fingerprint  {}", identity.fingerprint());
            }
        }
        Command::Demo => bail!(
            "the demo is not built yet: it needs the rendezvous server and the daemon (issues 4 and 5); \
             what exists today is the protocol core, `palaver init` and `palaver whoami`"
        ),
    }
    Ok(())
}

fn passphrase(cli: &Cli) -> anyhow::Result<Option<String>> {
    if let Some(path) = &cli.passphrase_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(Some(text.lines().next().unwrap_or_default().to_owned()));
    }
    Ok(std::env::var("PALAVER_PASSPHRASE").ok())
}
