#![allow(clippy::unwrap_used)]
//! The real server on 127.0.0.1 (port 0), driven by real libp2p clients.

mod accounts;
mod cluster;
mod common;
mod discovery;
mod mailbox;
mod presence;
mod process;
mod relay;
mod robustness;
